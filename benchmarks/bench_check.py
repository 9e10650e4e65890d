"""How much does a whole Check cost beyond verifying the token's signature?

Baseline, measured in the same run on the same token: PyJWT's ``jwt.decode`` (signature,
``exp``, ``aud``) — the floor for any authorizer that verifies JWTs in Python. Then the full
in-process ``Check`` (CheckRequest → decision → CheckResponse, decision line, metrics) for
each key type, and a few deny paths. Prints microseconds per call and the ratio to the
baseline; there are no thresholds: compare runs on the same machine.

    make bench        # or: .venv/bin/python benchmarks/bench_check.py [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import functools
import io
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jwt
from envoy.service.auth.v3 import external_auth_pb2
from prometheus_client import CollectorRegistry

from extauthz.config import load_config
from extauthz.decision_log import DecisionLog
from extauthz.demo.issuer import LocalIssuer
from extauthz.server import Server

REPO = Path(__file__).resolve().parents[1]
HOST = "tickets.example.test"
AUDIENCE = "https://tickets.example.test"
ALG_OF_KID = {"rsa-1": "RS256", "ec-1": "ES256", "ed25519-1": "EdDSA"}


def per_call_us(fn: Callable[[], object], seconds: float, repeats: int = 5) -> float:
    """Median over ``repeats`` rounds of the mean time per call, in microseconds."""
    calls = 1
    while True:  # calibrate a round to about seconds / repeats
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - started > seconds / repeats / 4:
            break
        calls *= 2
    calls *= 4
    rounds = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(rounds)


def check_request(token: str | None, method: str, path: str) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.host, http.path = method, HOST, path
    http.headers["x-request-id"] = "bench"
    if token is not None:
        http.headers["authorization"] = f"Bearer {token}"
    return request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="extauthz-bench-"))
    try:
        shutil.copytree(REPO / "deploy/extauthz", workdir / "policy")
        issuer = LocalIssuer()
        issuer.write_jwks(workdir / "policy/keys/jwks.json")
        server = Server(load_config(workdir / "policy/config.yaml"), CollectorRegistry())
        server.handler.decision_log = DecisionLog(io.StringIO())
        server.refresh_feed()
        sink = server.handler.decision_log

        def reset_sink() -> None:
            # Keep the in-memory log from growing across millions of calls.
            sink._stream = io.StringIO()

        print(
            f"extauthz Check benchmark — Python {platform.python_version()}, "
            f"{platform.machine()}, {args.seconds:.1f}s per row\n"
        )
        print(f"{'case':<48} {'µs/call':>9} {'x baseline':>11}")
        for kid, alg in ALG_OF_KID.items():
            token = issuer.token(
                sub="alice",
                audience=AUDIENCE,
                client_id="support-agent",
                scope="tickets:read",
                kid=kid,
            )
            public = issuer.keys[kid].public_key()
            baseline = per_call_us(
                functools.partial(jwt.decode, token, public, algorithms=[alg], audience=AUDIENCE),
                args.seconds,
            )
            allowed = check_request(token, "GET", "/tickets/1")
            check = per_call_us(
                functools.partial(server.handler.check_encoded, allowed), args.seconds
            )
            reset_sink()
            print(f"{'baseline: PyJWT jwt.decode, ' + alg:<48} {baseline:>9.1f} {1.0:>11.2f}")
            print(f"{'Check, delegated allow, ' + alg:<48} {check:>9.1f} {check / baseline:>11.2f}")
        rsa_token = issuer.token(
            sub="alice", audience=AUDIENCE, client_id="support-agent", scope="tickets:read"
        )
        rsa_baseline = per_call_us(
            lambda: jwt.decode(
                rsa_token,
                issuer.keys["rsa-1"].public_key(),
                algorithms=["RS256"],
                audience=AUDIENCE,
            ),
            args.seconds,
        )
        denies = {
            "Check, deny: no token": check_request(None, "GET", "/tickets/1"),
            "Check, deny: garbage token": check_request("not.a.jwt", "GET", "/tickets/1"),
            "Check, deny: user lacks permission (RS256)": check_request(
                rsa_token, "POST", "/tickets"
            ),
        }
        for name, request in denies.items():
            cost = per_call_us(
                functools.partial(server.handler.check_encoded, request), args.seconds
            )
            reset_sink()
            print(f"{name:<48} {cost:>9.1f} {cost / rsa_baseline:>11.2f}")
        print("\nRatios are against the RS256 baseline for the deny rows.")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
