"""The files users copy from deploy/ work as shipped, checked by the real tools."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from extauthz.demo.issuer import LocalIssuer
from extauthz.demo.stack import EnvoyNotFound, find_envoy

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def test_envoy_config_passes_envoy_validate() -> None:
    try:
        envoy = find_envoy()
    except EnvoyNotFound as err:
        pytest.skip(str(err))
    result = subprocess.run(
        [str(envoy), "--mode", "validate", "-c", str(REPO / "deploy/envoy/envoy.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_example_policy_passes_check_config(tmp_path: Path, local_issuer: LocalIssuer) -> None:
    policy = tmp_path / "policy"
    shutil.copytree(REPO / "deploy/extauthz", policy)
    local_issuer.write_jwks(policy / "keys/jwks.json")

    result = subprocess.run(
        [sys.executable, "-m", "extauthz", "check-config", str(policy / "config.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "ok (policy_version" in result.stdout
    assert "3 agent(s)" in result.stdout
