"""The values schema rejects misspelt keys and wrong types; the install-time checks refuse bad
configurations (connection budget, grace periods, conflicting stores)."""

from __future__ import annotations

import re

import pytest
import yaml  # type: ignore[import-untyped]

from deploy_support import (
    CHART,
    helm_template,
)

# -- the values schema and the install-time checks ---------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"api.worker": 3}, "additional properties 'worker' not allowed"),
        ({"api.workers": "two"}, "/api/workers"),
        ({"redis.auth.passwrd": "x"}, "additional properties 'passwrd' not allowed"),
        ({"postgresql.persistance": {"enabled": False}}, "'persistance' not allowed"),
        ({"statsFetcher.upstream.format": "xml"}, "/statsFetcher/upstream/format"),
        ({"statsFetcher.replica": 2}, "additional properties 'replica' not allowed"),
        ({"apii": {"workers": 1}}, "additional properties 'apii' not allowed"),
        ({"api.image.digest": "latest"}, "/api/image/digest"),
        ({"api.autoscaling.maxReplicas": 0}, "/api/autoscaling/maxReplicas"),
        ({"metrics.serviceMonitor.enabeld": True}, "'enabeld' not allowed"),
        ({"tracing.sampler": "sometimes"}, "/tracing/sampler"),
        ({"tracing.otlpEndpoint": "collector:4318"}, "/tracing/otlpEndpoint"),
        ({"api.accessLogSampleRate": 2}, "/api/accessLogSampleRate"),
        ({"api.podAnnotations": {"a": 1}}, "/api/podAnnotations/a"),
        ({"imagePullSecrets": [{"nam": "regcred"}]}, "/imagePullSecrets/0"),
        ({"imagePullSecrets": [""]}, "/imagePullSecrets/0"),
        ({"global.imageRegistry": "https://registry.example/"}, "/global/imageRegistry"),
        ({"redis.image.registry": "registry.example/"}, "/redis/image/registry"),
        ({"networkPolicy.api.from": [{"namespace": "ingress"}]}, "/networkPolicy/api/from/0"),
        (
            {"networkPolicy.api.from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]},
            "/networkPolicy/api/from/0",
        ),
        ({"networkPolicy.egress.dns.ports": [{"port": 53, "protocol": "ICMP"}]}, "/protocol"),
        ({"networkPolicy.egress.upstream.cidr": "0.0.0.0/0"}, "'cidr' not allowed"),
        ({"questions.replica": 2}, "additional properties 'replica' not allowed"),
        ({"questions.autoscaling.maxReplicas": 0}, "/questions/autoscaling/maxReplicas"),
    ],
)
def test_schema_rejects_unknown_keys_and_wrong_types(
    values: dict[str, object], message: str
) -> None:
    result = helm_template(values=values, check=False)
    assert result.returncode != 0, f"{values} was accepted"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"questions.enabled": True, "edgeCache.enabled": False},
            "questions.enabled needs edgeCache.enabled",
        ),
        (
            {
                "questions.enabled": True,
                "edgeCache.enabled": True,
                "questions.autoscaling.minReplicas": 4,
                "questions.autoscaling.maxReplicas": 3,
                "postgresql.maxConnections": 1000,
            },
            "questions.autoscaling.minReplicas (4) exceeds questions.autoscaling.maxReplicas (3)",
        ),
        (
            # The questions' pods are api pods in the budget: 6 + 6 of them at most, a surge each.
            {"questions.enabled": True, "edgeCache.enabled": True},
            "the api may open (12 pods + 2 surge + 2 terminating) x 2 workers",
        ),
        (
            {"api.autoscaling.maxReplicas": 9},
            "PostgreSQL connection budget exceeded: the api may open (9 pods + 1 surge + 1 "
            "terminating) x 2 workers (api.workers) x (8 (api.dbPool.maxSize) + 2 "
            "(api.queryComputeSlots)) = 220 "
            "connections, the fetcher (2 pods + 1 surge + 1 terminating) x 4 "
            "(statsFetcher.dbPoolMaxSize) = 16, the migration 1: 237 in all, but PostgreSQL "
            "allows 197",
        ),
        (
            {
                "postgresql.enabled": False,
                "externalDatabase.host": "db",
                "externalDatabase.existingSecret": "s",
                "externalDatabase.maxConnections": 50,
            },
            "but PostgreSQL allows 50 (externalDatabase.maxConnections)",
        ),
        (
            {"api.terminationGracePeriodSeconds": 25},
            "api.terminationGracePeriodSeconds (25) must exceed api.preStopSleepSeconds + "
            "api.gunicorn.gracefulTimeoutSeconds (5 + 20 = 25)",
        ),
        (
            {"statsFetcher.terminationGracePeriodSeconds": 20},
            "statsFetcher.terminationGracePeriodSeconds (20) must exceed "
            "statsFetcher.shutdownGraceSeconds",
        ),
        ({"externalDatabase.host": "db"}, "both postgresql.enabled and externalDatabase.host"),
        ({"externalRedis.host": "cache"}, "both redis.enabled and externalRedis.host"),
        ({"postgresql.enabled": False}, "externalDatabase.host is required"),
        (
            {"postgresql.enabled": False, "externalDatabase.host": "db"},
            "externalDatabase.existingSecret (a Secret holding the password) or "
            "externalDatabase.password is required",
        ),
        ({"redis.enabled": False}, "externalRedis.host is required"),
        ({"api.resources.requests.cpu": None}, "needs api.resources.requests.cpu"),
        (
            {"redis.maxmemory": "192mb"},
            "redis.maxmemory (192mb) must be set and at most 70% of "
            "redis.resources.limits.memory (256Mi, so at most 179mb)",
        ),
        (
            {"redis.resources.limits.memory": "1Gi", "redis.maxmemory": "1gb"},
            "redis.maxmemory (1gb) must be set and at most 70% of redis.resources.limits.memory "
            "(1Gi, so at most 716mb)",
        ),
        (
            {"api.autoscaling.targetMemoryUtilizationPercentage": 80},
            "api.autoscaling.targetMemoryUtilizationPercentage (80) must be null: the api's "
            "memory does not fall when its load does",
        ),
        (
            {"statsFetcher.webhooks.urls": ["https://hooks.example.com/covid"]},
            "statsFetcher.webhooks.urls needs statsFetcher.webhooks.existingSecret",
        ),
        (
            {"api.metrics.port": 8000},
            "api.metrics.port and api.port are both 8000: /metrics has a port of its own",
        ),
        (
            {"gitops.enabled": True},
            "set postgresql.auth.existingSecret, redis.auth.existingSecret, "
            "statsFetcher.refreshToken.existingSecret",
        ),
        (
            {
                "gitops.enabled": True,
                "postgresql.auth.existingSecret": "pg",
                "statsFetcher.refreshToken.enabled": False,
            },
            "cannot keep: a new one every render. Create the Secrets yourself (or with a "
            "secrets operator) and set redis.auth.existingSecret.",
        ),
    ],
)
def test_install_refuses_bad_configurations(values: dict[str, object], message: str) -> None:
    result = helm_template(values=values, check=False)
    assert result.returncode != 0, f"{values} was accepted"
    assert message in result.stderr, result.stderr


def test_values_carry_no_password() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["externalDatabase"]["password"] == ""
    assert values["externalRedis"]["password"] == ""
    assert not re.search(
        r"(?i)password:\s*\S+",
        (CHART / "values.yaml").read_text().replace('password: ""', "").replace("PasswordKey:", ""),
    ), "a default password in values.yaml"
