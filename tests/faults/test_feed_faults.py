"""An HTTP feed source misbehaving, seen through a real Envoy: down at start, down later,
slow, garbage, flapping. Each shows in extauthz_feed_refresh_total and feed_age."""

from __future__ import annotations

import itertools
import json
import time

import pytest
from local_http import LocalHttpServer, Reply, Seen

from extauthz.demo.stack import free_ports
from faults.conftest import StartFaultStack
from faults.harness import FaultStack, grpc_health, ready, wait_for

pytestmark = pytest.mark.e2e
SCOPE = "tickets:read tickets:write"
USERS = {
    "alice": {"permissions": ["tickets:read", "tickets:write"]},
    "bob": {"permissions": ["tickets:read"]},
}


def feed(version: str) -> bytes:
    return json.dumps({"version": version, "users": USERS}).encode()


def http_feed(url: str, **settings: object) -> dict[str, object]:
    return {
        "feed.source": url,
        "feed.allow_plain_http": True,
        "feed.refresh": "200ms",
        "feed.timeout": "300ms",
        "feed.retries": 0,
        "feed.max_staleness": "30s",
        **settings,
    }


def serve_feed(origin: LocalHttpServer) -> None:
    origin.replies["/feed"] = Reply(body=feed("1"), headers={"Content-Type": "application/json"})


def refreshes(stack: FaultStack, outcome: str) -> float:
    return stack.metric("extauthz_feed_refresh_total", outcome=outcome)


def start(start_fault_stack: StartFaultStack, origin: LocalHttpServer) -> FaultStack:
    serve_feed(origin)
    return start_fault_stack(http_feed(origin.url("/feed")))


def test_feed_down_at_start_keeps_extauthz_not_ready_until_it_comes(
    start_fault_stack: StartFaultStack,
) -> None:
    (port,) = free_ports(1)
    stack = start_fault_stack(http_feed(f"http://127.0.0.1:{port}/feed"), wait_extauthz_ready=False)
    token = stack.delegated_token(agent="support-agent", user="alice", scope=SCOPE)
    assert not ready(stack.ports.http)
    assert grpc_health(stack.ports.grpc) == "NOT_SERVING"
    refused = stack.request("GET", "/tickets/1", token=token)
    assert (refused.status, refused.reason) == (503, "feed_stale")
    wait_for(lambda: refreshes(stack, "error") >= 2, "failed refreshes counted")

    server = LocalHttpServer(port)
    serve_feed(server)
    server.start()
    try:
        wait_for(lambda: ready(stack.ports.http), "ready once the feed answers", 10)
        assert grpc_health(stack.ports.grpc) == "SERVING"
        allowed = stack.request("GET", "/tickets/1", token=token)
        assert allowed.status == 200
        assert stack.wait_for_decision(allowed.decision_id or "")["feed_version"] == "1"
    finally:
        server.stop()


def test_feed_down_later_keeps_the_last_good_feed_serving(
    start_fault_stack: StartFaultStack, origin: LocalHttpServer
) -> None:
    stack = start(start_fault_stack, origin)
    token = stack.delegated_token(agent="support-agent", user="alice", scope=SCOPE)
    before = refreshes(stack, "error")
    origin.stop()
    statuses: list[int] = []

    def failing() -> bool:
        statuses.append(stack.request("GET", "/tickets/1", token=token).status)
        return refreshes(stack, "error") >= before + 5

    wait_for(failing, "five failed refreshes", 15)
    assert set(statuses) == {200}
    assert stack.metric("extauthz_feed_age_seconds") > 0.8
    assert ready(stack.ports.http)


def test_slow_feed_times_out_without_slowing_checks(
    start_fault_stack: StartFaultStack, origin: LocalHttpServer
) -> None:
    stack = start(start_fault_stack, origin)
    token = stack.delegated_token(agent="support-agent", user="alice", scope=SCOPE)
    before = refreshes(stack, "error")
    origin.replies["/feed"] = Reply(body=feed("2"), misbehave="hang", hang_s=5.0)
    latencies: list[float] = []

    def sending() -> bool:
        started = time.monotonic()
        assert stack.request("GET", "/tickets/1", token=token).status == 200
        latencies.append(time.monotonic() - started)
        return refreshes(stack, "error") >= before + 3

    wait_for(sending, "three timed-out refreshes", 15)
    # Refreshes run off the event loop: a hanging feed server never holds a check.
    assert max(latencies) < 0.25, max(latencies)
    origin.replies["/feed"] = Reply(body=feed("3"), misbehave="drip")  # a byte per 50 ms
    wait_for(lambda: refreshes(stack, "error") >= before + 5, "a dripping feed cut off", 15)
    allowed = stack.request("GET", "/tickets/1", token=token)
    assert stack.wait_for_decision(allowed.decision_id or "")["feed_version"] == "1"


def test_garbage_feed_is_kept_out_and_the_last_good_one_serves(
    start_fault_stack: StartFaultStack, origin: LocalHttpServer
) -> None:
    stack = start(start_fault_stack, origin)
    token = stack.delegated_token(agent="support-agent", user="alice", scope=SCOPE)
    bob = stack.delegated_token(agent="support-agent", user="bob", scope=SCOPE)
    garbage = [
        Reply(body=b"<html>502 Bad Gateway</html>"),
        Reply(body=feed("2"), misbehave="truncate"),
        Reply(body=b'{"version": "2", "users": []}'),
        # Would give bob write access, if a half-valid document were ever taken.
        Reply(body=b'{"version": "2", "users": {"bob": {"permissions": ["tickets:*"]}},'),
        Reply(
            body=b'{"version": "2", "users": {"bob": {"permissions": ["tickets:*"]}}, "users": {}}'
        ),
    ]
    for i, reply in enumerate(garbage):
        before = refreshes(stack, "error")
        origin.replies["/feed"] = reply
        wait_for(lambda b=before: refreshes(stack, "error") > b, f"garbage #{i} refused", 10)
        allowed = stack.request("GET", "/tickets/1", token=token)
        assert allowed.status == 200
        assert stack.wait_for_decision(allowed.decision_id or "")["feed_version"] == "1"
        assert stack.request("POST", "/tickets", token=bob).status == 403
    assert stack.metric("extauthz_feed_users") == 2


def test_flapping_feed_serves_every_good_version_and_never_goes_stale(
    start_fault_stack: StartFaultStack, origin: LocalHttpServer
) -> None:
    stack = start(start_fault_stack, origin)
    token = stack.delegated_token(agent="support-agent", user="alice", scope=SCOPE)
    counter = itertools.count(2)

    def flap(seen: Seen) -> Reply:
        n = next(counter)
        return Reply(500, b"oops") if n % 2 else Reply(body=feed(f"v{n}"))

    origin.replies["/feed"] = flap
    errors, successes = refreshes(stack, "error"), refreshes(stack, "success")
    versions: set[str] = set()
    statuses: list[int] = []

    def flapping() -> bool:
        response = stack.request("GET", "/tickets/1", token=token)
        statuses.append(response.status)
        versions.add(stack.wait_for_decision(response.decision_id or "")["feed_version"])
        return refreshes(stack, "error") >= errors + 5 and len(versions) >= 3

    wait_for(flapping, "five failures and three versions", 15)
    assert set(statuses) == {200}
    assert refreshes(stack, "success") >= successes + 3
    assert stack.metric("extauthz_feed_age_seconds") < 2.0
