"""Failures seen through a real Envoy: extauthz down, a stale feed, dry-run mode.

Each test breaks or reconfigures its own stack, so the shared one stays healthy.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from extauthz.demo.stack import Response, Stack, http_request

pytestmark = pytest.mark.e2e

SUPPORT_SCOPE = "tickets:read tickets:write"
# The start_stack fixture (conftest.py): start_stack(overrides) -> a running private Stack.
StartStack = Callable[..., Stack]


def test_envoy_answers_503_when_extauthz_is_down(start_stack: StartStack) -> None:
    stack = start_stack()
    token = stack.autonomous_token(agent="triage-bot", scope="tickets:read")
    assert stack.request("GET", "/tickets/1", token=token).status == 200

    assert stack.stop_extauthz() == 0  # SIGTERM: a clean, graceful exit
    response = stack.request("GET", "/tickets/1", token=token)

    # failure_mode_allow: false + status_on_error 503: closed, and honest about whose fault.
    assert response.status == 503
    assert not response.from_upstream
    assert response.decision_id is None  # Envoy answered; extauthz never decided
    assert stack.request("GET", "/healthz").status == 200  # liveness needs no extauthz


def test_stale_feed_fails_delegated_calls_closed_and_recovers(start_stack: StartStack) -> None:
    stack = start_stack({"feed.refresh": "200ms", "feed.max_staleness": "1s"})
    delegated = stack.delegated_token(agent="support-agent", user="alice", scope=SUPPORT_SCOPE)
    autonomous = stack.autonomous_token(agent="triage-bot", scope="tickets:read")
    assert stack.request("GET", "/tickets/1", token=delegated).status == 200
    errors_before = stack.metric("extauthz_feed_refresh_total", outcome="error")

    good_feed = stack.feed_path.read_text()
    stack.feed_path.write_text("{ this is not a feed")  # every refresh now fails

    def until(status: int, token: str, timeout: float = 5.0) -> Response:
        deadline = time.monotonic() + timeout
        while True:
            response = stack.request("GET", "/tickets/1", token=token)
            if response.status == status or time.monotonic() > deadline:
                return response
            # Autonomous calls need no user permissions, so they keep working throughout.
            assert stack.request("GET", "/tickets/2", token=autonomous).status == 200
            time.sleep(0.05)

    stale = until(503, delegated)
    assert stale.status == 503 and not stale.from_upstream
    assert stale.www_authenticate is None  # our fault, not the token's: no challenge
    assert stale.json()["reason"] == "feed_stale"
    line = stack.wait_for_decision(stale.decision_id or "")
    assert (line["reason"], line["status"], line["user"]) == ("feed_stale", 503, "alice")
    assert line["feed_age_s"] > 1.0
    assert stack.request("GET", "/tickets/2", token=autonomous).status == 200
    assert stack.metric("extauthz_feed_refresh_total", outcome="error") > errors_before
    assert stack.metric("extauthz_feed_age_seconds") > 1.0
    # Still ready: a stale feed is a 503 for delegated calls, not a reason to pull the pod.
    assert http_request(f"http://127.0.0.1:{stack.ports.http}/readyz").status == 200

    feed = json.loads(good_feed)
    feed["version"] = "2"
    stack.feed_path.write_text(json.dumps(feed))
    recovered = until(200, delegated)
    assert recovered.status == 200
    assert stack.wait_for_decision(recovered.decision_id or "")["feed_version"] == "2"


def test_dry_run_lets_denied_requests_through_without_identity(start_stack: StartStack) -> None:
    stack = start_stack({"mode": "dry_run"})

    response = stack.request("GET", "/tickets/1", headers={"x-extauthz-user": "admin"})

    assert response.status == 200 and response.from_upstream
    seen = response.upstream_headers
    for header in ("x-extauthz-agent", "x-extauthz-user", "x-extauthz-permission"):
        assert header not in seen  # an unverified caller must not look verified
    line = stack.wait_for_decision(response.decision_id or "")
    assert (line["decision"], line["reason"], line["mode"]) == ("deny", "token_missing", "dry_run")
    assert (line["status"], line["would_status"]) == (200, 401)


def test_envoys_deadline_reaches_extauthz_and_a_late_check_is_shed(
    start_stack: StartStack,
) -> None:
    # min_time_left above Envoy's 1 s ext_authz timeout: every check arrives "too late".
    stack = start_stack({"server.min_time_left": "2s"})
    token = stack.delegated_token(agent="support-agent", user="alice", scope=SUPPORT_SCOPE)
    response = stack.request("GET", "/tickets/1", token=token)
    assert (response.status, response.reason) == (503, "overloaded")
    assert not response.from_upstream
    assert stack.metric("extauthz_decisions_total", decision="deny", reason="overloaded") == 1.0
