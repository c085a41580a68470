"""The stores as rendered: Redis and PostgreSQL settings checked with their real parsers, the
connection budget, TLS to external stores."""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from deploy_support import (
    CHART,
    RELEASE,
    Rendered,
    container_env,
    helm_template,
    probes,
    render,
    run,
    values_file,
)

_REDIS_UNITS = {"": 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}
_QUANTITY_UNITS = {"": 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "M": 10**6, "G": 10**9}


def _fake_redis_cli(folder: Path, reply: str) -> dict[str, str]:
    """A PATH where redis-cli prints ``reply`` (as redis-cli prints PONG or an error)."""
    folder.mkdir(exist_ok=True)
    cli = folder / "redis-cli"
    cli.write_text(f"#!/bin/sh\nprintf '%s\\n' {reply!r}\n")
    cli.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"}


def test_redis_keeps_room_to_fork_and_lives_through_loading(
    renders: dict[str, tuple[Rendered, Path]], tmp_path: Path
) -> None:
    """maxmemory leaves 30% of the memory limit for the snapshot fork (every value set), and
    the liveness probe accepts -LOADING (Redis loading its snapshot) where readiness waits
    for PONG: the probe commands run here against a stand-in redis-cli."""
    for value_set, (rendered, _) in renders.items():
        if not (statefulset := rendered.maybe("StatefulSet", f"{RELEASE}-redis")):
            continue
        (redis,) = rendered.pod_spec(statefulset)["containers"]
        maxmemory = redis["args"][redis["args"].index("--maxmemory") + 1]
        number, unit = re.fullmatch(r"([0-9]+)([a-z]*)", maxmemory).groups()  # type: ignore[union-attr]
        limit = re.fullmatch(r"([0-9]+)([A-Za-z]*)", redis["resources"]["limits"]["memory"])
        assert limit, redis["resources"]
        limit_bytes = int(limit[1]) * _QUANTITY_UNITS[limit[2]]
        assert 0 < int(number) * _REDIS_UNITS[unit] <= 0.7 * limit_bytes, value_set
    rendered, _ = renders["default"]
    redis = rendered.container("StatefulSet", f"{RELEASE}-redis", "redis")
    outcomes = {}
    for name, reply in {
        "pong": "PONG",
        "loading": "LOADING Redis is loading the dataset in memory",
        "down": "Could not connect to Redis at 127.0.0.1:6379: Connection refused",
        "auth": "NOAUTH Authentication required.",
    }.items():
        env = _fake_redis_cli(tmp_path / name, reply)
        outcomes[name] = {
            kind: run(probe["exec"]["command"], check=False, env=env).returncode == 0
            for kind, probe in probes(redis).items()
            if "exec" in probe
        }
    assert outcomes == {
        "pong": {"liveness": True, "readiness": True},
        "loading": {"liveness": True, "readiness": False},
        "down": {"liveness": False, "readiness": False},
        "auth": {"liveness": False, "readiness": False},
    }


