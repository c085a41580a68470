// Validate Gateway API HTTPRoutes (gateway.networking.k8s.io/v1) against the Gateway API's
// schemas: the validators of @kubernetes-models/gateway-api, generated from
// sigs.k8s.io/gateway-api's types with their validation markers (enums, patterns, bounds,
// required fields). It does not reject unknown fields (the API server prunes or refuses them).
//
//     node deploy/tools/validate_httproute.mjs MODULES_DIR FILE.json...
//
// MODULES_DIR: the node_modules of deploy/tools/gateway-api, installed by `make deploy-tools`.
// Each FILE holds one HTTPRoute as JSON. Prints one line per invalid route; exits 1 if any.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modules, ...files] = process.argv.slice(2);
if (!modules || files.length === 0) {
  console.error("usage: validate_httproute.mjs MODULES_DIR FILE.json...");
  process.exit(2);
}
const { HTTPRoute } = await import(
  pathToFileURL(
    join(modules, "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute.js"),
  ).href
);
let invalid = 0;
for (const file of files) {
  const doc = JSON.parse(readFileSync(file, "utf8"));
  if (doc.apiVersion !== HTTPRoute.apiVersion || doc.kind !== HTTPRoute.kind) {
    console.log(`${file}: not a ${HTTPRoute.apiVersion} ${HTTPRoute.kind}`);
    invalid += 1;
    continue;
  }
  try {
    new HTTPRoute(doc).validate();
  } catch (error) {
    console.log(`${file}: ${error.message}`);
    invalid += 1;
  }
}
process.exit(invalid ? 1 : 0);
