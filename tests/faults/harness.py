"""What the fault, shutdown and overload tests add to ``extauthz.demo.stack.Stack``.

- ``FaultStack``: a Stack that may start before extauthz is ready (keys or feed down at
  start), can SIGKILL or SIGTERM extauthz and start it again on the same ports, and can run a
  second extauthz instance behind the same Envoy cluster (the Envoy config is generated from
  ``deploy/envoy/envoy.yaml`` with a second endpoint, gRPC health checks and retries).
- ``Load``: a bounded HTTP load generator (threads with keep-alive connections) that records
  every answer with its latency.
- Small probes: gRPC health of one instance, Envoy's view of its extauthz hosts.

Everything listens on 127.0.0.1; every loop is bounded by a deadline.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extauthz.demo.stack import (
    RESOURCE_HOST,
    ManagedProcess,
    Stack,
    StackError,
    free_ports,
    http_request,
)

AUTHORIZATION_SERVICE = "envoy.service.auth.v3.Authorization"


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> float:
    """Poll ``condition`` until true; fail after ``timeout`` s. Returns the seconds waited."""
    started = time.monotonic()
    deadline = started + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - started


def ready(http_port: int) -> bool:
    try:
        return http_request(f"http://127.0.0.1:{http_port}/readyz", timeout=1.0).status == 200
    except (OSError, http.client.HTTPException):
        return False


def grpc_health(grpc_port: int, service: str = AUTHORIZATION_SERVICE) -> str:
    """SERVING / NOT_SERVING / ... as the instance reports it, or UNREACHABLE."""
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
        except grpc.RpcError:
            return "UNREACHABLE"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


class HealthWatch:
    """Follows one instance's gRPC health with ``Watch`` and records every status it sends."""

    def __init__(self, grpc_port: int, service: str = AUTHORIZATION_SERVICE) -> None:
        self.statuses: list[str] = []
        self._channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        stub = health_pb2_grpc.HealthStub(self._channel)
        self._stream = stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=30)
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        try:
            for answer in self._stream:
                name = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
                self.statuses.append(str(name))
        except grpc.RpcError:
            self.statuses.append("ENDED")

    def close(self) -> None:
        self._stream.cancel()
        self._thread.join(5)
        self._channel.close()


@dataclass(frozen=True, slots=True)
class Instance:
    """One extauthz process of a FaultStack, and the ports it listens on."""

    name: str
    grpc_port: int
    http_port: int
    config_path: Path


