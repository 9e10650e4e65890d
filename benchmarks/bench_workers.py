"""How `extauthz serve --workers N` scales: checks per second against N, side by side.

No Envoy here: h2load sends gRPC Checks straight to extauthz's port, so the load generator
and extauthz are the only things running, and Envoy's own CPU does not cap the figure. Each
round starts extauthz afresh with every worker count in turn (the counts alternate over
the rounds, since a shared machine drifts), warms it up, then runs h2load for a fixed time
with one repeated delegated token (deploy/extauthz/config.yaml as shipped; every check an
allow with its decision line, written to /dev/null). Per run: completed checks per second,
and CPU per check over the whole process tree (the supervisor and its workers). The
scaling figure is req/s with N workers over req/s with one, taken within each round.
Checks are verified first: each run must end with as many `allowed` decisions in
extauthz's own metrics as h2load saw answered, or the run is refused. A benchmark, not a
test.

    make bench-workers   # or: .venv/bin/python benchmarks/bench_workers.py [--workers 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from bench_envoy import (
    AUDIENCE,
    HOST,
    ISSUER,
    PATH,
    TOKEN_LIFETIME,
    WORKER_METRICS_FLUSH,
    BenchError,
    Proc,
    ensure_tool,
    git_commit,
    http_ok,
    machine,
    tool_version,
    wait_until,
)
from envoy.service.auth.v3 import external_auth_pb2
from prometheus_client.parser import text_string_to_metric_families

from extauthz.demo.issuer import LocalIssuer
from extauthz.demo.stack import free_ports, http_request

REPO = Path(__file__).resolve().parents[1]
CHECK_PATH = "/envoy.service.auth.v3.Authorization/Check"
WARM_UP_CHECKS = 3000


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message: not compressed, 4-byte big-endian length."""
    return b"\0" + struct.pack(">I", len(message)) + message


def check_request(token: str) -> external_auth_pb2.CheckRequest:
    """A CheckRequest as Envoy's ext_authz filter sends it for GET /tickets/42."""
    request = external_auth_pb2.CheckRequest()
    attributes = request.attributes
    attributes.source.address.socket_address.address = "127.0.0.1"
    attributes.source.address.socket_address.port_value = 40000
    attributes.destination.address.socket_address.address = "127.0.0.1"
    attributes.destination.address.socket_address.port_value = 10000
    attributes.request.time.GetCurrentTime()
    http = attributes.request.http
    http.id = "4317151259867843042"
    http.method, http.host, http.path = "GET", HOST, PATH
    http.scheme, http.protocol = "http", "HTTP/1.1"
    headers = {
        ":authority": HOST,
        ":method": "GET",
        ":path": PATH,
        ":scheme": "http",
        "user-agent": "h2load",
        "x-forwarded-proto": "http",
        "x-request-id": "c0ffee00-1234-5678-9abc-def012345678",
        "authorization": f"Bearer {token}",
        "x-envoy-expected-rq-timeout-ms": "15000",
    }
    for name, value in headers.items():
        http.headers[name] = value
    return request


@dataclass(frozen=True)
class H2loadResult:
    succeeded: int
    failed: int
    errored: int
    seconds: float
    status_2xx: int

    @property
    def rps(self) -> float:
        return self.succeeded / self.seconds


_FINISHED = re.compile(r"finished in ([\d.]+)(ms|s)")
_REQUESTS = re.compile(r"requests: .*?(\d+) succeeded, (\d+) failed, (\d+) errored")
_STATUS = re.compile(r"status codes: (\d+) 2xx")


def parse_h2load(output: str) -> H2loadResult:
    """The figures of h2load's summary; BenchError when it has none (h2load failed)."""
    finished, requests, status = (
        _FINISHED.search(output),
        _REQUESTS.search(output),
        _STATUS.search(output),
    )
    if not (finished and requests and status):
        raise BenchError(f"h2load printed no summary:\n{output[-2000:]}")
    seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    succeeded, failed, errored = (int(requests.group(i)) for i in (1, 2, 3))
    return H2loadResult(succeeded, failed, errored, seconds, int(status.group(1)))


