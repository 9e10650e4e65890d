"""``extauthz serve --workers N`` (extauthz/workers.py): real processes on one port."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc
from helpers import AUDIENCE, bearer, check_request, make_deployment
from prometheus_client.parser import text_string_to_metric_families

from extauthz.demo.issuer import LocalIssuer
from extauthz.demo.stack import free_ports


class Running:
    def __init__(self, process: subprocess.Popen[str], grpc_port: int, http_port: int) -> None:
        self.process = process
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.logs: list[dict[str, Any]] = []
        self.worker_pids: list[int] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            # Every line extauthz writes to stderr is JSON; anything else fails the test.
            self.logs.append(json.loads(line))

    def wait_for(self, msg: str, count: int = 1, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in list(self.logs) if r.get("msg") == msg]
            if len(found) >= count:
                return found
            assert time.monotonic() < deadline, f"no {count} x {msg!r} in {self.logs}"
            time.sleep(0.02)

    def metric(self, name: str, **labels: str) -> float:
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[tuple[Running, LocalIssuer]]:
    issuer = LocalIssuer()
    grpc_port, http_port = free_ports(2)

    def edit(d: dict[str, Any]) -> None:
        d["server"] = {
            "grpc_listen": f"127.0.0.1:{grpc_port}",
            "http_listen": f"127.0.0.1:{http_port}",
            "shutdown_grace": "2s",
        }

    path = make_deployment(tmp_path, issuer, edit)
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    process = subprocess.Popen(
        [sys.executable, "-m", "extauthz", "serve", "--config", str(path), "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    running = Running(process, grpc_port, http_port)
    try:
        yield running, issuer
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in running.worker_pids:
            _kill_quietly(pid)
        assert process.stderr is not None
        process.stderr.close()


def _kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def checks(running: Running, token: str, count: int, channels: int = 8) -> list[int]:
    """``count`` checks over ``channels`` separate connections; the gRPC status codes."""
    codes: list[int] = []
    request = check_request(headers=bearer(token))
    for c in range(channels):
        options = [("grpc.use_local_subchannel_pool", 1), ("grpc.channel_id", c)]
        with grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}", options=options) as ch:
            stub = external_auth_pb2_grpc.AuthorizationStub(ch)
            for _ in range(count // channels):
                codes.append(stub.Check(request, timeout=5).status.code)
    return codes


def test_workers_share_the_port_and_their_metrics_add_up(
    workers: tuple[Running, LocalIssuer],
) -> None:
    running, issuer = workers
    started = running.wait_for("workers started")[0]
    running.worker_pids = started["pids"]
    assert len(started["pids"]) == 2
    running.wait_for("serving", count=2)
    token = issuer.token(
        sub="alice", audience=AUDIENCE, scope="tickets:read", client_id="support-agent"
    )
    assert checks(running, token, 40) == [0] * 40
    # Each worker adds its checks to the shared files once a second.
    deadline = time.monotonic() + 5.0
    while running.metric("extauthz_check_duration_seconds_count") < 40.0:
        assert time.monotonic() < deadline, "the workers' checks never reached /metrics"
        time.sleep(0.1)
    # Whichever worker answers the scrape, it reports the checks of both.
    for _ in range(4):
        allowed = running.metric("extauthz_decisions_total", decision="allow", reason="allowed")
        assert allowed == 40.0
    assert running.metric("extauthz_feed_users") == 3.0
    assert running.metric("extauthz_check_duration_seconds_count") == 40.0


def test_a_worker_that_dies_is_replaced_and_a_sigterm_stops_them_all(
    workers: tuple[Running, LocalIssuer],
) -> None:
    running, issuer = workers
    pids = running.wait_for("workers started")[0]["pids"]
    running.worker_pids = pids
    running.wait_for("serving", count=2)
    os.kill(pids[0], signal.SIGKILL)
    replaced = running.wait_for("worker exited; starting another")[0]
    assert replaced["pid"] == pids[0]
    running.wait_for("serving", count=3)
    token = issuer.token(
        sub="alice", audience=AUDIENCE, scope="tickets:read", client_id="support-agent"
    )
    assert checks(running, token, 16) == [0] * 16
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(timeout=20) == 0
    running.wait_for("workers stopped")
    stopped = running.wait_for("stopped", count=2)
    assert len(stopped) >= 2


def test_workers_need_fixed_ports(tmp_path: Path) -> None:
    issuer = LocalIssuer()

    def edit(d: dict[str, Any]) -> None:
        d["server"] = {"grpc_listen": "127.0.0.1:0", "http_listen": "127.0.0.1:0"}

    path = make_deployment(tmp_path, issuer, edit)
    result = subprocess.run(
        [sys.executable, "-m", "extauthz", "serve", "--config", str(path), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert (
        "server.grpc_listen: workers share their ports: give a fixed port, not 0" in result.stderr
    )