class FaultStack(Stack):
    """A Stack for breaking things on purpose.

    ``wait_extauthz_ready=False`` starts without waiting for extauthz's /readyz (only for its
    /healthz), for a key or feed source that is down at start. ``instances=2`` runs a second
    extauthz behind the same Envoy cluster; then Envoy health-checks both over gRPC and
    retries a check that could not reach one on the other (see ``ROLLING_RESTART_SETTINGS``).
    """

    def __init__(
        self,
        *,
        overrides: Mapping[str, object] | None = None,
        wait_extauthz_ready: bool = True,
        instances: int = 1,
    ) -> None:
        super().__init__(overrides=overrides)
        self.wait_extauthz_ready = wait_extauthz_ready
        self.instance_count = instances
        self.instances: dict[str, Instance] = {}
        self.processes: dict[str, ManagedProcess] = {}
        self._restarts = 0

    # -- start

    def start(self) -> FaultStack:
        super().start()
        first = Instance("a", self.ports.grpc, self.ports.http, self.config_path)
        self.instances["a"] = first
        assert self.extauthz is not None
        self.processes["a"] = self.extauthz
        if self.instance_count == 2:
            grpc_b, http_b = self._second_ports
            config = yaml.safe_load(self.config_path.read_text())
            config["server"]["grpc_listen"] = f"127.0.0.1:{grpc_b}"
            config["server"]["http_listen"] = f"127.0.0.1:{http_b}"
            path = self.config_dir / "config-b.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            self.instances["b"] = Instance("b", grpc_b, http_b, path)
            self.start_instance("b")
            try:
                wait_for(lambda: ready(http_b), "instance b ready", 30)
                wait_for(lambda: self.envoy_healthy_hosts() == 2, "Envoy sees both healthy", 30)
            except AssertionError:
                self.stop()
                raise
        return self

    def _wait_ready(self) -> None:
        if self.wait_extauthz_ready:
            super()._wait_ready()
            return
        assert self.extauthz is not None and self.envoy is not None
        for process, url in (
            (self.extauthz, f"http://127.0.0.1:{self.ports.http}/healthz"),
            (self.envoy, f"http://127.0.0.1:{self.ports.admin}/ready"),
        ):
            deadline = time.monotonic() + self.ready_timeout
            while not _answers_200(url):
                if not process.running:
                    raise StackError(f"{process.name} exited\n{process.tail()}")
                if time.monotonic() > deadline:
                    raise StackError(f"{url} not up\n{process.tail()}")
                time.sleep(0.05)

    def _write_envoy_config(self) -> Path:
        path = super()._write_envoy_config()
        if self.instance_count == 1:
            return path
        self._second_ports = tuple(free_ports(2))
        config = yaml.safe_load(path.read_text())
        edit_for_two_instances(config, self._second_ports[0])
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # -- extauthz processes

    def start_instance(self, name: str) -> ManagedProcess:
        """Start instance ``name`` (again), on its own ports. Each start logs to new files."""
        instance = self.instances[name]
        self._restarts += 1
        process = ManagedProcess(
            f"extauthz-{name}-{self._restarts}",
            [sys.executable, "-m", "extauthz", "serve", "--config", str(instance.config_path)],
            self.workdir,
            cwd=self.workdir,
        )
        self.processes[name] = process
        if name == "a":
            self.extauthz = process
        return process

    def kill_instance(self, name: str) -> None:
        """SIGKILL: no drain, no goodbye."""
        process = self.processes[name].process
        process.kill()
        process.wait(10)

    def stop(self) -> None:
        for name, process in self.processes.items():
            if name != "a":
                process.stop()
        super().stop()

    # -- Envoy's view

    def envoy_stats(self) -> dict[str, int]:
        response = http_request(f"http://127.0.0.1:{self.ports.admin}/stats?format=json")
        stats: dict[str, int] = {}
        for entry in response.json()["stats"]:
            if "value" in entry:
                stats[entry["name"]] = int(entry["value"])
        return stats

    def envoy_healthy_hosts(self) -> int:
        """Hosts of the extauthz cluster that Envoy considers healthy."""
        response = http_request(f"http://127.0.0.1:{self.ports.admin}/clusters?format=json")
        for cluster in response.json().get("cluster_statuses", []):
            if cluster["name"] != "extauthz":
                continue
            healthy = 0
            for host in cluster.get("host_statuses", []):
                flags = host.get("health_status", {})
                if flags.get("eds_health_status") == "HEALTHY" and not any(
                    flags.get(f) for f in ("failed_active_health_check", "failed_outlier_check")
                ):
                    healthy += 1
            return healthy
        return 0


def _answers_200(url: str) -> bool:
    try:
        return http_request(url, timeout=1.0).status == 200
    except (OSError, http.client.HTTPException):
        return False


# Envoy settings for more than one extauthz behind one cluster, so an instance can be
# restarted without a single request failing:
# - active gRPC health checks of envoy.service.auth.v3.Authorization: an instance that turns
#   NOT_SERVING on SIGTERM is taken out of the rotation within one interval;
# - a retry policy on the ext_authz gRPC call: a check that could not reach an instance
#   (connection refused, stream refused or reset, UNAVAILABLE while it drains) is tried once
#   more on another host, within the same 1 s timeout.
ROLLING_RESTART_SETTINGS: dict[str, Any] = {
    "health_checks": [
        {
            "timeout": "0.5s",
            "interval": "0.1s",
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
            "no_traffic_interval": "0.1s",
            "grpc_health_check": {"service_name": AUTHORIZATION_SERVICE},
        }
    ],
    # Retries are bounded by the cluster's circuit breaker (default: 3 at once); a
    # restart makes every in-flight check retry together, so allow more.
    "circuit_breakers": {"thresholds": [{"max_retries": 1000}]},
    # Never route to an instance the health check took out, even with half of them out.
    "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
    "retry_policy": {
        "retry_on": "connect-failure,refused-stream,reset,gateway-error,cancelled,internal,"
        "unavailable,resource-exhausted",
        "num_retries": 2,
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts"
                    ".v3.PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": 3,
        "retry_back_off": {"base_interval": "0.01s", "max_interval": "0.05s"},
    },
}


