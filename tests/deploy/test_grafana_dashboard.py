"""deploy/grafana/dashboard.json type-checks against Grafana's published schema."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from deploy.tools import REPO

DASHBOARD = REPO / "deploy" / "grafana" / "dashboard.json"
TSC_FLAGS = [
    "--noEmit",
    "--strict",
    "--skipLibCheck",
    "--module",
    "esnext",
    "--moduleResolution",
    "bundler",
    "--target",
    "es2022",
]


def typecheck(tsc: Path, dashboard_json: str, workdir: Path) -> tuple[int, str]:
    # The dashboard pasted as an object literal, so excess-property checks apply: an
    # unknown or misspelt key is an error, not silently allowed.
    (workdir / "node_modules").symlink_to(tsc.parent.parent)
    source = workdir / "dashboard.ts"
    source.write_text(
        'import type { Dashboard } from "@grafana/schema";\n'
        f"export const dashboard: Dashboard = {dashboard_json};\n"
    )
    result = subprocess.run(
        [str(tsc), *TSC_FLAGS, str(source)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=workdir,
    )
    return result.returncode, result.stdout + result.stderr


def test_dashboard_type_checks_against_grafana_schema(tsc: Path, tmp_path: Path) -> None:
    code, output = typecheck(tsc, DASHBOARD.read_text(), tmp_path)
    assert code == 0, output


def test_type_check_rejects_a_misspelt_panel_key(tsc: Path, tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    dashboard["panels"][1]["gridpos"] = dashboard["panels"][1].pop("gridPos")
    code, output = typecheck(tsc, json.dumps(dashboard), tmp_path)
    assert code != 0
    assert "gridpos" in output


@pytest.mark.parametrize("panel_type", ["timeseries", "stat", "bargauge", "table"])
def test_dashboard_panels_have_titles_descriptions_and_queries(panel_type: str) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] == panel_type]
    assert panels
    for panel in panels:
        assert panel["title"] and panel["description"], panel
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_docs_describe_every_panel() -> None:
    docs = (REPO / "docs" / "dashboard.md").read_text()
    dashboard = json.loads(DASHBOARD.read_text())
    missing = [
        p["title"]
        for p in dashboard["panels"]
        if p["type"] != "row" and f"**{p['title']}**" not in docs
    ]
    assert missing == []
