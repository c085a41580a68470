"""The api against its own OpenAPI document, with schemathesis, and its offline docs.

The session's shared api (``shared_api``, tests/conftest.py): the real api under gunicorn over
the data the fetcher loaded from the replay upstream. schemathesis runs as its
CLI, with a fixed seed and a bounded number of examples, and its report is the assertion
message when it finds failures (each with a curl line to reproduce it).
"""

from __future__ import annotations

import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from stacks import Stack

SEED = "20200902"
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    ]
)


@pytest.fixture
def api(shared_api: Stack) -> str:
    return shared_api.base


def schemathesis(base: str, workdir: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """``schemathesis run`` against the live api's /openapi.json, in ``workdir`` (so no
    config file or report from elsewhere is picked up)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{base}/openapi.json",
            "--seed",
            SEED,
            "--generation-database",
            "none",
            "--request-timeout",
            "30",
            "--no-color",
            *options,
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def report(result: subprocess.CompletedProcess[str]) -> str:
    return f"schemathesis exited {result.returncode}:\n{result.stdout[-30000:]}{result.stderr}"


def test_the_api_conforms_to_its_openapi_document(api: str, tmp_path: Path) -> None:
    """Every operation, positive and negative data, all phases: no 5xx, and every answer's
    status, content type, headers and body are the ones the document declares."""
    result = schemathesis(
        api,
        tmp_path,
        "--checks",
        CHECKS,
        "--max-examples",
        "30",
        "--workers",
        "4",
        "--phases",
        "examples,coverage,fuzzing,stateful",
    )
    exit_code = result.returncode
    assert exit_code == 0, report(result)
    assert "passed" in result.stdout, report(result)


def test_the_documented_examples_are_accepted(api: str, tmp_path: Path) -> None:
    """Requests built from the document's own examples are valid requests: the api must
    not reject them (422) or fail on them."""
    result = schemathesis(
        api,
        tmp_path,
        "--checks",
        f"{CHECKS},positive_data_acceptance",
        "--mode",
        "positive",
        "--phases",
        "examples",
        "--workers",
        "1",
    )
    exit_code = result.returncode
    assert exit_code == 0, report(result)


class _Assets(HTMLParser):
    """The URLs of a page's scripts, stylesheets and icons."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self.others: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "script" and values.get("src"):
            self.scripts.append(values["src"])
        elif tag == "link" and values.get("href"):
            rel = values.get("rel", "")
            (self.styles if "stylesheet" in rel else self.others).append(values["href"])


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_every_asset_from_the_api_itself(api: str, page: str) -> None:
    response = httpx.get(f"{api}{page}", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assets = _Assets()
    assets.feed(response.text)
    assert assets.scripts, f"{page}: no script"
    if page == "/docs":
        assert assets.styles, f"{page}: no stylesheet"
    for url in [*assets.scripts, *assets.styles, *assets.others]:
        parts = urlsplit(url)
        assert not parts.scheme, f"{page}: {url} is not a local path (a CDN?)"
        assert not parts.netloc, f"{page}: {url} is not a local path (a CDN?)"
        assert url.startswith("/"), f"{page}: {url}"
        asset = httpx.get(urljoin(f"{api}{page}", url), timeout=10)
        assert asset.status_code == 200, f"{page}: {url} answers {asset.status_code}"
        assert asset.content, f"{page}: {url} is empty"
    assert "https://" not in response.text, f"{page} refers to a remote URL"


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/"), ref
        node: Any = document
        for part in ref[2:].split("/"):
            assert part in node, f"unresolvable {ref}"
            node = node[part]
        schema = node
    return schema


def test_every_path_documents_a_200_with_a_schema(api: str) -> None:
    document = httpx.get(f"{api}/openapi.json", timeout=10).json()
    paths = document["paths"]
    assert paths
    methods = {"get", "head", "post", "put", "patch", "delete", "options"}
    missing = []
    for path, item in paths.items():
        operations = {m: op for m, op in item.items() if m in methods}
        assert operations, f"{path}: no operation"
        for method, operation in operations.items():
            ok = operation.get("responses", {}).get("200")
            content = (ok or {}).get("content", {})
            schemas = [media.get("schema") for media in content.values()]
            if not ok or not schemas or not all(schemas):
                missing.append(f"{method.upper()} {path}")
                continue
            for schema in schemas:
                resolved = _resolve(document, schema)
                assert resolved, f"{method.upper()} {path}: an empty 200 schema"
    assert not missing, f"operations without a 200 response schema: {missing}"
