"""The issuer's JWKS endpoint misbehaving, seen through a real Envoy: down at start, down
later, slow, garbage. Each shows in extauthz_keys_refresh_total and friends."""

from __future__ import annotations

import json
import threading
import time

import pytest
from local_http import LocalHttpServer, Reply

from extauthz.demo.issuer import generate_key
from extauthz.demo.stack import Response, free_ports
from faults.conftest import StartFaultStack
from faults.harness import FaultStack, grpc_health, ready, wait_for

pytestmark = pytest.mark.e2e
ISSUER = "https://idp.example.test"
SCOPE = "tickets:read tickets:write"


def remote_issuer(url: str, **settings: str) -> dict[str, object]:
    return {
        "issuer": ISSUER,
        "jwks_url": url,
        "algorithms": ["RS256", "ES256", "EdDSA"],
        "keys_refresh": "1s",
        "keys_refresh_min": "1s",
        **settings,
    }


def publisher(origin: LocalHttpServer) -> tuple[dict[str, bytes], object]:
    """(holder, prepare): prepare publishes the stack's JWKS on ``origin`` before start and
    keeps the body in holder["jwks"]."""
    holder: dict[str, bytes] = {}

    def prepare(stack: FaultStack) -> None:
        holder["jwks"] = json.dumps(stack.issuer.jwks()).encode()
        origin.replies["/jwks"] = Reply(body=holder["jwks"])

    return holder, prepare


def errors(stack: FaultStack) -> float:
    return stack.metric("extauthz_keys_refresh_total", issuer=ISSUER, outcome="error")


def test_jwks_down_at_start_keeps_extauthz_not_ready_until_it_comes(
    start_fault_stack: StartFaultStack,
) -> None:
    (port,) = free_ports(1)  # nothing listens there yet: connection refused
    url = f"http://127.0.0.1:{port}/jwks"
    stack = start_fault_stack({"issuers": [remote_issuer(url)]}, wait_extauthz_ready=False)
    token = stack.delegated_token(agent="support-agent", user="alice", scope=SCOPE)

    assert not ready(stack.ports.http)
    assert grpc_health(stack.ports.grpc) == "NOT_SERVING"
    refused = stack.request("GET", "/tickets/1", token=token)
    assert (refused.status, refused.reason) == (503, "keys_unavailable")  # ours, not theirs
    assert refused.www_authenticate is None
    wait_for(lambda: errors(stack) >= 2, "retried fetches")

    idp = LocalHttpServer(port)
    idp.replies["/jwks"] = Reply(body=json.dumps(stack.issuer.jwks()).encode())
    idp.start()
    try:
        came = time.monotonic()
        wait_for(lambda: ready(stack.ports.http), "ready once the JWKS answers", 10)
        ready_after = time.monotonic() - came
        assert grpc_health(stack.ports.grpc) == "SERVING"
        assert stack.request("GET", "/tickets/1", token=token).status == 200
        assert stack.metric("extauthz_issuer_keys", issuer=ISSUER) == 3
        assert stack.metric("extauthz_keys_refresh_total", issuer=ISSUER, outcome="success") >= 1
        assert ready_after < 3.0  # retries back off, but at most keys_refresh_min (1 s)
    finally:
        idp.stop()


def test_jwks_down_later_keeps_the_last_keys_serving(
    start_fault_stack: StartFaultStack, origin: LocalHttpServer
) -> None:
    _, prepare = publisher(origin)
    stack = start_fault_stack({"issuers": [remote_issuer(origin.url("/jwks"))]}, prepare=prepare)
    token = stack.delegated_token(agent="support-agent", user="alice", scope=SCOPE)
    assert stack.request("GET", "/tickets/1", token=token).status == 200
    before = errors(stack)

    origin.stop()  # the IdP is gone: connections are refused
    statuses: list[int] = []

    def failing() -> bool:
        statuses.append(stack.request("GET", "/tickets/1", token=token).status)
        return errors(stack) >= before + 2

    wait_for(failing, "two failed refreshes", 15)
    assert set(statuses) == {200}
    assert stack.metric("extauthz_issuer_keys", issuer=ISSUER) == 3
    assert stack.metric("extauthz_keys_age_seconds", issuer=ISSUER) > 1.0
    assert ready(stack.ports.http)  # keys we have are keys we can use


