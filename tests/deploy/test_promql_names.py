"""Every PromQL expression in the dashboard and the alert rules names only metrics and
labels that a running extauthz exports (scraped, not read from the source), and parses."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from deploy.promql_names import names
from deploy.tools import REPO, RunningExtauthz, run

DASHBOARD = REPO / "deploy" / "grafana" / "dashboard.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"

# Grafana's built-in variables, replaced by what Grafana would substitute.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m"}
# Labels Prometheus itself attaches to every scraped series (the target's), and `up`.
TARGET_LABELS = frozenset({"job", "instance"})


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_expressions() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            found.append((f"panel {panel['title']!r} {target['refId']}", expr))
    return found


def dashboard_variable_queries() -> list[tuple[str, str, str]]:
    """(variable, metric, label) of each label_values(metric, label) variable."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"]
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
        assert match, f"variable {variable['name']}: unexpected query {query!r}"
        found.append((variable["name"], match[1], match[2]))
    return found


def alert_expressions() -> list[tuple[str, str]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [(f"alert {r['alert']}", r["expr"]) for g in groups for r in g["rules"]]


def exported_series(scrape: str) -> dict[str, set[str]]:
    """Sample name (with _bucket, _sum, _count, _total suffixes) → its label names."""
    exported: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(scrape):
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    return exported


def problems(where: str, expr: str, exported: dict[str, set[str]]) -> list[str]:
    found = names(expr)
    wrong = []
    for metric in sorted(found.metrics - exported.keys()):
        wrong.append(f"{where}: metric {metric} is not exported")
    known = set(TARGET_LABELS).union(*(exported.get(m, set()) for m in found.metrics))
    for label in sorted(found.labels - known):
        wrong.append(f"{where}: label {label} is on none of {sorted(found.metrics)}")
    return wrong


@pytest.fixture(scope="module")
def exported(running_extauthz: RunningExtauthz) -> dict[str, set[str]]:
    series = exported_series(running_extauthz.scrape())
    assert "extauthz_check_duration_seconds_bucket" in series, sorted(series)
    return series


def test_dashboard_and_alerts_name_only_exported_metrics_and_labels(
    exported: dict[str, set[str]],
) -> None:
    expressions = dashboard_expressions() + alert_expressions()
    assert len(expressions) >= 20
    wrong = [p for where, expr in expressions for p in problems(where, expr, exported)]
    for variable, metric, label in dashboard_variable_queries():
        if metric not in exported:
            wrong.append(f"variable {variable}: metric {metric} is not exported")
        elif label not in exported[metric] | TARGET_LABELS:
            wrong.append(f"variable {variable}: label {label} is not on {metric}")
    assert not wrong, "\n".join(wrong)


# Debug gauges for leak hunts (the soak test reads them), not for a dashboard.
DEBUG_ONLY = {"extauthz_event_loop_tasks"}


def test_dashboard_shows_every_metric_extauthz_exports(exported: dict[str, set[str]]) -> None:
    used: set[str] = set()
    for _, expr in dashboard_expressions():
        used |= names(expr).metrics
    families = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for name in exported
        if not name.endswith("_created")
    }
    shown = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    assert families - shown - DEBUG_ONLY == set()


def test_name_check_reports_a_misspelt_metric_and_label(exported: dict[str, set[str]]) -> None:
    expr = 'sum by (reasn) (rate(extauthz_decision_total{decision="deny"}[5m]))'
    assert problems("probe", expr, exported) == [
        "probe: metric extauthz_decision_total is not exported",
        "probe: label decision is on none of ['extauthz_decision_total']",
        "probe: label reasn is on none of ['extauthz_decision_total']",
    ]
    histogram = (
        "histogram_quantile(0.99,"
        " sum by (le, reason) (rate(extauthz_check_duration_seconds_bucket[5m])))"
    )
    assert problems("probe", histogram, exported) == [
        "probe: label reason is on none of ['extauthz_check_duration_seconds_bucket']"
    ]


def test_dashboard_expressions_parse_with_promtool(promtool: Path, tmp_path: Path) -> None:
    # promtool parses recording-rule expressions with Prometheus' own parser.
    rules = [
        {"record": f"extauthz:dashboard:expr{i}", "expr": expr.replace("$job", ".+")}
        for i, (_, expr) in enumerate(dashboard_expressions())
    ]
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = run([promtool, "check", "rules", path])
    assert f"SUCCESS: {len(rules)} rules found" in out