def edit_for_two_instances(config: dict[str, Any], second_grpc_port: int) -> None:
    """Add a second endpoint to the extauthz cluster of an Envoy config (already rewritten by
    Stack for the first), with ROLLING_RESTART_SETTINGS."""
    clusters = config["static_resources"]["clusters"]
    cluster = next(c for c in clusters if c["name"] == "extauthz")
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    second = json.loads(json.dumps(endpoints[0]))
    second["endpoint"]["address"]["socket_address"]["port_value"] = second_grpc_port
    endpoints.append(second)
    cluster["health_checks"] = ROLLING_RESTART_SETTINGS["health_checks"]
    cluster["circuit_breakers"] = ROLLING_RESTART_SETTINGS["circuit_breakers"]
    cluster["common_lb_config"] = ROLLING_RESTART_SETTINGS["common_lb_config"]
    ext_authz = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]["http_filters"][0]["typed_config"]
    ext_authz["grpc_service"]["retry_policy"] = ROLLING_RESTART_SETTINGS["retry_policy"]


# --------------------------------------------------------------------------- load


@dataclass(frozen=True, slots=True)
class Answer:
    index: int  # the i given to send(i)
    started: float  # monotonic
    latency: float
    status: int  # 0: no HTTP answer at all (connection failed)
    expected: int
    reached_upstream: bool
    decision_id: str | None


Send = Callable[[int], tuple[str, str, str, int]]  # i -> (method, path, token, expected)


class Load:
    """``threads`` clients, each with its own keep-alive connection to Envoy, sending
    ``send(i)`` requests back to back (or at ``rate`` per second in total) until stopped,
    ``max_requests`` is reached or ``max_seconds`` pass."""

    def __init__(
        self,
        port: int,
        send: Send,
        *,
        threads: int = 4,
        rate: float | None = None,
        max_requests: int = 200_000,
        max_seconds: float = 120.0,
        timeout: float = 5.0,
    ) -> None:
        self.port = port
        self.send = send
        self.rate = rate
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.timeout = timeout
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._count = 0
        self._threads = [
            threading.Thread(target=self._run, args=(n, threads), daemon=True)
            for n in range(threads)
        ]

    def __enter__(self) -> Load:
        self._began = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)

    def _next(self) -> int | None:
        with self._lock:
            if self._count >= self.max_requests:
                return None
            self._count += 1
            return self._count - 1

    def _run(self, n: int, of: int) -> None:
        connection: http.client.HTTPConnection | None = None
        deadline = self._began + self.max_seconds
        interval = of / self.rate if self.rate else 0.0
        next_at = self._began + (interval * n / of if interval else 0.0)
        while not self._stop.is_set() and time.monotonic() < deadline:
            if interval:
                delay = next_at - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                next_at += interval
            i = self._next()
            if i is None:
                break
            method, path, token, expected = self.send(i)
            started = time.monotonic()
            status, upstream, decision_id = 0, False, None
            try:
                if connection is None:
                    connection = http.client.HTTPConnection(
                        "127.0.0.1", self.port, timeout=self.timeout
                    )
                connection.request(
                    method,
                    path,
                    body=b"{}" if method == "POST" else None,
                    headers={"Host": RESOURCE_HOST, "Authorization": f"Bearer {token}"},
                )
                response = connection.getresponse()
                body = response.read()
                status = response.status
                upstream = response.getheader("x-echo-upstream") == "1"
                decision_id = _decision_id(response, body, upstream)
                if response.getheader("connection", "").lower() == "close":
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException):
                if connection is not None:
                    connection.close()
                connection = None
            answer = Answer(
                i, started, time.monotonic() - started, status, expected, upstream, decision_id
            )
            with self._lock:
                self.answers.append(answer)
        if connection is not None:
            connection.close()

    # -- reading the results

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        target = len(self.snapshot()) + count
        wait_for(lambda: len(self.snapshot()) >= target, f"{count} more answers", timeout)

    def wrong(self) -> list[Answer]:
        return [a for a in self.snapshot() if a.status != a.expected]


def _decision_id(response: http.client.HTTPResponse, body: bytes, upstream: bool) -> str | None:
    if not upstream:
        return response.getheader("x-extauthz-decision-id")
    try:
        headers = json.loads(body)["headers"]
    except (ValueError, KeyError, TypeError):
        return None
    value = headers.get("x-extauthz-decision-id") if isinstance(headers, dict) else None
    return value if isinstance(value, str) else None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextmanager
def running(stack: FaultStack) -> Iterator[FaultStack]:
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