def test_slow_jwks_times_out_and_unknown_kids_do_not_pile_up_behind_it(
    start_fault_stack: StartFaultStack, origin: LocalHttpServer
) -> None:
    _, prepare = publisher(origin)
    stack = start_fault_stack(
        {"issuers": [remote_issuer(origin.url("/jwks"), fetch_timeout="500ms")]},
        prepare=prepare,
    )
    token = stack.delegated_token(agent="support-agent", user="alice", scope=SCOPE)
    origin.replies["/jwks"] = Reply(misbehave="hang", hang_s=5.0)
    fetches = len(origin.paths_requested("/jwks"))
    stack.issuer.keys["rsa-9"] = generate_key("rsa")  # signs, but is not published
    unknown = [
        stack.delegated_token(agent="support-agent", user="alice", scope=SCOPE, kid="rsa-9")
        for _ in range(20)
    ]
    answers: list[tuple[float, Response]] = []
    lock = threading.Lock()

    def send(t: str) -> None:
        started = time.monotonic()
        response = stack.request("GET", "/tickets/1", token=t)
        with lock:
            answers.append((time.monotonic() - started, response))

    clients = [threading.Thread(target=send, args=(t,)) for t in unknown]
    for client in clients:
        client.start()
    known = [stack.request("GET", "/tickets/2", token=token) for _ in range(10)]
    for client in clients:
        client.join(10)

    # All twenty waited on one shared refetch, bounded by fetch_timeout, and were denied by
    # extauthz itself; a known key never waited at all.
    assert len(answers) == 20
    assert {(r.status, r.reason) for _, r in answers} == {(401, "key_unknown")}
    assert max(latency for latency, _ in answers) < 0.95  # inside Envoy's 1 s timeout
    assert {r.status for r in known} == {200}
    refetches = len(origin.paths_requested("/jwks")) - fetches
    assert refetches <= 2  # one refetch (plus at most one periodic refresh), not twenty
    wait_for(lambda: errors(stack) >= 1, "the timed-out fetch counted")


def test_garbage_jwks_is_kept_out_and_the_last_keys_serve(
    start_fault_stack: StartFaultStack, origin: LocalHttpServer
) -> None:
    _, prepare = publisher(origin)
    stack = start_fault_stack({"issuers": [remote_issuer(origin.url("/jwks"))]}, prepare=prepare)
    token = stack.delegated_token(agent="support-agent", user="alice", scope=SCOPE)
    attacker = generate_key("rsa")
    stack.issuer.keys["rsa-9"] = attacker
    forged = stack.delegated_token(agent="support-agent", user="alice", scope=SCOPE, kid="rsa-9")
    bad_bodies = [
        b"<html>502 Bad Gateway</html>",
        b'{"keys": "none"}',
        b'{"keys": [{"kty": "RSA", "kid": "rsa-9"}]}',  # no modulus: unusable
        json.dumps({"keys": [{"kty": "oct", "kid": "rsa-9", "k": "c2VjcmV0"}]}).encode(),
    ]
    before = errors(stack)
    for i, body in enumerate(bad_bodies):
        origin.replies["/jwks"] = Reply(body=body, headers={"Content-Type": "application/json"})
        wait_for(lambda i=i: errors(stack) >= before + i + 1, f"garbage #{i} refused", 10)
        assert stack.request("GET", "/tickets/1", token=token).status == 200
        refused = stack.request("GET", "/tickets/1", token=forged)
        assert (refused.status, refused.reason) == (401, "key_unknown")
    assert stack.metric("extauthz_issuer_keys", issuer=ISSUER) == 3
    assert "keys refresh failed; keeping the last good keys" in stack.processes["a"].stderr()
