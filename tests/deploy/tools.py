"""Shared by the checks of helm/ and deploy/: paths, running a tool, a running extauthz."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from extauthz.demo.stack import http_request

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / ".tools"


def run(argv: list[str | Path], *, stdin: str | None = None, cwd: Path | None = None) -> str:
    """Run a tool; return its stdout, or fail the test with its output."""
    result = subprocess.run(
        [str(a) for a in argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, argv))} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}",
            pytrace=False,
        )
    return result.stdout


@dataclass(frozen=True)
class RunningExtauthz:
    grpc_port: int
    http_port: int

    def scrape(self) -> str:
        response = http_request(f"http://127.0.0.1:{self.http_port}/metrics")
        assert response.status == 200, response
        return response.body.decode()
