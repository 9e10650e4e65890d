"""Shared builders for the hostile-input tests and the fuzz target.

Tokens are assembled by hand (header and payload base64url-encoded here, signed with PyJWT's
algorithm objects or not at all), so no signing library can refuse to make a bad one. The
``ServiceHarness`` runs the whole in-process Check (CheckRequest → decision → CheckResponse,
decision line, metrics) on the example policy, with a fixed clock.

Import as ``from hostile import ...`` (pytest puts ``tests/`` on ``sys.path``; the fuzz
target adds it itself).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from envoy.service.auth.v3 import external_auth_pb2
from helpers import AUDIENCE, DEPLOY, HOST, ISSUER, make_deployment
from jwt.algorithms import get_default_algorithms
from prometheus_client import CollectorRegistry

from extauthz.config import Config, load_config
from extauthz.decision_log import DecisionLog
from extauthz.demo.issuer import LocalIssuer
from extauthz.errors import OUTCOMES, Reason
from extauthz.feed.snapshot import parse_feed
from extauthz.metrics import Metrics
from extauthz.server import load_key_sets
from extauthz.service import CheckHandler, Runtime

NOW = 1_800_000_000.0
ALGORITHMS = get_default_algorithms()
# The example policy's allow-list is RS256, ES256, EdDSA; these are the kids that fit them.
ALG_OF_KID = {"rsa-1": "RS256", "ec-1": "ES256", "ed25519-1": "EdDSA"}
REASONS = {reason.value: reason for reason in Reason}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def part(value: object) -> str:
    """A JSON value, raw JSON text (str) or raw bytes → one base64url token part."""
    if isinstance(value, bytes):
        return b64url(value)
    if isinstance(value, str):
        return b64url(value.encode())
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def header(**overrides: Any) -> dict[str, Any]:
    """An access-token header (RS256, at+jwt, kid rsa-1); a value None removes a member."""
    base: dict[str, Any] = {"alg": "RS256", "typ": "at+jwt", "kid": "rsa-1"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def claims(**overrides: Any) -> dict[str, Any]:
    """Claims the example policy allows for GET /tickets/{id}: alice via support-agent,
    scope tickets:read, at NOW, a fresh jti. A value None removes a claim."""
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": AUDIENCE,
        "iat": int(NOW),
        "exp": int(NOW) + 300,
        "jti": uuid.uuid4().hex,
        "client_id": "support-agent",
        "scope": "tickets:read",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(signing_input: str, alg: str, key: Any) -> bytes:
    return bytes(ALGORITHMS[alg].sign(signing_input.encode("ascii"), key))


def forge(hdr: object, body: object, key: Any = None, *, signature: bytes | None = None) -> str:
    """Encode header and payload (JSON values, raw JSON text or bytes); sign with ``key``
    using the header's ``alg`` unless a raw ``signature`` is given."""
    signing_input = f"{part(hdr)}.{part(body)}"
    if signature is None:
        assert isinstance(hdr, dict), "a raw header needs an explicit signature"
        signature = sign(signing_input, hdr["alg"], key)
    return f"{signing_input}.{b64url(signature)}"


def forge_raw(head_json: str, body_json: str, alg: str, key: Any) -> str:
    """Sign exactly the JSON texts given (duplicate members and all)."""
    signing_input = f"{part(head_json)}.{part(body_json)}"
    return f"{signing_input}.{b64url(sign(signing_input, alg, key))}"


def check_for(
    token: str | None = None,
    *,
    method: str = "GET",
    host: str = HOST,
    path: str = "/tickets/7",
    authorization: str | None = None,
    raw_body: bytes | None = None,
) -> external_auth_pb2.CheckRequest:
    """A CheckRequest as Envoy sends it, carrying ``token`` as a bearer credential."""
    check = external_auth_pb2.CheckRequest()
    http = check.attributes.request.http
    http.method, http.host, http.path = method, host, path
    if authorization is None and token is not None:
        authorization = f"Bearer {token}"
    if authorization is not None:
        http.headers["authorization"] = authorization
    if raw_body is not None:
        http.raw_body = raw_body
    return check


class _NullStream:
    """A text stream that keeps nothing (the fuzz target writes millions of lines)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class ServiceHarness:
    """The example policy (deploy/extauthz/) with ``issuer``'s keys and the example feed,
    behind a real CheckHandler whose clock reads ``self.now``."""

    def __init__(
        self,
        dest: Path,
        issuer: LocalIssuer,
        edit: Callable[[dict[str, Any]], None] | None = None,
        *,
        keep_lines: bool = True,
    ) -> None:
        self.now = NOW
        self.config: Config = load_config(make_deployment(dest, issuer, edit))
        self.runtime = Runtime(self.config, load_key_sets(self.config))
        feed = (DEPLOY / "feed" / "users.json").read_bytes()
        self.runtime.feed.accept(parse_feed(feed, "users.json"), NOW - 5)
        self.registry = CollectorRegistry()
        self.lines = 0
        harness = self

        class CountingStream(_NullStream):
            def write(self, text: str) -> int:
                harness.lines += text.count("\n")
                return len(text)

        self.handler = CheckHandler(
            self.runtime,
            Metrics(self.registry),
            DecisionLog(CountingStream() if keep_lines else _NullStream()),  # type: ignore[arg-type]
            clock=lambda: self.now,
        )

    def check(self, check: external_auth_pb2.CheckRequest) -> external_auth_pb2.CheckResponse:
        return self.handler.check(check)

    def reason(self, check: external_auth_pb2.CheckRequest) -> Reason:
        """The reason of the answer, after asserting the answer is well formed."""
        return assert_well_formed(self.check(check))


def assert_well_formed(response: external_auth_pb2.CheckResponse) -> Reason:
    """Check the answer's shape against the reason table; return its reason."""
    reason = REASONS[response.dynamic_metadata["reason"]]
    decision_id = response.dynamic_metadata["decision_id"]
    assert isinstance(decision_id, str) and len(decision_id) == 32
    kind = response.WhichOneof("http_response")
    if reason is Reason.ALLOWED:
        assert kind == "ok_response"
        assert response.status.code == 0
        assert response.dynamic_metadata["allowed"] is True
    else:
        assert kind == "denied_response"
        assert response.status.code != 0
        assert response.denied_response.status.code == OUTCOMES[reason].status
        body = json.loads(response.denied_response.body)
        assert body["reason"] == reason.value
        assert body["decision_id"] == decision_id
    return reason
