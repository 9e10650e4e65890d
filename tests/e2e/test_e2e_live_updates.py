"""Live updates through a real Envoy: key rotation, policy reload, feed replacement and
revocation, all while requests flow. No request may fail or be decided wrongly."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from local_http import LocalHttpServer, Reply, local_http_server

from extauthz.demo.issuer import generate_key
from extauthz.demo.stack import Stack

pytestmark = pytest.mark.e2e

StartStack = Callable[..., Stack]
ISSUER = "https://idp.example.test"
SCOPE = "tickets:read tickets:write"


@pytest.fixture
def idp() -> Iterator[LocalHttpServer]:
    with local_http_server() as server:
        yield server


def replace_file(path: Path, content: str) -> None:
    staged = path.with_name(path.name + ".new")
    staged.write_text(content)
    os.replace(staged, path)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Traffic:
    """Sends requests from a background thread until stopped; records every answer."""

    def __init__(self, send: Callable[[int], tuple[int, int]]) -> None:
        self._send = send
        self.results: list[tuple[int, int, int]] = []  # (round, expected, got)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            expected, got = self._send(i)
            self.results.append((i, expected, got))
            i += 1

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def wait_for_more(self, count: int) -> None:
        target = len(self.results) + count
        wait_for(lambda: len(self.results) >= target, f"{count} more requests")

    @property
    def wrong(self) -> list[tuple[int, int, int]]:
        return [r for r in self.results if r[1] != r[2]]


def test_key_rotation_while_requests_flow_refuses_no_valid_token(
    start_stack: StartStack, idp: LocalHttpServer
) -> None:
    issuer_entry = {
        "issuer": ISSUER,
        "jwks_url": idp.url("/jwks"),
        "algorithms": ["RS256", "ES256", "EdDSA"],
        "unknown_kid_refetch": "1s",
        "fetch_timeout": "2s",
        "keys_refresh": "1s",
        "keys_refresh_min": "1s",
    }
    # The stack's issuer signs; its JWKS is served by our local IdP endpoint.
    stack = Stack(overrides={"issuers": [issuer_entry]})
    publish = lambda: idp.replies.__setitem__(  # noqa: E731
        "/jwks", Reply(body=json.dumps(stack.issuer.jwks()).encode())
    )
    publish()
    stack.start()
    try:
        signing = {"kid": "rsa-1"}

        def send(i: int) -> tuple[int, int]:
            token = stack.delegated_token(
                agent="support-agent", user="alice", scope=SCOPE, kid=signing["kid"]
            )
            return 200, stack.request("GET", f"/tickets/{i}", token=token).status

        with Traffic(send) as traffic:
            traffic.wait_for_more(20)
            # Rotation: a new key is published and used at once (no waiting for the
            # periodic refresh: the unknown kid triggers one refetch).
            stack.issuer.keys["rsa-2"] = generate_key("rsa")
            publish()
            signing["kid"] = "rsa-2"
            traffic.wait_for_more(20)
            # Later the old key is retired.
            retired = stack.issuer.keys.pop("rsa-1")
            publish()
            traffic.wait_for_more(20)
        assert stack.extauthz is not None
        # extauthz's log says which keys each fetch brought, and in what order.
        assert traffic.wrong == [], stack.extauthz.tail(60)
        assert len(traffic.results) >= 60
        assert stack.metric("extauthz_keys_refresh_total", issuer=ISSUER, outcome="success") >= 2
        # A token signed with the retired key is refused once a refresh has seen it go.
        refreshes = stack.metric("extauthz_keys_refresh_total", issuer=ISSUER, outcome="success")
        wait_for(
            lambda: (
                stack.metric("extauthz_keys_refresh_total", issuer=ISSUER, outcome="success")
                > refreshes
                or stack.metric(
                    "extauthz_keys_refresh_total", issuer=ISSUER, outcome="not_modified"
                )
                > 0
            ),
            "a periodic key refresh",
        )
        stack.issuer.keys["rsa-1"] = retired
        old = stack.delegated_token(agent="support-agent", user="alice", scope=SCOPE, kid="rsa-1")
        refused = stack.request("GET", "/tickets/1", token=old)
        assert (refused.status, refused.reason) == (401, "key_unknown")
    finally:
        stack.stop()


def test_reloads_and_feed_replacements_under_steady_traffic_decide_every_request_right(
    start_stack: StartStack,
) -> None:
    stack = start_stack({"server.reload_check": "50ms", "feed.refresh": "50ms"})
    alice = stack.delegated_token(agent="support-agent", user="alice", scope=SCOPE)
    triage = stack.autonomous_token(agent="triage-bot", scope="tickets:read")
    stranger = stack.delegated_token(agent="support-agent", user="zed", scope=SCOPE)
    # Every one of these has the same answer in every config and feed version below.
    cases: list[tuple[str, str, str, int]] = [
        ("GET", "/tickets/1", alice, 200),
        ("POST", "/tickets", alice, 200),
        ("GET", "/tickets/2", triage, 200),
        ("DELETE", "/tickets/3", alice, 403),
        ("GET", "/tickets/4", stranger, 403),
        ("GET", "/nowhere", alice, 403),
    ]

    def send(i: int) -> tuple[int, int]:
        method, path, token, expected = cases[i % len(cases)]
        return expected, stack.request(method, path, token=token).status

    config_text = stack.config_path.read_text()
    config = yaml.safe_load(config_text)
    feed = json.loads(stack.feed_path.read_text())
    with Traffic(send) as traffic:
        for round_ in range(10):
            # A config change that matters to nobody in the traffic: a new agent.
            changed: dict[str, Any] = json.loads(json.dumps(config))
            changed["agents"].append({"id": f"agent-{round_}", "permissions": ["tickets:read"]})
            replace_file(stack.config_path, yaml.safe_dump(changed, sort_keys=False))
            # A feed change likewise: a new user, a new version.
            users = {**feed["users"], f"user-{round_}": {"permissions": ["tickets:read"]}}
            replace_file(stack.feed_path, json.dumps({"version": f"v{round_}", "users": users}))
            traffic.wait_for_more(12)
    assert traffic.wrong == []
    assert len(traffic.results) >= 120
    assert stack.metric("extauthz_config_reload_total", outcome="success") >= 5
    assert stack.metric("extauthz_config_reload_total", outcome="error") == 0
    lines = stack.decisions()
    assert len({line["policy_version"] for line in lines}) >= 5
    assert len({line["feed_version"] for line in lines}) >= 5
    assert not [line for line in lines if line["reason"] == "internal_error"]


def test_revoking_a_token_and_disabling_an_agent_in_the_feed_deny_from_the_next_refresh(
    start_stack: StartStack,
) -> None:
    stack = start_stack({"feed.refresh": "100ms"})
    token = stack.delegated_token(agent="support-agent", user="alice", scope=SCOPE)
    other = stack.delegated_token(agent="support-agent", user="alice", scope=SCOPE)
    triage = stack.autonomous_token(agent="triage-bot", scope="tickets:read")
    assert stack.request("GET", "/tickets/1", token=token).status == 200
    claims = json.loads(_payload(token))
    feed = json.loads(stack.feed_path.read_text())
    feed["version"] = "revoked"
    feed["revoked_tokens"] = {claims["jti"]: claims["exp"]}
    feed["agents"] = {"triage-bot": {"disabled": True}}
    changed_at = time.monotonic()
    replace_file(stack.feed_path, json.dumps(feed))
    wait_for(lambda: stack.request("GET", "/tickets/1", token=token).status == 401, "revocation")
    propagation = time.monotonic() - changed_at
    revoked = stack.request("GET", "/tickets/1", token=token)
    assert revoked.reason == "token_revoked"
    assert stack.request("GET", "/tickets/1", token=triage).reason == "agent_disabled"
    assert stack.request("GET", "/tickets/1", token=other).status == 200  # only that token
    assert propagation < 5.0


def _payload(token: str) -> str:
    body = token.split(".")[1]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
