"""Lists the tests and the code derive from one definition rather than keep by hand: the
variables the tests scrub from the environment (from the settings classes and the code's own
reads), and values spelled once across the services, libraries and tools (the JSON media
type, the state-code pattern)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

import support
from covid_stats_api.core.config import Settings as ApiSettings
from covid_stats_contract import documents
from covid_stats_contract.resources import state_code_pattern
from covid_stats_runtime import http, tracing
from covid_stats_runtime.settings import StoreSettings
from devstack.config_docs import SERVICES
from stats_fetcher.config import Settings as FetcherSettings

# -- the variables clean_env scrubs ----------------------------------------------------------


class _Grown(ApiSettings):
    """The api's settings with one setting more of each kind pydantic-settings names."""

    brand_new_seconds: int = Field(default=1, description="a plain field")
    aliased: int = Field(default=2, validation_alias="SOME_OTHER_NAME", description="an alias")
    chosen: int = Field(
        default=3, validation_alias=AliasChoices("FIRST_CHOICE", "second_choice"), description=""
    )


class _Prefixed(StoreSettings):
    model_config = SettingsConfigDict(env_prefix="shop_")

    widget_count: int = Field(default=4, description="under a prefix")


def test_the_services_settings_classes_are_the_ones_the_scrub_reads() -> None:
    assert set(SERVICES.values()) == {ApiSettings, FetcherSettings}
    assert all(issubclass(cls, StoreSettings) for cls in SERVICES.values())


def test_env_var_names_are_the_variables_pydantic_settings_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each name ``env_vars`` gives is read by pydantic-settings itself: set it and the field
    takes the value (the truth, not a copy of its naming rules)."""
    assert _Grown.env_vars()["BRAND_NEW_SECONDS"] == "brand_new_seconds"
    assert _Grown.env_var_names("aliased") == ("SOME_OTHER_NAME",)
    assert _Grown.env_var_names("chosen") == ("FIRST_CHOICE", "SECOND_CHOICE")
    assert _Prefixed.env_var("widget_count") == "SHOP_WIDGET_COUNT"
    assert _Prefixed.env_var("redis_url") == "SHOP_REDIS_URL"
    checked = 0
    for cls in (_Grown, _Prefixed, ApiSettings, FetcherSettings):
        for variable, field in cls.env_vars().items():
            info = cls.model_fields[field]
            if info.annotation is not int:  # an int's value shows the variable was read
                continue
            with monkeypatch.context() as patch:
                patch.setenv(variable, str(info.default + 1))
                assert getattr(cls(), field) == info.default + 1, (cls.__name__, variable)
            checked += 1
    assert checked >= 20


def test_clean_env_drops_every_variable_the_processes_would_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = support.project_vars()
    for cls in SERVICES.values():
        assert set(cls.env_vars()) <= project
    # Read by the code itself, not through a settings class (found in the source).
    assert {"PROMETHEUS_MULTIPROC_DIR", "OTEL_SDK_DISABLED", "REPLAY_DATASET_DIR"} <= project
    leaking = dict.fromkeys(project, "from-the-shell")
    leaking["OTEL_SERVICE_NAME"] = "read-by-the-sdk"
    leaking["UNRELATED_TO_THE_PROJECT"] = "kept"
    for variable, value in leaking.items():
        monkeypatch.setenv(variable, value)
    env = support.clean_env(API_PORT="1234")
    assert {k for k in env if k in leaking} == {"LOG_LEVEL", "API_PORT", "UNRELATED_TO_THE_PROJECT"}
    assert (env["LOG_LEVEL"], env["API_PORT"]) == ("WARNING", "1234")


def test_the_scrub_follows_a_new_setting() -> None:
    """A setting added to a class is scrubbed with nothing else to change."""
    before = support.project_vars()
    grown = support.project_vars((_Grown, _Prefixed))
    assert grown - before == {
        "BRAND_NEW_SECONDS",
        "SOME_OTHER_NAME",
        "FIRST_CHOICE",
        "SECOND_CHOICE",
        *(f"SHOP_{name.upper()}" for name in _Prefixed.model_fields),
    }


def test_the_environment_reads_are_found_in_the_source(tmp_path: Path) -> None:
    module = tmp_path / "reads.py"
    module.write_text(
        "import os\n"
        "from collections.abc import Mapping\n"
        'NAME = "BY_CONSTANT"\n'
        'a = os.environ["BY_INDEX"]\n'
        'b = os.environ.get("BY_GET", "x")\n'
        "c = os.getenv(NAME)\n"
        "def f(environ: Mapping[str, str] = os.environ) -> str | None:\n"
        '    return environ.get("BY_PARAMETER")\n'
        "def wsgi(environ: dict[str, str]) -> str | None:\n"
        '    return environ.get("PATH_INFO")  # a request, not the environment\n'
    )
    assert support.environ_reads(module) == {"BY_INDEX", "BY_GET", "BY_CONSTANT", "BY_PARAMETER"}
    assert tracing.OTEL_ENV_PREFIX == "OTEL_"


# -- values spelled once -----------------------------------------------------------------------

# The replay upstream stands for the third party (the COVID Tracking Project's API): it ships
# alone, with none of the project's packages, and spells the upstream's own values.
_OWN_SOURCES = ("services/*/src/**/*.py", "libs/*/src/**/*.py", "tools/devstack/src/**/*.py")


def _string_constants() -> list[tuple[str, str]]:
    """(file:line, text) of every string constant in the project's own Python sources."""
    found = []
    for pattern in _OWN_SOURCES:
        for path in sorted(support.REPO.glob(pattern)):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    where = f"{path.relative_to(support.REPO)}:{node.lineno}"
                    found.append((where, node.value))
    return found


def test_the_json_media_type_is_written_once() -> None:
    written = [where for where, text in _string_constants() if text.startswith("application/json")]
    assert len(written) == 1, written
    assert written[0].startswith("libs/covid-stats-contract/src/covid_stats_contract/documents.py:")
    assert (
        dict(http.error_headers(422, b"{}"))[b"content-type"]
        == documents.JSON_CONTENT_TYPE.encode()
    )


_STATE_CODE_TEXT = re.compile(r"\[(A-Za-z|A-Z|a-z)\]\{2\}")


def test_the_state_code_pattern_is_written_once() -> None:
    """``resources.state_code_pattern`` builds it; nothing else writes it (the migrations'
    CHECK constraints excepted: migrations are never edited)."""
    written = [where for where, text in _string_constants() if _STATE_CODE_TEXT.search(text)]
    assert written == []
    assert _STATE_CODE_TEXT.fullmatch(state_code_pattern("upper"))
    assert _STATE_CODE_TEXT.fullmatch(state_code_pattern("lower"))
    assert _STATE_CODE_TEXT.fullmatch(state_code_pattern())
