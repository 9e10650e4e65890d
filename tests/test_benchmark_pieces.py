"""The pieces of ``benchmarks/bench_envoy.py`` start and do what they say: the reference
authorizers answer a real gRPC Check, and every case's Envoy config passes ``envoy --mode
validate``. No load and no timing here: the benchmark measures, the tests do not."""

from __future__ import annotations

import argparse
import io
import json
import os
import select
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from prometheus_client import CollectorRegistry

from extauthz.config import load_config
from extauthz.decision_log import DecisionLog
from extauthz.demo.issuer import LocalIssuer
from extauthz.demo.stack import ENVOY_ENV_VAR, EnvoyNotFound, find_envoy, free_ports
from extauthz.server import Server

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
ISSUER = "https://idp.example.test"
HOST = "tickets.example.test"
AUDIENCE = "https://tickets.example.test"
CASES = {"envoy-noauth", "envoy-jwt_authn", "donothing", "naive", "extauthz"}


def check_request(
    method: str, path: str, token: str | None = None
) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.host, http.path = method, HOST, path
    if token is not None:
        http.headers["authorization"] = f"Bearer {token}"
    return request


def serve(argv: list[str], port: int) -> Iterator[external_auth_pb2_grpc.AuthorizationStub]:
    """Run a reference authorizer; wait for its "listening" line (connecting earlier would
    put the channel into reconnect backoff), then hand out a stub."""
    process = subprocess.Popen(
        [sys.executable, *argv, "--port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        ready, _, _ = select.select([process.stdout], [], [], 15)
        line = process.stdout.readline() if ready else b""
        if b"listening" not in line:
            process.kill()
            _, err = process.communicate(timeout=10)
            pytest.fail(f"{argv[0]} did not start:\n{err.decode(errors='replace')}")
        yield external_auth_pb2_grpc.AuthorizationStub(channel)
    finally:
        channel.close()
        process.terminate()
        try:
            process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


@pytest.fixture
def donothing() -> Iterator[external_auth_pb2_grpc.AuthorizationStub]:
    yield from serve([str(BENCHMARKS / "baselines" / "donothing.py")], free_ports(1)[0])


@pytest.fixture
def naive(
    tmp_path: Path, local_issuer: LocalIssuer
) -> Iterator[external_auth_pb2_grpc.AuthorizationStub]:
    jwks = local_issuer.write_jwks(tmp_path / "jwks.json")
    feed = tmp_path / "users.json"
    feed.write_text(
        json.dumps(
            {
                "version": "1",
                "users": {
                    "alice": {"permissions": ["tickets:read", "tickets:write"]},
                    "bob": {"permissions": ["tickets:read"]},
                    "mallory": {"permissions": ["tickets:*"], "disabled": True},
                },
            }
        )
    )
    argv = [str(BENCHMARKS / "baselines" / "naive.py"), "--jwks", str(jwks)]
    argv += ["--feed", str(feed), "--issuer", ISSUER, "--audience", AUDIENCE]
    yield from serve(argv, free_ports(1)[0])


def test_donothing_allows_anything(donothing: external_auth_pb2_grpc.AuthorizationStub) -> None:
    answer = donothing.Check(check_request("DELETE", "/anything"), timeout=5)
    assert answer.status.code == grpc.StatusCode.OK.value[0]


def test_naive_allows_and_denies(
    naive: external_auth_pb2_grpc.AuthorizationStub, local_issuer: LocalIssuer
) -> None:
    def token(user: str, scope: str, **claims: object) -> str:
        return local_issuer.token(
            sub=user, audience=AUDIENCE, scope=scope, client_id="support-agent", **claims
        )

    def status(request: external_auth_pb2.CheckRequest) -> tuple[int, int]:
        answer = naive.Check(request, timeout=5)
        return answer.status.code, answer.denied_response.status.code

    ok = grpc.StatusCode.OK.value[0]
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED.value[0]
    denied = grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert status(check_request("GET", "/tickets/1", token("alice", "tickets:read"))) == (ok, 0)
    assert status(check_request("POST", "/tickets", token("alice", "tickets:write")))[0] == ok
    # The user lacks the permission, the scope lacks it, no route needs it, a disabled user.
    assert status(check_request("POST", "/tickets", token("bob", "tickets:write"))) == (
        denied,
        403,
    )
    assert status(check_request("POST", "/tickets", token("alice", "tickets:read")))[1] == 403
    assert status(check_request("GET", "/admin", token("alice", "tickets:read")))[1] == 403
    assert status(check_request("GET", "/tickets/1", token("mallory", "tickets:read")))[1] == 403
    # No token, a garbage token, a token for another audience, an expired one.
    assert status(check_request("GET", "/tickets/1")) == (unauthenticated, 401)
    assert status(check_request("GET", "/tickets/1", "not.a.jwt"))[1] == 401
    other = local_issuer.token(sub="alice", audience="https://other.test", scope="tickets:read")
    assert status(check_request("GET", "/tickets/1", other))[1] == 401
    expired = token("alice", "tickets:read", lifetime=60, now=1_000_000_000)
    assert status(check_request("GET", "/tickets/1", expired))[1] == 401


@pytest.mark.e2e
def test_every_case_config_passes_envoy_validate(tmp_path: Path) -> None:
    try:
        envoy = find_envoy()
    except EnvoyNotFound as err:
        if os.environ.get(ENVOY_ENV_VAR):
            pytest.fail(str(err), pytrace=False)
        pytest.skip(str(err))
    written = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_envoy.py"), "--write-configs", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert written.returncode == 0, written.stderr
    paths = [Path(line) for line in written.stdout.split()]
    assert {p.stem for p in paths} == CASES | {"upstream"}
    for path in paths:
        result = subprocess.run(
            [str(envoy), "--mode", "validate", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"{path.name}:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        (["--baseline", "/nonexistent/checkout"], "no extauthz package there"),
        (["--cases", "donothing,extauthz@base"], "needs --baseline DIR"),
    ],
)
def test_the_baseline_case_needs_a_checkout_to_run_from(arguments: list[str], problem: str) -> None:
    refused = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_envoy.py"), *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2
    assert problem in refused.stderr


# --- bench_workers.py --------------------------------------------------------------------

H2LOAD_SUMMARY = """starting benchmark...
spawning thread #0: 16 total client(s). 0 total requests
Warm-up started for thread #0.
progress: 10% done
finished in 5.00s, 2382.60 req/s, 1.10MB/s
requests: 11913 total, 12041 started, 11913 done, 11900 succeeded, 13 failed, 0 errored, 0 timeout
status codes: 11900 2xx, 0 3xx, 0 4xx, 13 5xx
traffic: 5.52MB (5788123) total, 234.15KB (239768) headers (space savings 93.10%), 5.19MB
"""


@pytest.fixture(scope="module")
def bench_workers() -> Any:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_workers as module
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_h2load_summary_is_read_for_answers_failures_and_time(bench_workers: Any) -> None:
    result = bench_workers.parse_h2load(H2LOAD_SUMMARY)

    assert (result.succeeded, result.failed, result.errored) == (11900, 13, 0)
    assert result.status_2xx == 11900
    assert result.seconds == 5.0
    assert result.rps == 2380.0
    in_ms = bench_workers.parse_h2load(H2LOAD_SUMMARY.replace("5.00s", "250.00ms"))
    assert in_ms.seconds == 0.25


def test_h2load_output_without_a_summary_is_an_error(bench_workers: Any) -> None:
    with pytest.raises(bench_workers.BenchError, match="no summary"):
        bench_workers.parse_h2load("connect to 127.0.0.1 port 1 failed: Connection refused\n")


def test_worker_counts_always_compare_with_one_worker(bench_workers: Any) -> None:
    assert bench_workers.parse_workers("4,2") == [1, 2, 4]
    assert bench_workers.parse_workers("1,2,2") == [1, 2]
    for bad in ("0,2", "two", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            bench_workers.parse_workers(bad)


def test_the_check_h2load_sends_is_one_grpc_message_that_extauthz_allows(
    bench_workers: Any, tmp_path: Path
) -> None:
    issuer = LocalIssuer(ISSUER)
    shutil.copytree(ROOT / "deploy" / "extauthz", tmp_path / "policy")
    issuer.write_jwks(tmp_path / "policy" / "keys" / "jwks.json")
    server = Server(load_config(tmp_path / "policy" / "config.yaml"), CollectorRegistry())
    server.handler.decision_log = DecisionLog(io.StringIO())
    server.refresh_feed()
    token = issuer.token(
        sub="alice",
        audience=AUDIENCE,
        scope="tickets:read",
        client_id="support-agent",
        act={"sub": "support-agent"},
    )
    frame = bench_workers.grpc_frame(bench_workers.check_request(token).SerializeToString())

    # The gRPC framing: an uncompressed flag, then the message's length, big-endian.
    assert frame[0] == 0
    assert int.from_bytes(frame[1:5], "big") == len(frame) - 5
    answer = server.handler.check(external_auth_pb2.CheckRequest.FromString(frame[5:]))
    assert answer.status.code == 0  # OK: an allow, as every check of the benchmark must be


def test_stage_means_are_taken_between_two_readings_of_the_histogram(bench_workers: Any) -> None:
    # bench_workers imports bench_envoy, whose stage reading this is.
    bench_envoy = sys.modules["bench_envoy"]
    before = {stage: (1.0, 1000.0) for stage in bench_envoy.STAGES}
    after = {stage: (1.0 + 0.002 * (i + 1), 1100.0) for i, stage in enumerate(bench_envoy.STAGES)}

    means = bench_envoy.stage_means_us(before, after)

    assert means == pytest.approx({"parse": 20.0, "verify": 40.0, "decide": 60.0, "answer": 80.0})
    # An extauthz without the histogram (an older --baseline) reads as zeros: no means.
    zeros = {stage: (0.0, 0.0) for stage in bench_envoy.STAGES}
    assert bench_envoy.stage_means_us(zeros, zeros) is None
