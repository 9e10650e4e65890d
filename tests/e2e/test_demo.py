"""`make demo` works: the scripted requests all get the answers the demo expects."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from extauthz.demo.stack import EnvoyNotFound, find_envoy

pytestmark = pytest.mark.e2e


def test_demo_runs_and_every_request_gets_its_expected_answer() -> None:
    try:
        find_envoy()
    except EnvoyNotFound as err:
        pytest.skip(str(err))
    result = subprocess.run(
        [sys.executable, "-m", "extauthz.demo.run"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"All \d+ requests got the expected answer", result.stdout)
    assert "BAD" not in result.stdout
    # The demo shows every class of answer, outages included.
    for reason in ("allowed", "token_missing", "user_lacks_permission", "feed_stale"):
        assert reason in result.stdout
