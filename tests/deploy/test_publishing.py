"""Publishing: Chart.yaml, the README's parameter table, the packaged chart."""

from __future__ import annotations

import base64
import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from deploy_support import (
    CHART,
    RELEASE,
    VENV_BIN,
    images_of,
    render,
    run,
    set_args,
    tool,
)
from support import REPO

# -- publishing: Chart.yaml, the README's parameter table, the package -------------------------


def _chart_readme(*args: str) -> Any:
    return run(
        [VENV_BIN / "python", REPO / "deploy" / "tools" / "chart_readme.py", *args], check=False
    )


def test_chart_readme_parameter_table_is_generated_from_values() -> None:
    """The README's table is what `make chart-readme` writes from values.yaml now (drift)."""
    result = _chart_readme("--check")
    assert result.returncode == 0, result.stdout + result.stderr


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), node


def test_chart_readme_parameter_table_lists_every_value_with_its_default() -> None:
    """Every value of values.yaml has a row (or a documented map above it has one) showing
    its default, and every `# --` comment's first words are in the table."""
    text = (CHART / "values.yaml").read_text()
    readme = (CHART / "README.md").read_text()
    table = readme.split("<!-- parameters:start -->")[1].split("<!-- parameters:end -->")[0]
    rows = {}
    for line in table.strip().splitlines()[2:]:
        key, default, description = (c.strip() for c in line.strip("|").split(" | "))
        rows[key.strip("`")] = (default, description)
    for path, value in _leaves(yaml.safe_load(text)):
        parents = [".".join(path.split(".")[:n]) for n in range(len(path.split(".")), 0, -1)]
        row = next((p for p in parents if p in rows), None)
        assert row is not None, f"{path} has no row"
        if row == path:
            assert rows[row][0] == f"`{json.dumps(value)}`", path
    for match in re.finditer(r"(?m)^ *# -- (.{1,30})", text):
        first = match[1].replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
        assert any(first in description for _, description in rows.values()), match[1]


def test_chart_yaml_carries_artifact_hub_metadata() -> None:
    """Artifact Hub's annotations parse, and artifacthub.io/images lists exactly the images
    the default values run (replay upstream on, so that every image is rendered)."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    annotations = chart["annotations"]
    images = yaml.safe_load(annotations["artifacthub.io/images"])
    rendered = render(values={"replayUpstream.enabled": True})
    expected = {image for doc in rendered.workloads() for _, image in images_of(rendered, doc)}
    assert {i["image"] for i in images} == expected
    assert len({i["name"] for i in images}) == len(images)
    for change in yaml.safe_load(annotations["artifacthub.io/changes"]):
        assert change["kind"] in {"added", "changed", "deprecated", "removed", "fixed", "security"}
        assert change["description"]
    for link in yaml.safe_load(annotations["artifacthub.io/links"]):
        assert set(link) == {"name", "url"}, link
        assert link["url"].startswith("https://"), link
    assert annotations["artifacthub.io/prerelease"] in {"true", "false"}
    assert all(isinstance(v, str) for v in annotations.values()), "annotations are strings"


def test_chart_icon_is_the_api_favicon(tmp_path: Path) -> None:
    """Chart.yaml's icon is a data: URL of the page's favicon, byte for byte (what `make
    chart-readme` writes), and --check fails when the favicon changes and the icon does not."""
    icon = str(yaml.safe_load((CHART / "Chart.yaml").read_text())["icon"])
    media_type, _, data = icon.removeprefix("data:").partition(";base64,")
    assert icon.startswith("data:"), icon[:40]
    assert media_type == "image/svg+xml", icon[:40]
    favicon = REPO / "services" / "api" / "src" / "covid_stats_api" / "static" / "favicon.svg"
    assert base64.b64decode(data, validate=True) == favicon.read_bytes()
    other = tmp_path / "favicon.svg"
    other.write_bytes(favicon.read_bytes().replace(b"#1d4ed8", b"#b91c1c"))
    result = _chart_readme("--check", "--favicon", str(other))
    assert result.returncode == 1
    assert "Chart.yaml: the icon is not favicon.svg" in result.stdout


def test_helm_package_holds_the_chart_and_leaves_out_ci_and_test_files(tmp_path: Path) -> None:
    """`helm package` (what `make chart-package` runs and `helm push` uploads): the templates,
    values, schema, README and the monitoring files, not ci/ nor files/*.test.yaml
    (.helmignore)."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    run([tool("helm"), "package", CHART, "--destination", tmp_path])
    package = tmp_path / f"{chart['name']}-{chart['version']}.tgz"
    with tarfile.open(package) as archive:
        names = {n.partition("/")[2] for n in archive.getnames()}
    sources = {str(p.relative_to(CHART)) for p in CHART.rglob("*") if p.is_file()}
    templates = {n for n in sources if n.startswith("templates/")}
    expected = templates | {
        "Chart.yaml",
        "values.yaml",
        "values.schema.json",
        "README.md",
        "files/alerts.yaml",
        "files/alerts-edge.yaml",
        "files/dashboard.json",
        "files/varnish/default.vcl",
        ".helmignore",
    }
    assert expected <= names, sorted(expected - names)
    assert not {n for n in names if n.startswith("ci/") or n.endswith(".test.yaml")}, names
    assert names <= sources, sorted(names - sources)
    # The package installs as the directory does.
    assert helm_template_of(package) == helm_template_of(CHART)


def helm_template_of(chart: Path) -> str:
    """The render of a chart directory or package, with Secrets of yours (nothing random)."""
    own_secrets = {
        "postgresql.auth.existingSecret": "pg",
        "redis.auth.existingSecret": "r",
        "statsFetcher.refreshToken.existingSecret": "t",
    }
    return str(run([tool("helm"), "template", RELEASE, chart, *set_args(own_secrets)]).stdout)
