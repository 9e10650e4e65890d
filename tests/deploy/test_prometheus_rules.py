"""deploy/prometheus/ passes promtool, and a real scrape of extauthz passes its lint."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from deploy.tools import REPO, RunningExtauthz, run

PROMETHEUS = REPO / "deploy" / "prometheus"


def test_alert_rules_pass_promtool_check(promtool: Path) -> None:
    out = run([promtool, "check", "rules", PROMETHEUS / "alerts.yaml"])
    rules = yaml.safe_load((PROMETHEUS / "alerts.yaml").read_text())["groups"][0]["rules"]
    assert f"SUCCESS: {len(rules)} rules found" in out


def test_alert_unit_tests_pass(promtool: Path) -> None:
    out = run([promtool, "test", "rules", PROMETHEUS / "alerts_test.yaml"])
    assert "SUCCESS" in out


def test_every_alert_has_a_unit_test_and_a_runbook() -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yaml").read_text())["groups"][0]["rules"]
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yaml").read_text())["tests"]
    tested: dict[str, list[bool]] = {}
    for case in tests:
        for check in case["alert_rule_test"]:
            tested.setdefault(check["alertname"], []).append(bool(check["exp_alerts"]))
    runbooks = (REPO / "docs" / "operations.md").read_text()
    for rule in rules:
        name = rule["alert"]
        # Both directions: a time or series where it fires and one where it must not.
        assert sorted(set(tested.get(name, []))) == [False, True], name
        anchor = rule["annotations"]["runbook"].split("#")[1]
        assert f"### {name}" in runbooks and anchor == name.lower(), name


def test_alert_unit_tests_fail_when_an_alert_is_broken(promtool: Path, tmp_path: Path) -> None:
    # The tests bite: with the stale-feed threshold raised, its firing case must fail.
    broken = (
        (PROMETHEUS / "alerts.yaml")
        .read_text()
        .replace("extauthz_feed_age_seconds > 120", "extauthz_feed_age_seconds > 1200")
    )
    (tmp_path / "alerts.yaml").write_text(broken)
    (tmp_path / "alerts_test.yaml").write_text((PROMETHEUS / "alerts_test.yaml").read_text())
    result = subprocess.run(
        [str(promtool), "test", "rules", str(tmp_path / "alerts_test.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "ExtauthzFeedStale" in result.stdout + result.stderr


def test_scrape_of_running_extauthz_passes_promtool_check_metrics(
    promtool: Path, running_extauthz: RunningExtauthz
) -> None:
    scrape = running_extauthz.scrape()
    assert "extauthz_decisions_total" in scrape
    result = subprocess.run(
        [str(promtool), "check", "metrics"],
        input=scrape,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_promtool_check_metrics_flags_a_badly_named_metric(promtool: Path) -> None:
    bad = "# HELP requests Requests.\n# TYPE requests counter\nrequests 1\n"
    result = subprocess.run(
        [str(promtool), "check", "metrics"],
        input=bad,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "_total" in result.stdout + result.stderr
