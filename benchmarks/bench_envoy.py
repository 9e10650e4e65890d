"""Through a real Envoy: requests/s, latency and authorizer CPU per Check, side by side.

Cases, each a front Envoy (deploy/envoy/envoy.yaml, ports rewritten) in front of the same
upstream (a second Envoy answering 200 itself), all on 127.0.0.1:

    envoy-noauth      no authorization filter
    envoy-jwt_authn   Envoy's native C++ jwt_authn, same issuer/audience, JWKS inline
    donothing         ext_authz → benchmarks/baselines/donothing.py (grpc.aio, returns OK)
    naive             ext_authz → benchmarks/baselines/naive.py (grpc.aio + jwt.decode + dict)
    extauthz          ext_authz → `extauthz serve`, deploy/extauthz/config.yaml as shipped

Each case runs with one repeated token and with a different token on every request (a
wrk Lua script rotating the Authorization header through a file of pre-minted tokens).
The cases alternate over several rounds, since a shared machine drifts; every round
starts the authorizers afresh, so no token of the distinct set was seen before by the
process that checks it. Per run: wrk's requests/s and p50/p99, the non-2xx count from
Envoy's own counters, and the authorizer's CPU per Check = (utime + stime of its process,
from /proc/PID/stat) / (the Checks Envoy sent it, from Envoy's ext_authz counters). The
unloaded p50 comes from single requests sent one at a time to every case in turn (the
order shuffled each cycle), so that a drift of the machine reaches all cases alike. Prints
a table of medians over the rounds and the ratios of issue 5. A benchmark, not a test.

    make bench          # or: .venv/bin/python benchmarks/bench_envoy.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import envoy_configs
import yaml
from prometheus_client.parser import text_string_to_metric_families

from extauthz.demo.issuer import LocalIssuer
from extauthz.demo.stack import find_envoy, free_ports, http_request

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
LUA = BENCH / "wrk_tokens.lua"
HOST = "tickets.example.test"
AUDIENCE = "https://tickets.example.test"
ISSUER = "https://idp.example.test"
PATH = "/tickets/42"  # GET: tickets:read, which alice holds and support-agent may use
TOKEN_LIFETIME = 1800  # under the example policy's max_lifetime of 1 h
READY_TIMEOUT = 30.0
UNLOADED_WARM_UP = 10  # cycles of unloaded requests not counted: connections, caches
WORKER_METRICS_FLUSH = 1.2  # seconds: a worker's metrics reach the shared files once a second
MODES = ("repeated", "distinct")


@dataclass(frozen=True)
class Case:
    name: str
    filter: str  # one of envoy_configs.FILTERS
    authorizer: str | None  # "donothing", "naive", "extauthz" or None
    # What a request without a token gets: proof the authorization is in the path.
    no_token_status: int
    workers: int = 1  # extauthz serve --workers
    # Another checkout to run extauthz from (--baseline), instead of this one.
    tree: Path | None = None


CASES = (
    Case("envoy-noauth", "none", None, 200),
    Case("envoy-jwt_authn", "jwt_authn", None, 401),
    Case("donothing", "ext_authz", "donothing", 200),
    Case("naive", "ext_authz", "naive", 401),
    Case("extauthz", "ext_authz", "extauthz", 401),
)
# Not run unless named in --cases: extauthz with two worker processes on one port.
EXTRA_CASES = (Case("extauthz-w2", "ext_authz", "extauthz", 401, workers=2),)
CASE_OF_NAME = {c.name: c for c in CASES + EXTRA_CASES}
# With --baseline DIR: extauthz from that checkout (an earlier commit, say), side by side.
BASELINE_CASE = "extauthz@base"


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------- processes


class Proc:
    """A child in its own session (a Ctrl-C here reaches it only through ``stop``),
    stopped by its PID: SIGTERM, then SIGKILL after a grace period."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        logdir: Path,
        *,
        stdout: Any,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.stderr_path = logdir / f"{name}.stderr"
        with self.stderr_path.open("ab") as err:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=err,
                cwd=logdir,
                start_new_session=True,
                env=env,
            )
        self.pid = self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen.wait()

    def tail(self, lines: int = 15) -> str:
        text = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        return "\n".join(f"    {line}" for line in text.splitlines()[-lines:]) or "    (empty)"

    def cpu_seconds(self) -> float:
        """utime + stime so far of the process and its descendants (``--workers``), all
        threads. A descendant that exited in between is not counted: none should."""
        total, pending, seen = 0, [self.pid], set()
        while pending:
            pid = pending.pop()
            if pid in seen:
                continue
            seen.add(pid)
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as children:
                        pending += [int(c) for c in children.read().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
        return total / os.sysconf("SC_CLK_TCK")


class LineCounter:
    """Drains a child's stdout (the decision log) as fast as it comes, counting lines;
    keeps the last line, to show what the log says."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines = 0
        self._tail = b""
        self._stream = stream
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while chunk := self._stream.read1(1 << 16):  # type: ignore[attr-defined]
            self.lines += chunk.count(b"\n")
            self._tail = (self._tail + chunk)[-8192:]

    @property
    def last(self) -> bytes:
        """The last complete line read so far."""
        complete = self._tail.rsplit(b"\n", 1)[0]
        return complete.rsplit(b"\n", 1)[-1]


def wait_until(what: str, ready: Callable[[], bool], procs: Sequence[Proc]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready():
        for proc in procs:
            if not proc.running:
                raise BenchError(
                    f"{proc.name} exited with code {proc.popen.returncode} while waiting for "
                    f"{what}\n  command: {' '.join(proc.argv)}\n{proc.tail()}"
                )
        if time.monotonic() > deadline:
            tails = "\n".join(f"  --- {p.name}\n{p.tail()}" for p in procs)
            raise BenchError(f"{what}: not ready after {READY_TIMEOUT:g} s\n{tails}")
        time.sleep(0.05)


def http_ok(url: str) -> bool:
    try:
        return http_request(url, timeout=1.0).status == 200
    except OSError:
        return False


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start_envoy(
    binary: Path, name: str, config: dict[str, Any], workdir: Path, threads: int
) -> Proc:
    path = envoy_configs.write(config, workdir / f"{name}.yaml")
    argv = [str(binary), "-c", str(path), "--use-dynamic-base-id"]
    argv += ["--concurrency", str(threads), "-l", "warning"]
    # stdout is the access log (one JSON line per request): kept as configured, discarded.
    return Proc(name, argv, workdir, stdout=subprocess.DEVNULL)


# --------------------------------------------------------------------------- Envoy stats


def envoy_counters(admin: int) -> dict[str, int]:
    answer = http_request(f"http://127.0.0.1:{admin}/stats?usedonly&filter=^http\\.ingress_http\\.")
    counters: dict[str, int] = {}
    for line in answer.body.decode().splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            counters[name.removeprefix("http.ingress_http.")] = int(value)
    return counters


STAGES = ("parse", "verify", "decide", "answer")


def extauthz_counts(http_port: int) -> tuple[float, dict[str, tuple[float, float]]]:
    """extauthz's decisions so far, and per stage the (sum of seconds, count) of its
    ``extauthz_check_stage_seconds``."""
    text = http_request(f"http://127.0.0.1:{http_port}/metrics").body.decode()
    decisions = 0.0
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "extauthz_decisions_total":
                decisions += sample.value
            elif sample.name == "extauthz_check_stage_seconds_sum":
                sums[sample.labels["stage"]] = sample.value
            elif sample.name == "extauthz_check_stage_seconds_count":
                counts[sample.labels["stage"]] = sample.value
    # An extauthz from before the stage histogram (--baseline) has none: zeros.
    return decisions, {st: (sums.get(st, 0.0), counts.get(st, 0.0)) for st in STAGES}


def stage_means_us(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float] | None:
    """Mean µs per check in each stage between two readings; None if nothing was counted."""
    means = {}
    for stage in STAGES:
        seconds = after[stage][0] - before[stage][0]
        count = after[stage][1] - before[stage][1]
        if count <= 0:
            return None
        means[stage] = seconds / count * 1e6
    return means


# --------------------------------------------------------------------------- load


def ensure_tool(command: str, package: str) -> str:
    """The path of ``command``, installing Debian's ``package`` with apt-get first when it
    is missing (as root only)."""
    found = shutil.which(command)
    if found:
        return found
    print(f"{command} not found: installing it with apt-get (Debian's {package}) ...", flush=True)
    if os.geteuid() != 0:
        raise BenchError(
            f"{command} is missing and this is not root: run `sudo apt-get install {package}`"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
    ):
        subprocess.run(argv, check=True, env=env, timeout=300, stdout=subprocess.DEVNULL)
    found = shutil.which(command)
    if not found:
        raise BenchError(f"apt-get install {package} did not put {command} on PATH")
    print(f"installed {found}", flush=True)
    return found


def ensure_wrk() -> str:
    return ensure_tool("wrk", "wrk")


@dataclass
class WrkResult:
    requests: int
    duration_us: int
    sent: int
    tokens: int
    p50_us: int
    p90_us: int
    p99_us: int
    mean_us: float
    max_us: int
    errors: dict[str, int]

    @property
    def rps(self) -> float:
        return self.requests / (self.duration_us / 1e6)

    @property
    def socket_errors(self) -> int:
        return sum(v for k, v in self.errors.items() if k != "status")


def run_wrk(
    wrk: str,
    port: int,
    tokens: Path,
    first: int,
    *,
    seconds: int,
    connections: int,
    threads: int,
) -> WrkResult:
    threads = min(threads, connections)
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    argv += ["--timeout", "5s", "-s", str(LUA), f"http://127.0.0.1:{port}{PATH}"]
    argv += ["--", str(tokens), str(first), HOST, PATH, str(threads)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("WRKJSON "):
            return WrkResult(**json.loads(line.removeprefix("WRKJSON ")))
    raise BenchError(f"wrk failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")


# --------------------------------------------------------------------------- the setup


@dataclass
class Running:
    """One case: its front Envoy and, for ext_authz cases, its authorizer."""

    case: Case
    envoy: Proc
    admin: int
    port: int
    authorizer_port: int | None = None
    http_port: int | None = None  # extauthz's /metrics
    authorizer: Proc | None = None
    decision_log: LineCounter | None = None
    # Where the next distinct token comes from, per authorizer process.
    cursor: int = 0


@dataclass
class Run:
    round: int
    case: str
    mode: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    checks: int | None
    authorizer_cpu_us_per_check: float | None
    envoy_cpu_us_per_request: float
    machine_busy_pct: float
    unloaded_p50_ms: float
    unloaded_requests: int
    decisions_metric: float | None = None
    # extauthz's own mean µs per check in each stage (extauthz_check_stage_seconds).
    stage_us: dict[str, float] | None = None
    decision_lines: int | None = None
    tokens_reused: int = 0
    notes: list[str] = field(default_factory=list)


def machine_busy() -> tuple[int, int]:
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.envoy_binary = Path(args.envoy) if args.envoy else find_envoy()
        self.cases = [
            Case(BASELINE_CASE, "ext_authz", "extauthz", 401, tree=args.baseline)
            if n == BASELINE_CASE
            else CASE_OF_NAME[n]
            for n in args.cases
        ]
        self.issuer = LocalIssuer(ISSUER)
        self.policy = workdir / "policy"
        self.procs: list[Proc] = []
        self.running: list[Running] = []
        self.upstream_port = 0
        self.distinct_tokens: list[str] = []

    # -- tokens and configs

    def token(self) -> str:
        return self.issuer.token(
            sub="alice",
            audience=AUDIENCE,
            scope="tickets:read",
            client_id="support-agent",
            act={"sub": "support-agent"},
            lifetime=TOKEN_LIFETIME,
        )

    def prepare(self) -> None:
        shutil.copytree(REPO / "deploy" / "extauthz", self.policy)
        self.issuer.write_jwks(self.policy / "keys" / "jwks.json")
        started = time.perf_counter()
        self.repeated = self.workdir / "token-repeated.txt"
        self.repeated.write_text(self.token() + "\n")
        self.distinct = self.workdir / "tokens-distinct.txt"
        with self.distinct.open("w") as out:
            for _ in range(self.args.tokens):
                out.write(self.token() + "\n")
        self.distinct_tokens = self.distinct.read_text().split()
        print(
            f"minted {self.args.tokens:,} distinct RS256 tokens "
            f"in {time.perf_counter() - started:.1f} s",
            flush=True,
        )

    def front_config(self, case: Case, run: Running) -> dict[str, Any]:
        return envoy_configs.front_config(
            case.filter,
            listen=run.port,
            admin=run.admin,
            upstream=self.upstream_port,
            authorizer=run.authorizer_port,
            jwks=self.issuer.jwks(),
            issuer=ISSUER,
            audience=AUDIENCE,
        )

    def extauthz_config(self, name: str, grpc_port: int, http_port: int) -> Path:
        config = yaml.safe_load((self.policy / "config.yaml").read_text())
        config["server"]["grpc_listen"] = f"127.0.0.1:{grpc_port}"
        config["server"]["http_listen"] = f"127.0.0.1:{http_port}"
        path = self.policy / f"config-{name}.yaml"  # one per process: it may reload
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # -- processes

    def start(self) -> None:
        threads = self.args.envoy_concurrency
        # All in one call: ports freed by one call may come back from the next.
        ports = free_ports(2 + 4 * len(self.cases))
        up_port, up_admin = ports[:2]
        self.upstream_port = up_port
        upstream = start_envoy(
            self.envoy_binary,
            "upstream",
            envoy_configs.upstream_config(listen=up_port, admin=up_admin),
            self.workdir,
            threads,
        )
        self.procs.append(upstream)
        for index, case in enumerate(self.cases):
            port, admin, authorizer, http = ports[2 + 4 * index : 6 + 4 * index]
            run = Running(case, upstream, admin, port)
            if case.authorizer is not None:
                run.authorizer_port, run.http_port = authorizer, http
            run.envoy = start_envoy(
                self.envoy_binary, case.name, self.front_config(case, run), self.workdir, threads
            )
            self.procs.append(run.envoy)
            self.running.append(run)
        wait_until(
            "upstream Envoy", lambda: http_ok(f"http://127.0.0.1:{up_admin}/ready"), [upstream]
        )
        for run in self.running:
            wait_until(
                f"Envoy of {run.case.name}",
                lambda r=run: http_ok(f"http://127.0.0.1:{r.admin}/ready"),  # type: ignore[misc]
                [run.envoy],
            )

    def start_authorizers(self, round_: int) -> None:
        """Stop the authorizers of the previous round (if any) and start fresh ones."""
        for run in self.running:
            if run.authorizer is not None:
                run.authorizer.stop()
                self.procs.remove(run.authorizer)
                run.authorizer = None
        for run in self.running:
            if run.case.authorizer is None:
                continue
            assert run.authorizer_port is not None and run.http_port is not None
            port = str(run.authorizer_port)
            name = f"{run.case.name}-{round_}"
            if run.case.authorizer == "donothing":
                argv = [sys.executable, str(BENCH / "baselines/donothing.py"), "--port", port]
            elif run.case.authorizer == "naive":
                argv = [sys.executable, str(BENCH / "baselines/naive.py"), "--port", port]
                argv += ["--jwks", str(self.policy / "keys/jwks.json")]
                argv += ["--feed", str(self.policy / "feed/users.json")]
                argv += ["--issuer", ISSUER, "--audience", AUDIENCE]
            else:
                config = self.extauthz_config(name, run.authorizer_port, run.http_port)
                argv = [sys.executable, "-m", "extauthz", "serve", "--config", str(config)]
                if run.case.workers > 1:
                    argv += ["--workers", str(run.case.workers)]
            env = None
            if run.case.tree is not None:
                # Its own package first on the path: `-m extauthz` is that checkout's.
                env = {**os.environ, "PYTHONPATH": str(run.case.tree)}
            proc = Proc(name, argv, self.workdir, stdout=subprocess.PIPE, env=env)
            assert proc.popen.stdout is not None
            run.decision_log = LineCounter(proc.popen.stdout)
            run.authorizer = proc
            run.cursor = 0
            self.procs.append(proc)
        for run in self.running:
            started = run.authorizer
            if started is None:
                continue
            if run.case.authorizer == "extauthz":
                url = f"http://127.0.0.1:{run.http_port}/readyz"
                wait_until(f"{started.name} /readyz", lambda u=url: http_ok(u), [started])  # type: ignore[misc]
            else:
                listening = run.authorizer_port
                assert listening is not None
                wait_until(
                    f"{started.name} port",
                    lambda p=listening: accepts(p),  # type: ignore[misc]
                    [started],
                )

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    # -- checks and runs

    def sanity(self, run: Running, token: str) -> None:
        """Wait until an allowed request passes through this case, then check that a
        request without a token gets what this case's authorization says."""
        url = f"http://127.0.0.1:{run.port}{PATH}"
        allowed = {"Host": HOST, "Authorization": f"Bearer {token}"}
        procs = [run.envoy] + ([run.authorizer] if run.authorizer else [])

        def passes() -> bool:
            try:
                return http_request(url, headers=allowed, timeout=2.0).status == 200
            except OSError:
                return False

        wait_until(f"{run.case.name}: an allowed request answered 200", passes, procs)
        status = http_request(url, headers={"Host": HOST}, timeout=2.0).status
        if status != run.case.no_token_status:
            raise BenchError(
                f"{run.case.name}: a request without a token got {status}, "
                f"expected {run.case.no_token_status}: the authorization is not what it seems"
            )

    def warm_up(self, run: Running) -> None:
        run_wrk(self.wrk, run.port, self.repeated, 0, seconds=1, connections=4, threads=1)

    def unloaded(self, mode: str, round_: int) -> dict[str, list[float]]:
        """Each case's latencies, in ms, for requests sent one at a time: one to every case
        in a shuffled order, then again, ``--unloaded-requests`` times. Distinct tokens
        come from each authorizer's own cursor, like the loaded runs'."""
        distinct = self.distinct_tokens if mode == "distinct" else None
        repeated = self.repeated.read_text().strip()
        connections = {
            run.case.name: http.client.HTTPConnection("127.0.0.1", run.port, timeout=5)
            for run in self.running
        }
        latencies: dict[str, list[float]] = {name: [] for name in connections}
        cycles = random.Random(f"{mode}-{round_}")
        try:
            for cycle in range(UNLOADED_WARM_UP + self.args.unloaded_requests):
                order = list(self.running)
                cycles.shuffle(order)
                for run in order:
                    token = repeated
                    if distinct is not None:
                        token = distinct[run.cursor % len(distinct)]
                        run.cursor += 1
                    connection = connections[run.case.name]
                    started = time.perf_counter()
                    connection.request(
                        "GET", PATH, headers={"Host": HOST, "Authorization": f"Bearer {token}"}
                    )
                    answer = connection.getresponse()
                    answer.read()
                    elapsed = time.perf_counter() - started
                    if answer.status != 200:
                        raise BenchError(
                            f"{run.case.name}: an unloaded request got {answer.status}"
                        )
                    if cycle >= UNLOADED_WARM_UP:
                        latencies[run.case.name].append(elapsed * 1000)
        except OSError as err:
            raise BenchError(f"unloaded requests failed: {err}") from err
        finally:
            for connection in connections.values():
                connection.close()
        return latencies

    def measure(self, run: Running, mode: str, round_: int, unloaded_ms: Sequence[float]) -> Run:
        args = self.args
        tokens = self.repeated if mode == "repeated" else self.distinct
        before = self._snapshot(run)
        loaded = run_wrk(
            self.wrk,
            run.port,
            tokens,
            run.cursor if mode == "distinct" else 0,
            seconds=args.seconds,
            connections=args.connections,
            threads=args.wrk_threads,
        )
        after = self._snapshot(run)
        reused = 0
        if mode == "distinct":
            run.cursor += loaded.sent
            # Only extauthz might remember a token (a verification cache); the baselines
            # verify every request anew or not at all.
            if run.case.authorizer == "extauthz":
                reused = max(0, run.cursor - args.tokens)
        counters = {k: after["envoy"][k] - before["envoy"].get(k, 0) for k in after["envoy"]}
        completed = counters.get("downstream_rq_completed", 0)
        non_2xx = completed - counters.get("downstream_rq_2xx", 0)
        checks = None
        cpu_per_check = None
        if run.case.authorizer is not None:
            checks = sum(counters.get(f"ext_authz.{k}", 0) for k in ("ok", "denied", "error"))
            cpu = after["authorizer_cpu"] - before["authorizer_cpu"]
            cpu_per_check = cpu / checks * 1e6 if checks else None
        envoy_cpu = after["envoy_cpu"] - before["envoy_cpu"]
        busy = after["busy"][0] - before["busy"][0]
        total = after["busy"][1] - before["busy"][1]
        result = Run(
            round=round_,
            case=run.case.name,
            mode=mode,
            rps=loaded.rps,
            p50_ms=loaded.p50_us / 1000,
            p99_ms=loaded.p99_us / 1000,
            requests=loaded.requests,
            non_2xx=non_2xx,
            socket_errors=loaded.socket_errors,
            checks=checks,
            authorizer_cpu_us_per_check=cpu_per_check,
            envoy_cpu_us_per_request=envoy_cpu / completed * 1e6 if completed else 0.0,
            machine_busy_pct=100.0 * busy / total if total else 0.0,
            unloaded_p50_ms=statistics.median(unloaded_ms),
            unloaded_requests=len(unloaded_ms),
            tokens_reused=reused,
        )
        if run.case.authorizer == "extauthz":
            result.decisions_metric = after["decisions"] - before["decisions"]
            result.stage_us = stage_means_us(before["stages"], after["stages"])
            result.decision_lines = after["lines"] - before["lines"]
            if checks and abs(result.decisions_metric - checks) > max(2, 0.01 * checks):
                result.notes.append(
                    f"extauthz_decisions_total grew by {result.decisions_metric:.0f}, "
                    f"Envoy sent {checks} checks"
                )
        if non_2xx or loaded.errors["status"] or loaded.socket_errors:
            result.notes.append(
                f"ERRORS: {non_2xx} non-2xx answers (Envoy), {loaded.errors['status']} "
                f"(wrk), socket errors {loaded.errors}"
            )
        if reused:
            result.notes.append(
                f"{reused} requests reused a token this extauthz process had seen (a cache "
                "could have answered them): raise --tokens"
            )
        return result

    def _snapshot(self, run: Running) -> dict[str, Any]:
        try:
            return self._read_counters(run)
        except OSError as err:
            procs = [run.envoy] + ([run.authorizer] if run.authorizer else [])
            tails = "\n".join(f"  --- {p.name}\n{p.tail()}" for p in procs)
            raise BenchError(f"{run.case.name}: cannot read counters ({err})\n{tails}") from err

    def _read_counters(self, run: Running) -> dict[str, Any]:
        snap: dict[str, Any] = {
            "envoy": envoy_counters(run.admin),
            "envoy_cpu": run.envoy.cpu_seconds(),
            "busy": machine_busy(),
        }
        if run.authorizer is not None:
            snap["authorizer_cpu"] = run.authorizer.cpu_seconds()
        if run.case.authorizer == "extauthz":
            assert run.http_port is not None and run.decision_log is not None
            if run.case.workers > 1:
                # Workers add their checks to the shared metric files once a second; the
                # CPU figures above are read before this wait.
                time.sleep(WORKER_METRICS_FLUSH)
            snap["decisions"], snap["stages"] = extauthz_counts(run.http_port)
            snap["lines"] = run.decision_log.lines
        return snap

    def run(self) -> list[Run]:
        self.wrk = ensure_wrk()
        self.prepare()
        self.start()
        results: list[Run] = []
        for round_ in range(1, self.args.rounds + 1):
            self.start_authorizers(round_)
            repeated_token = self.repeated.read_text().strip()
            for run in self.running:
                if round_ == 1 or run.authorizer is not None:
                    self.sanity(run, repeated_token)
                    self.warm_up(run)
            # Alternate the order too: odd rounds forwards, even rounds backwards.
            order = self.running if round_ % 2 else list(reversed(self.running))
            modes = MODES if round_ % 2 else tuple(reversed(MODES))
            for mode in modes:
                unloaded = self.unloaded(mode, round_)
                for run in order:
                    result = self.measure(run, mode, round_, unloaded[run.case.name])
                    results.append(result)
                    print(progress_line(result), flush=True)
                    for note in result.notes:
                        print(f"    !! {note}", flush=True)
        for run in self.running:
            if run.decision_log is not None and run.case.authorizer == "extauthz":
                last = run.decision_log.last.decode(errors="replace")
                print(f"\nlast extauthz decision line: {last[:300]}")
        return results


# --------------------------------------------------------------------------- reporting


def progress_line(r: Run) -> str:
    cpu = f"{r.authorizer_cpu_us_per_check:7.0f}" if r.authorizer_cpu_us_per_check else "      -"
    return (
        f"  round {r.round} {r.case:<16} {r.mode:<8} {r.rps:>8.0f} req/s  p50 {r.p50_ms:6.2f} ms"
        f"  p99 {r.p99_ms:6.2f} ms  cpu/check {cpu} µs  unloaded p50 {r.unloaded_p50_ms:5.2f} ms"
        f"  non-2xx {r.non_2xx}"
    )


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(results: list[Run], cases: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for mode in MODES:
        for case in cases:
            runs = [r for r in results if r.case == case and r.mode == mode]
            if not runs:
                continue
            rps = [r.rps for r in runs]
            rows.append(
                {
                    "case": case,
                    "mode": mode,
                    "rounds": len(runs),
                    "rps": median(rps),
                    "rps_min": min(rps),
                    "rps_max": max(rps),
                    "p50_ms": median([r.p50_ms for r in runs]),
                    "p99_ms": median([r.p99_ms for r in runs]),
                    "non_2xx": sum(r.non_2xx + r.socket_errors for r in runs),
                    "authorizer_cpu_us_per_check": median(
                        [r.authorizer_cpu_us_per_check for r in runs]
                    ),
                    "envoy_cpu_us_per_request": median([r.envoy_cpu_us_per_request for r in runs]),
                    "unloaded_p50_ms": median([r.unloaded_p50_ms for r in runs]),
                    "machine_busy_pct": median([r.machine_busy_pct for r in runs]),
                }
            )
    return rows


def stage_rows(results: list[Run], cases: Sequence[str]) -> list[dict[str, Any]]:
    """Per extauthz case and token mode, the median over the rounds of each stage's mean."""
    rows = []
    for mode in MODES:
        for case in cases:
            runs = [r for r in results if r.case == case and r.mode == mode and r.stage_us]
            if runs:
                means = {st: median([r.stage_us[st] for r in runs if r.stage_us]) for st in STAGES}
                rows.append({"case": case, "mode": mode, **means})
    return rows


def print_stage_rows(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    print("\nextauthz's own time per check, by stage (µs, mean; extauthz_check_stage_seconds):")
    print(f"{'case':<16} {'tokens':<9}" + "".join(f"{st:>8}" for st in STAGES) + f"{'sum':>8}")
    for row in rows:
        total = sum(row[st] for st in STAGES)
        print(
            f"{row['case']:<16} {row['mode']:<9}"
            + "".join(f"{row[st]:>8.1f}" for st in STAGES)
            + f"{total:>8.1f}"
        )


def print_table(rows: list[dict[str, Any]]) -> None:
    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    header = (
        f"{'case':<16} {'tokens':<8} {'req/s':>7} {'(min-max)':>13} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'non-2xx':>7} {'authz µs/check':>14} {'envoy µs/req':>12} "
        f"{'unloaded p50':>12} {'cpu busy':>8}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        spread = f"{row['rps_min']:.0f}-{row['rps_max']:.0f}"
        print(
            f"{row['case']:<16} {row['mode']:<8} {row['rps']:>7.0f} {spread:>13} "
            f"{row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f} {row['non_2xx']:>7} "
            f"{fmt(row['authorizer_cpu_us_per_check'], '.0f'):>14} "
            f"{row['envoy_cpu_us_per_request']:>12.0f} "
            f"{row['unloaded_p50_ms']:>9.3f} ms {row['machine_busy_pct']:>7.0f}%"
        )


def ratios(results: list[Run]) -> list[dict[str, Any]]:
    """Issue 5's goals, each taken per round (cases of one round ran close in time), then
    the median over rounds with the range."""

    def per_round(mode: str, fn: Callable[[Run, Run], float | None], a: str, b: str) -> list[float]:
        values = []
        for round_ in sorted({r.round for r in results}):
            runs = {r.case: r for r in results if r.round == round_ and r.mode == mode}
            if a in runs and b in runs:
                value = fn(runs[a], runs[b])
                if value is not None:
                    values.append(value)
        return values

    def cpu(x: Run, y: Run) -> float | None:
        if x.authorizer_cpu_us_per_check and y.authorizer_cpu_us_per_check:
            return x.authorizer_cpu_us_per_check / y.authorizer_cpu_us_per_check
        return None

    goals: list[tuple[str, str, str, Callable[[Run, Run], float | None], str, float, bool]] = [
        ("CPU/Check extauthz ÷ donothing", "extauthz", "donothing", cpu, "x", 1.3, False),
        ("req/s extauthz ÷ naive", "extauthz", "naive", lambda x, y: x.rps / y.rps, "x", 2.0, True),
        (
            "unloaded p50 extauthz - donothing",
            "extauthz",
            "donothing",
            lambda x, y: x.unloaded_p50_ms - y.unloaded_p50_ms,
            " ms",
            0.15,
            False,
        ),
    ]
    out = []
    for mode in MODES:
        # Not a goal: this checkout against the --baseline one, when there is one.
        against_base = per_round(mode, cpu, "extauthz", BASELINE_CASE)
        if against_base:
            out.append(
                {
                    "ratio": f"CPU/Check extauthz ÷ {BASELINE_CASE}",
                    "mode": mode,
                    "value": statistics.median(against_base),
                    "min": min(against_base),
                    "max": max(against_base),
                    "goal": "-",
                    "met": None,
                    "unit": "x",
                }
            )
        for name, a, b, fn, unit, goal, at_least in goals:
            values = per_round(mode, fn, a, b)
            if not values:
                continue
            value = statistics.median(values)
            met = value >= goal if at_least else value <= goal
            out.append(
                {
                    "ratio": name,
                    "mode": mode,
                    "value": value,
                    "min": min(values),
                    "max": max(values),
                    "goal": f"{'≥' if at_least else '≤'} {goal:g}{unit}",
                    "met": met,
                    "unit": unit,
                }
            )
    return out


def print_ratios(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        unit = row["unit"]
        print(
            f"{row['ratio']:<36} {row['mode']:<8} {row['value']:7.2f}{unit:<3} "
            f"(rounds {row['min']:.2f}-{row['max']:.2f})   goal {row['goal']:<9} "
            f"{'' if row['met'] is None else 'met' if row['met'] else 'NOT MET'}"
        )


def machine() -> dict[str, str]:
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def tool_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError as err:
        return f"unavailable ({err})"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"


def git_commit() -> str:
    return tool_version(["git", "-C", str(REPO), "describe", "--always", "--dirty"])


# --------------------------------------------------------------------------- main


def expected_seconds(args: argparse.Namespace) -> float:
    authorizers = sum(1 for n in args.cases if n == BASELINE_CASE or CASE_OF_NAME[n].authorizer)
    setup = 10 + args.tokens * 0.00035
    per_round = 3 + (authorizers + 1) * 1.5 + authorizers * 1.2
    per_run = args.seconds + 0.6 + args.unloaded_requests * 0.002
    return float(setup + args.rounds * (per_round + len(MODES) * len(args.cases) * per_run))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--seconds", type=int, default=5, help="length of each loaded run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all cases")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--unloaded-requests",
        type=int,
        default=300,
        help="requests per case and token mode for the unloaded p50, one at a time",
    )
    parser.add_argument(
        "--tokens", type=int, default=30_000, help="distinct tokens minted (RS256, ~0.35 ms each)"
    )
    parser.add_argument(
        "--cases",
        type=lambda s: [c.strip() for c in s.split(",") if c.strip()],
        default=[c.name for c in CASES],
        help="comma-separated, from "
        + ",".join(c.name for c in CASES + EXTRA_CASES)
        + " (extauthz-w2: extauthz serve --workers 2; not run by default)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help=f"also run extauthz from the checkout DIR as case {BASELINE_CASE} (e.g. "
        "`git worktree add DIR <commit>`), for a before/after in one run",
    )
    parser.add_argument("--envoy", help="Envoy binary (default: $EXTAUTHZ_ENVOY, .tools/bin)")
    parser.add_argument("--envoy-concurrency", type=int, default=1, help="Envoy worker threads")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write results as JSON")
    parser.add_argument("--keep-workdir", action="store_true", help="keep configs and logs")
    parser.add_argument(
        "--write-configs",
        type=Path,
        metavar="DIR",
        help="only write each case's Envoy config (and the upstream's) into DIR, then exit",
    )
    args = parser.parse_args(argv)
    if args.baseline is not None:
        if not (args.baseline / "extauthz" / "__init__.py").is_file():
            parser.error(f"--baseline {args.baseline}: no extauthz package there")
        args.baseline = args.baseline.resolve()
        if BASELINE_CASE not in args.cases:
            args.cases.append(BASELINE_CASE)
    elif BASELINE_CASE in args.cases:
        parser.error(f"case {BASELINE_CASE} needs --baseline DIR")
    unknown = [c for c in args.cases if c not in CASE_OF_NAME and c != BASELINE_CASE]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {[c.name for c in CASES]}")
    if min(args.seconds, args.rounds, args.unloaded_requests, args.connections) < 1:
        parser.error("--seconds, --rounds, --unloaded-requests and --connections must be ≥ 1")
    return args


def write_configs(directory: Path) -> list[Path]:
    """Each case's front Envoy config and the upstream's, with ports that are not served."""
    directory.mkdir(parents=True, exist_ok=True)
    issuer = LocalIssuer(ISSUER)
    listen, admin, upstream, authorizer, up_admin = free_ports(5)
    paths = [
        envoy_configs.write(
            envoy_configs.upstream_config(listen=upstream, admin=up_admin),
            directory / "upstream.yaml",
        )
    ]
    for case in CASES:
        config = envoy_configs.front_config(
            case.filter,
            listen=listen,
            admin=admin,
            upstream=upstream,
            authorizer=authorizer,
            jwks=issuer.jwks(),
            issuer=ISSUER,
            audience=AUDIENCE,
        )
        paths.append(envoy_configs.write(config, directory / f"{case.name}.yaml"))
    return paths


def terminate_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.write_configs:
        for path in write_configs(args.write_configs):
            print(path)
        return 0
    signal.signal(signal.SIGTERM, terminate_on_sigterm)
    envoy = Path(args.envoy) if args.envoy else find_envoy()
    info = machine()
    info["envoy"] = tool_version([str(envoy), "--version"]).split("version:")[-1].strip()
    info["extauthz_commit"] = git_commit()
    print(
        f"extauthz through Envoy — {info['date']}, {info['nproc']} cores ({info['cpu']}), "
        f"Python {info['python']}, Envoy {info['envoy']}, commit {info['extauthz_commit']}, "
        f"load average {info['loadavg']}"
    )
    print(
        f"cases: {', '.join(args.cases)}; {args.rounds} rounds x {len(MODES)} token modes; "
        f"{args.seconds} s loaded ({args.connections} connections, wrk) + "
        f"{args.unloaded_requests} unloaded requests per run; expected duration about "
        f"{expected_seconds(args) / 60:.1f} min",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="extauthz-bench-envoy-"))
    bench = Bench(args, workdir)
    started = time.monotonic()
    try:
        results = bench.run()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything this benchmark started", file=sys.stderr)
        return 130
    except BenchError as err:
        print(f"\nbench_envoy: {err}", file=sys.stderr)
        return 1
    finally:
        bench.stop()
        if args.keep_workdir:
            print(f"configs and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    info["wrk"] = tool_version([bench.wrk, "-v"])
    rows = summarize(results, args.cases)
    goal_rows = ratios(results)
    print(f"\nMedians over {args.rounds} rounds, {time.monotonic() - started:.0f} s in all.")
    print(
        "authz µs/check: the authorizer's CPU (utime+stime) per Check Envoy sent it; "
        "envoy µs/req: the front Envoy's CPU per request; cpu busy: both cores, all processes.\n"
    )
    print_table(rows)
    stages = stage_rows(results, args.cases)
    print_stage_rows(stages)
    print()
    print_ratios(goal_rows)
    errors = sum(r["non_2xx"] for r in rows)
    if errors:
        print(f"\n!! {errors} requests were not answered 2xx: the figures above are suspect")
    if args.json:
        document = {
            "machine": info,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "summary": rows,
            "ratios": goal_rows,
            "stages": stages,
            "runs": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(document, indent=1) + "\n")
        print(f"\nresults written to {args.json}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