def allowed_decisions(http_port: int) -> float:
    text = http_request(f"http://127.0.0.1:{http_port}/metrics").body.decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "extauthz_decisions_total" and sample.labels["reason"] == "allowed":
                return sample.value
    raise BenchError("no extauthz_decisions_total{reason=allowed} in /metrics")


@dataclass
class Run:
    round: int
    workers: int
    rps: float
    cpu_us_per_check: float
    checks: int


class WorkersBench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.h2load = ensure_tool("h2load", "nghttp2-client")
        issuer = LocalIssuer(ISSUER)
        policy = workdir / "policy"
        shutil.copytree(REPO / "deploy" / "extauthz", policy)
        issuer.write_jwks(policy / "keys" / "jwks.json")
        token = issuer.token(
            sub="alice",
            audience=AUDIENCE,
            scope="tickets:read",
            client_id="support-agent",
            act={"sub": "support-agent"},
            lifetime=TOKEN_LIFETIME,
        )
        self.body = workdir / "check.bin"
        self.body.write_bytes(grpc_frame(check_request(token).SerializeToString()))
        self.grpc_port, self.http_port = free_ports(2)
        config = yaml.safe_load((policy / "config.yaml").read_text())
        config["server"]["grpc_listen"] = f"127.0.0.1:{self.grpc_port}"
        config["server"]["http_listen"] = f"127.0.0.1:{self.http_port}"
        self.config = policy / "config-bench.yaml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))

    def start(self, workers: int) -> Proc:
        argv = [sys.executable, "-m", "extauthz", "serve", "--config", str(self.config)]
        if workers > 1:
            argv += ["--workers", str(workers)]
        proc = Proc(f"extauthz-w{workers}", argv, self.workdir, stdout=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{self.http_port}/readyz"
        wait_until(f"extauthz --workers {workers}", lambda: http_ok(url), [proc])
        # Every worker ready, not only the first one the kernel picked for /readyz.
        time.sleep(1.0 if workers > 1 else 0.2)
        return proc

    def load(self, *, checks: int | None = None, seconds: int | None = None) -> H2loadResult:
        argv = [self.h2load, "-c", str(self.args.connections), "-m", str(self.args.streams)]
        argv += ["-t", "1", "-d", str(self.body)]
        argv += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
        argv += ["-n", str(checks)] if checks else ["-D", str(seconds)]
        argv.append(f"http://127.0.0.1:{self.grpc_port}{CHECK_PATH}")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        result = parse_h2load(done.stdout + done.stderr)
        if result.failed or result.errored or result.status_2xx != result.succeeded:
            raise BenchError(f"h2load saw failures: {result}\n{done.stdout[-1500:]}")
        return result

    def measure(self, workers: int, round_: int) -> Run:
        proc = self.start(workers)
        try:
            self.load(checks=WARM_UP_CHECKS)
            time.sleep(WORKER_METRICS_FLUSH if workers > 1 else 0.0)  # the warm-up's, flushed
            allowed_before, cpu_before = allowed_decisions(self.http_port), proc.cpu_seconds()
            result = self.load(seconds=self.args.seconds)
            cpu = proc.cpu_seconds() - cpu_before
            time.sleep(WORKER_METRICS_FLUSH if workers > 1 else 0.0)
            allowed = allowed_decisions(self.http_port) - allowed_before
        finally:
            proc.stop()
        # h2load stops counting at its deadline: the checks then in flight are still
        # answered, and decided, but not counted by it.
        in_flight = self.args.connections * self.args.streams
        if not result.succeeded <= allowed <= result.succeeded + in_flight:
            raise BenchError(
                f"--workers {workers}: h2load counted {result.succeeded} answers, "
                f"extauthz {allowed:.0f} allows: the load was not what it seemed"
            )
        return Run(round_, workers, result.rps, cpu / allowed * 1e6, int(allowed))

    def run(self) -> list[Run]:
        counts: list[int] = self.args.workers
        runs: list[Run] = []
        for round_ in range(1, self.args.rounds + 1):
            order = counts if round_ % 2 else list(reversed(counts))
            for workers in order:
                run = self.measure(workers, round_)
                runs.append(run)
                print(
                    f"  round {round_}  --workers {workers}: {run.rps:8.0f} checks/s  "
                    f"{run.cpu_us_per_check:6.0f} µs CPU/check",
                    flush=True,
                )
        return runs


def summarize(runs: Sequence[Run], counts: Sequence[int]) -> list[dict[str, Any]]:
    """Per worker count: medians over the rounds, and req/s over one worker's, per round."""
    rows = []
    for workers in counts:
        mine = [r for r in runs if r.workers == workers]
        ratios = []
        for run in mine:
            single = [r for r in runs if r.workers == 1 and r.round == run.round]
            if single:
                ratios.append(run.rps / single[0].rps)
        rows.append(
            {
                "workers": workers,
                "rps": statistics.median(r.rps for r in mine),
                "cpu_us_per_check": statistics.median(r.cpu_us_per_check for r in mine),
                "scaling": statistics.median(ratios) if ratios else None,
                "scaling_range": (min(ratios), max(ratios)) if ratios else None,
            }
        )
    return rows


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    print(f"\n{'workers':>7}  {'checks/s':>9}  {'CPU µs/check':>12}  {'x 1 worker':>10}  rounds")
    for row in rows:
        scaling = "" if row["scaling"] is None else f"{row['scaling']:.2f}"
        spread = row["scaling_range"]
        spread_text = "" if spread is None else f"{spread[0]:.2f}-{spread[1]:.2f}"
        print(
            f"{row['workers']:>7}  {row['rps']:>9.0f}  {row['cpu_us_per_check']:>12.0f}  "
            f"{scaling:>10}  {spread_text}"
        )


def parse_workers(text: str) -> list[int]:
    try:
        counts = sorted({int(part) for part in text.split(",")})
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of counts: {text!r}") from err
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError("worker counts must be 1 or more")
    return counts if counts[0] == 1 else [1, *counts]  # one worker is the reference


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = ",".join(str(n) for n in range(1, (os.cpu_count() or 1) + 1))
    parser.add_argument(
        "--workers",
        type=parse_workers,
        default=parse_workers(default),
        help=f"worker counts to compare, 1 always included (default: {default}, one per core)",
    )
    parser.add_argument("--seconds", type=int, default=5, help="length of each loaded run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all counts")
    parser.add_argument("--connections", type=int, default=16, help="h2load connections")
    parser.add_argument("--streams", type=int, default=8, help="h2load streams per connection")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write results as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="extauthz-bench-workers-"))
    try:
        bench = WorkersBench(args, workdir)
        host = machine()
        print(
            f"{host['cpu']}, {host['nproc']} cores, load {host['loadavg']}; "
            f"{tool_version([bench.h2load, '--version'])}; extauthz {git_commit()}",
            flush=True,
        )
        print(
            f"h2load -c {args.connections} -m {args.streams} straight at the gRPC port, "
            f"{args.seconds} s per run, {args.rounds} rounds",
            flush=True,
        )
        runs = bench.run()
    except BenchError as err:
        print(f"bench-workers: {err}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = summarize(runs, args.workers)
    print_table(rows)
    if (os.cpu_count() or 1) <= max(args.workers):
        print(
            "\nh2load runs on the same cores: with as many workers as cores, "
            "the workers and the load generator share them."
        )
    if args.json:
        args.json.write_text(
            json.dumps({"machine": host, "runs": [asdict(r) for r in runs], "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
