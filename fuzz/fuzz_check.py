"""Coverage-guided fuzz target (atheris, libFuzzer) for the whole in-process Check.

Each input is either a serialized CheckRequest (raw mode: the bytes gRPC would hand us), or
a recipe that mutates one of a few valid CheckRequests of the example policy (structured
mode: path, method, host, headers, body, the token's bytes, or its claims re-signed with
the trusted key, so that inputs reach past the signature). The target fails on any
exception escaping ``CheckHandler.check``, an answer that is not well formed, an
``internal_error`` (only an unexpected exception makes one), or an answer other than the
pure decision core's for the same request.

    python fuzz/fuzz_check.py -runs=20000 -seed=1 CORPUS_DIR   # what the suite runs
    make fuzz SECONDS=600                                      # longer, corpus kept

An empty corpus folder is first filled with the valid requests, serialized.

Any libFuzzer flag works (``-help=1``). A failing input is written as ``crash-<sha1>``
under ``-artifact_prefix``; run the target with that file as its argument to replay it.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

with atheris.instrument_imports(include=["extauthz"]):
    from envoy.service.auth.v3 import external_auth_pb2
    from google.protobuf.message import DecodeError
    from helpers import AUDIENCE, ISSUER
    from hostile import NOW, ServiceHarness, assert_well_formed, b64url, check_for, claims, forge

    from extauthz.decision import decide
    from extauthz.demo.issuer import LocalIssuer
    from extauthz.envoy import PARTIAL_BODY_HEADER, request_from_check
    from extauthz.errors import Reason

ISSUER_KEYS = LocalIssuer(ISSUER)
HARNESS = ServiceHarness(
    Path(tempfile.mkdtemp(prefix="fuzz-check-")), ISSUER_KEYS, keep_lines=False
)
ED25519 = ISSUER_KEYS.keys["ed25519-1"]


def _token(**overrides: Any) -> str:
    return forge(
        {"alg": "EdDSA", "typ": "at+jwt", "kid": "ed25519-1"}, claims(**overrides), ED25519
    )


def _mcp(tool: str) -> bytes:
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool}}
    return json.dumps(message).encode()


# Valid requests the structured mode starts from: each is allowed as it stands.
BASES = [
    check_for(_token(jti="a")),
    check_for(_token(scope="tickets:read tickets:write", jti="b"), method="POST", path="/tickets"),
    check_for(_token(sub="triage-bot", client_id="triage-bot", jti="c"), path="/tickets/9"),
    check_for(
        _token(sub="bob", scope="tickets:*", jti="d"),
        method="POST",
        path="/mcp",
        raw_body=_mcp("get_ticket"),
    ),
    check_for(
        ISSUER_KEYS.token(
            sub="alice",
            audience=AUDIENCE,
            client_id="support-agent",
            scope="tickets:read",
            kid="ec-1",
            now=NOW,
        )
    ),
]
CLAIM_NAMES = [
    "sub",
    "aud",
    "iss",
    "exp",
    "iat",
    "nbf",
    "scope",
    "scp",
    "client_id",
    "azp",
    "act",
    "jti",
    "cnf",
]
SEGMENTS = ["..", ".", "%2e%2e", "%2F", "%5c", "\\", "..;x", ";x", "", "tickets", "mcp", "7"]
HEADERS = ["authorization", PARTIAL_BODY_HEADER, "x-request-id", ":authority", "x-extauthz-user"]
# Checked once at start: the bases are allowed, so the oracle below is not vacuous.
for _base in BASES:
    assert HARNESS.reason(_base) is Reason.ALLOWED, _base


def _value(fdp: atheris.FuzzedDataProvider) -> object:
    kind = fdp.ConsumeIntInRange(0, 6)
    if kind == 0:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))
    if kind == 1:
        return fdp.ConsumeInt(8)
    if kind == 2:
        return fdp.ConsumeRegularFloat()
    if kind == 3:
        return [fdp.ConsumeUnicodeNoSurrogates(8) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    if kind == 4:
        return {
            "sub": fdp.PickValueInList(["support-agent", "triage-bot", "x"]),
            "act": _value(fdp) if fdp.ConsumeBool() else None,
        }
    if kind == 5:
        return None
    return fdp.ConsumeBool()


def _mutate(fdp: atheris.FuzzedDataProvider) -> external_auth_pb2.CheckRequest:
    check = external_auth_pb2.CheckRequest()
    check.CopyFrom(fdp.PickValueInList(BASES))
    http = check.attributes.request.http
    token = http.headers["authorization"].removeprefix("Bearer ")
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        op = fdp.ConsumeIntInRange(0, 9)
        if op == 0:
            http.path = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 64))
        elif op == 1:
            parts = http.path.split("/")
            parts.insert(fdp.ConsumeIntInRange(0, len(parts)), fdp.PickValueInList(SEGMENTS))
            http.path = "/".join(parts)
        elif op == 2:
            http.method = fdp.PickValueInList(["GET", "POST", "DELETE", "get", "HEAD", ""])
        elif op == 3:
            http.host = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 30))
        elif op == 4:
            name = fdp.PickValueInList(HEADERS)
            http.headers[name] = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 64))
        elif op == 5:
            http.raw_body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200))
        elif op == 6 and http.raw_body:
            body = bytearray(http.raw_body)
            body[fdp.ConsumeIntInRange(0, len(body) - 1)] = fdp.ConsumeInt(1) & 0xFF
            http.raw_body = bytes(body)
        elif op == 7 and token:
            # A byte of the token changed: only the same token, or a deny, may come of it.
            at = fdp.ConsumeIntInRange(0, len(token) - 1)
            token = token[:at] + chr(fdp.ConsumeIntInRange(32, 126)) + token[at + 1 :]
            http.headers["authorization"] = f"Bearer {token}"
        elif op == 8:
            # Claims changed and signed again by the trusted issuer: reaches past the signature.
            changed = {fdp.PickValueInList(CLAIM_NAMES): _value(fdp)}
            token = _token(**changed)  # None removes the claim
            http.headers["authorization"] = f"Bearer {token}"
        else:
            # Parts cut off or replaced by arbitrary base64url.
            kept = token.split(".")[: fdp.ConsumeIntInRange(0, 3)]
            token = ".".join([*kept, b64url(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64)))])
            http.headers["authorization"] = f"Bearer {token}"
    return check


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeBool():
        try:
            check = external_auth_pb2.CheckRequest.FromString(fdp.ConsumeBytes(len(data)))
        except DecodeError:
            return  # gRPC would refuse these bytes before they reach us
    else:
        check = _mutate(fdp)

    response = HARNESS.check(check)  # an exception escaping here is a finding

    reason = assert_well_formed(response)
    assert reason is not Reason.INTERNAL_ERROR, "an unexpected exception inside the Check"
    core = decide(request_from_check(check), HARNESS.runtime.view(), HARNESS.now)
    assert reason is core.reason, f"Check answered {reason}, the decision core {core.reason}"


def write_seeds(corpus: Path) -> None:
    """Start an empty corpus with the valid requests, serialized (raw mode), so raw-mode
    mutation begins from requests that pass every check."""
    for i, base in enumerate(BASES):
        (corpus / f"seed-{i}").write_bytes(b"\x01" + base.SerializeToString())


def main() -> None:
    for arg in sys.argv[1:]:
        corpus = Path(arg)
        if not arg.startswith("-") and corpus.is_dir() and not any(corpus.iterdir()):
            write_seeds(corpus)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