def test_postgresql_has_a_memory_backed_dev_shm_of_the_size_asked(
    renders: dict[str, tuple[Rendered, Path]],
) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["postgresql"]
    for size, rendered in (
        (values["shmSizeLimit"], renders["default"][0]),
        ("1Gi", render(values={"postgresql.shmSizeLimit": "1Gi"})),
    ):
        statefulset = rendered.get("StatefulSet", f"{RELEASE}-postgresql")
        (container,) = rendered.pod_spec(statefulset)["containers"]
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        volumes = {v["name"]: v for v in rendered.pod_spec(statefulset)["volumes"]}
        assert volumes[mount["name"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": size}
    assert values["shmSizeLimit"] != "64Mi", "no bigger than the runtime's own /dev/shm"


def _connections_at_most(rendered: Rendered) -> tuple[int, int]:
    """(the PostgreSQL connections the rendered services may hold at once during a rolling
    update: running pods, the surge starting and as many pods terminating, their pools still
    open; the connections the rendered PostgreSQL allows them)."""
    total = 1  # the migration
    for name, pods in (
        (f"{RELEASE}-api", rendered.get("HorizontalPodAutoscaler", f"{RELEASE}-api")),
        (f"{RELEASE}-stats-fetcher", None),
    ):
        deployment = rendered.get("Deployment", name)
        running = pods["spec"]["maxReplicas"] if pods else deployment["spec"]["replicas"]
        surge = deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
        (container,) = rendered.pod_spec(deployment)["containers"]
        env = container_env(rendered, container)
        # The api's workers: their pools and each of their computation processes' own.
        per_worker = int(env["DB_POOL_MAX_SIZE"]) + int(env.get("QUERY_COMPUTE_SLOTS", "0"))
        per_pod = int(env.get("WEB_CONCURRENCY", "1")) * per_worker
        total += (running + 2 * surge) * per_pod
    postgres = rendered.container("StatefulSet", f"{RELEASE}-postgresql", "postgresql")
    args = dict(a.split("=", 1) for a in postgres["args"] if "=" in a)
    allowed = int(args["max_connections"]) - int(args["superuser_reserved_connections"])
    return total, allowed


def test_connection_budget_counts_pods_terminating_during_a_rollout() -> None:
    """The largest api the default PostgreSQL takes, terminating pods counted, is accepted;
    one pod more is refused."""
    fits = render(values={"api.autoscaling.maxReplicas": 7})
    total, allowed = _connections_at_most(fits)
    assert total == allowed, (total, allowed)
    result = helm_template(values={"api.autoscaling.maxReplicas": 8}, check=False)
    assert "PostgreSQL connection budget exceeded" in result.stderr, result.stderr


# -- TLS to external stores, passwords of any characters ------------------------------------

TLS_VALUES: dict[str, object] = {
    "externalDatabase.caSecret": "pg-ca",
    "externalDatabase.clientCertSecret": "pg-client",
    "externalRedis.caSecret": "redis-ca",
    "externalRedis.clientCertSecret": "redis-client",
}
# The URL query parameters that name a file, by URL scheme.
TLS_FILE_PARAMS = {
    "postgresql": ("sslrootcert", "sslcert", "sslkey"),
    "rediss": ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"),
}


def test_store_tls_files_are_mounted_where_the_urls_name_them() -> None:
    """With caSecret and clientCertSecret set for both stores, every container whose URL
    names a TLS file has it mounted read-only from the named Secret, at that path; the CA is
    verified (verify-full, ssl_cert_reqs=required); passwords are not in the URLs."""
    rendered = render(values_file("external"), values=TLS_VALUES)
    secrets_used: set[str] = set()
    checked = 0
    for doc in rendered.workloads():
        spec = rendered.pod_spec(doc)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec.get("initContainers", []) + spec["containers"]:
            env = container_env(rendered, container, secrets=dict.fromkeys(_refs(container), "x"))
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            for name in ("DATABASE_URL", "REDIS_URL"):
                if name not in env:
                    continue
                url = urllib.parse.urlsplit(env[name])
                assert url.password is None, f"{container['name']}: a password in {name}"
                query = dict(urllib.parse.parse_qsl(url.query))
                files = [query[p] for p in TLS_FILE_PARAMS[url.scheme] if p in query]
                assert len(files) == 3, (container["name"], name, query)
                assert query.get("sslmode", "verify-full") == "verify-full"
                assert query.get("ssl_cert_reqs", "required") == "required"
                for path in files:
                    folder, _, filename = path.rpartition("/")
                    mount = mounts[folder]
                    assert mount.get("readOnly") is True, path
                    secret = volumes[mount["name"]]["secret"]
                    assert filename in {item["path"] for item in secret["items"]}, path
                    secrets_used.add(secret["secretName"])
                    checked += 1
    assert secrets_used == {v for v in TLS_VALUES.values() if isinstance(v, str)}
    assert checked >= 3 * 5  # api (2 URLs), fetcher (2 URLs + init), migration


def _refs(container: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (item["valueFrom"]["secretKeyRef"]["name"], item["valueFrom"]["secretKeyRef"]["key"])
        for item in container.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    ]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"externalDatabase.sslmode": "require"}, "needs externalDatabase.sslmode verify-ca"),
        ({"externalRedis.tls": False}, "need externalRedis.tls: true"),
        (
            {"postgresql.enabled": True, "externalDatabase.host": ""},
            "are for your own PostgreSQL",
        ),
    ],
    ids=["weak-sslmode", "redis-without-tls", "in-chart-postgresql"],
)
def test_store_tls_misconfigurations_are_refused(values: dict[str, object], message: str) -> None:
    result = helm_template(values_file("external"), values={**TLS_VALUES, **values}, check=False)
    assert result.returncode != 0
    assert message in result.stderr
