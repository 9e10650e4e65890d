"""SIGTERM through a real Envoy: health turns NOT_SERVING first, in-flight checks finish."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest
from local_http import LocalHttpServer, Reply

from extauthz.demo.issuer import generate_key
from extauthz.demo.stack import Response, http_request
from faults.conftest import StartFaultStack
from faults.harness import FaultStack, HealthWatch, wait_for

pytestmark = pytest.mark.e2e
ISSUER = "https://idp.example.test"
SCOPE = "tickets:read tickets:write"


def remote_issuer(origin: LocalHttpServer, **settings: str) -> dict[str, object]:
    return {
        "issuer": ISSUER,
        "jwks_url": origin.url("/jwks"),
        "algorithms": ["RS256", "ES256", "EdDSA"],
        "keys_refresh_min": "1s",
        **settings,
    }


def test_sigterm_turns_health_not_serving_first_and_lets_in_flight_checks_finish(
    start_fault_stack: StartFaultStack, origin: LocalHttpServer
) -> None:
    def publish(stack: FaultStack) -> None:
        origin.replies["/jwks"] = Reply(body=json.dumps(stack.issuer.jwks()).encode())

    # A check naming an unknown kid waits for the refetch it triggers: with the JWKS
    # endpoint hanging, that keeps checks in flight for fetch_timeout (0.6 s).
    stack = start_fault_stack(
        {
            "issuers": [remote_issuer(origin, fetch_timeout="600ms")],
            "server.shutdown_grace": "2s",
        },
        prepare=publish,
    )
    origin.replies["/jwks"] = Reply(misbehave="hang", hang_s=5.0)
    stack.issuer.keys["rsa-9"] = generate_key("rsa")
    tokens = [
        stack.delegated_token(agent="support-agent", user="alice", scope=SCOPE, kid="rsa-9")
        for _ in range(5)
    ]
    watch = HealthWatch(stack.ports.grpc)
    wait_for(lambda: watch.statuses == ["SERVING"], "the health watch to start")
    answers: list[Response] = []
    clients = [
        threading.Thread(target=lambda t=t: answers.append(stack.request("GET", "/t/1", token=t)))
        for t in tokens
    ]
    for client in clients:
        client.start()
    # Counted by extauthz itself: Envoy counts a check as active before extauthz has it.
    wait_for(
        lambda: stack.metric("extauthz_checks_waiting_for_keys") == 5,
        "all five checks waiting on the refetch at extauthz",
    )
    assert len(origin.paths_requested("/jwks")) == 2  # the start's fetch and one refetch
    sent = time.monotonic()
    assert stack.extauthz is not None
    stack.extauthz.process.send_signal(signal.SIGTERM)
    wait_for(lambda: "NOT_SERVING" in watch.statuses, "health NOT_SERVING", 5)
    not_serving_after = time.monotonic() - sent
    readyz = http_request(f"http://127.0.0.1:{stack.ports.http}/readyz", timeout=1.0)
    for client in clients:
        client.join(5)
    # The open Watch stream is an RPC too: grpc's stop waits the whole grace for it.
    assert stack.extauthz.process.wait(10) == 0
    watch.close()

    assert watch.statuses[:2] == ["SERVING", "NOT_SERVING"]
    assert not_serving_after < 0.5
    assert readyz.status == 503  # asked while the checks were still in flight
    # Every in-flight check was answered by extauthz (its reason and decision id), not by
    # Envoy's timeout, and every decision line was written before the process ended.
    assert len(answers) == 5
    assert [(a.status, a.reason) for a in answers] == [(401, "key_unknown")] * 5
    lines = {line["decision_id"]: line for line in stack.decisions()}
    assert all(a.decision_id in lines for a in answers)
    # Afterwards Envoy fails closed.
    assert stack.request("GET", "/tickets/1", token=tokens[0]).status == 503
