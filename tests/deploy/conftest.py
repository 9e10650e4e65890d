"""Fixtures for the checks of helm/ and deploy/ with the real tools.

Each tool is found through an environment variable, then in ``<repo>/.tools`` (``make
deploy-tools``), then on ``PATH``. ``make test`` sets every variable, so there a missing or
broken tool fails the run instead of skipping it; a bare ``pytest`` without the tools skips.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from deploy.tools import REPO, TOOLS, RunningExtauthz
from extauthz.demo.issuer import LocalIssuer
from extauthz.demo.stack import ManagedProcess, free_ports, http_request


def _tool(env_var: str, default: Path, on_path: str) -> Path:
    configured = os.environ.get(env_var)
    if configured:
        path = Path(configured)
        if not (path.is_file() and os.access(path, os.X_OK)):
            pytest.fail(f"${env_var}={configured} is not an executable file", pytrace=False)
        return path
    if default.is_file() and os.access(default, os.X_OK):
        return default
    found = shutil.which(on_path)
    if found:
        return Path(found)
    pytest.skip(f"needs {on_path}: run `make deploy-tools` or set ${env_var}")


@pytest.fixture(scope="session")
def helm() -> Path:
    return _tool("EXTAUTHZ_HELM", TOOLS / "helm" / "helm", "helm")


@pytest.fixture(scope="session")
def kubernetes_validate() -> Path:
    return _tool(
        "EXTAUTHZ_KUBERNETES_VALIDATE", TOOLS / "bin" / "kubernetes-validate", "kubernetes-validate"
    )


@pytest.fixture(scope="session")
def promtool() -> Path:
    return _tool("EXTAUTHZ_PROMTOOL", Path("/usr/bin/promtool"), "promtool")


@pytest.fixture(scope="session")
def tsc() -> Path:
    """tsc inside a node_modules that also holds @grafana/schema."""
    path = _tool("EXTAUTHZ_TSC", TOOLS / "node" / "node_modules" / ".bin" / "tsc", "tsc")
    # node_modules/.bin/tsc: the schema is in the same node_modules.
    schema = path.parent.parent / "@grafana" / "schema" / "package.json"
    if not schema.is_file():
        pytest.fail(f"{path}: no @grafana/schema beside it ({schema})", pytrace=False)
    return path


@pytest.fixture(scope="session")
def running_extauthz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningExtauthz]:
    """A real ``extauthz serve`` with the example policy of deploy/extauthz, on loopback."""
    workdir = tmp_path_factory.mktemp("extauthz")
    policy = workdir / "policy"
    shutil.copytree(REPO / "deploy" / "extauthz", policy)
    LocalIssuer().write_jwks(policy / "keys" / "jwks.json")
    grpc_port, http_port = free_ports(2)
    config = yaml.safe_load((policy / "config.yaml").read_text())
    config["server"] = {
        "grpc_listen": f"127.0.0.1:{grpc_port}",
        "http_listen": f"127.0.0.1:{http_port}",
    }
    (policy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    process = ManagedProcess(
        "extauthz",
        [sys.executable, "-m", "extauthz", "serve", "--config", str(policy / "config.yaml")],
        workdir,
        cwd=workdir,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if not process.running:
                pytest.fail(f"extauthz exited before it was ready\n{process.tail()}")
            try:
                if http_request(f"http://127.0.0.1:{http_port}/readyz", timeout=1).status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"extauthz not ready after 30s\n{process.tail()}")
            time.sleep(0.05)
        yield RunningExtauthz(grpc_port, http_port)
    finally:
        process.stop()
