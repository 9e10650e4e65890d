"""What happens past saturation: open-loop load at fractions and multiples of the rate
extauthz sustains, through a real Envoy (the ``extauthz`` case of ``bench_envoy.py``).

First the sustainable rate is measured closed-loop (wrk, as in ``make bench``); then
h2load sends at a fixed rate whatever the answers (so queues can build, as real clients
do) at 0.5x, 1x and 2x that rate. For each it prints what the clients got: allowed,
denied by extauthz as ``overloaded`` (the check waited too long: ``server.min_time_left``),
Envoy's own 503 (ext_authz timed out or refused: ``server.max_inflight``), and the mean and
worst latency. A benchmark, not a test::

    make bench-overload        # or: .venv/bin/python benchmarks/bench_overload.py --seconds 8
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_envoy


def h2load(binary: str, port: int, token: str, rate: float, seconds: float) -> dict[str, float]:
    clients = 16
    out = subprocess.run(
        [
            binary,
            "-c",
            str(clients),
            "-m",
            "256",
            f"--rps={max(rate / clients, 1):.1f}",
            "-D",
            str(int(seconds)),
            "-H",
            f"authorization: Bearer {token}",
            "-H",
            f":authority: {bench_envoy.HOST}",
            f"http://127.0.0.1:{port}/tickets/1",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    ).stdout

    def grab(pattern: str) -> float:
        match = re.search(pattern, out)
        return float(match.group(1)) if match else float("nan")

    return {
        "done": grab(r"requests: \d+ total, \d+ started, (\d+) done"),
        "2xx": grab(r"status codes: (\d+) 2xx"),
        "5xx": grab(r"(\d+) 5xx"),
        "rps": grab(r"finished in [\d.]+\w+, ([\d.]+) req/s"),
        "mean_ms": _ms(out, 3),
        "max_ms": _ms(out, 2),
    }


def _ms(out: str, group: int) -> float:
    match = re.search(r"time for request:\s+([\d.]+)(\w+)\s+([\d.]+)(\w+)\s+([\d.]+)(\w+)", out)
    if not match:
        return float("nan")
    value, unit = float(match.group(2 * group - 1)), match.group(2 * group)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}.get(unit, 1.0)


def _overloaded(http_port: int) -> float:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "extauthz_decisions_total" and sample.labels.get("reason") == (
                "overloaded"
            ):
                return float(sample.value)
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    binary = bench_envoy.ensure_tool("h2load", "nghttp2-client")
    bench_args = bench_envoy.parse_args(
        [
            "--cases",
            "extauthz",
            "--seconds",
            str(int(args.seconds)),
            "--rounds",
            "1",
            "--tokens",
            "100",
        ]
    )
    workdir = Path(tempfile.mkdtemp(prefix="extauthz-overload-"))
    bench = bench_envoy.Bench(bench_args, workdir)
    try:
        bench.wrk = bench_envoy.ensure_wrk()
        bench.prepare()
        bench.start()
        bench.start_authorizers(1)
        run = bench.running[0]
        token = bench.repeated.read_text().strip()
        bench.sanity(run, token)
        bench.warm_up(run)
        sustained = bench.measure(run, "repeated", 1).rps
        print(f"sustainable (closed loop, wrk): {sustained:.0f} req/s\n", flush=True)
        print(f"{'offered':>10} {'served/s':>9} {'2xx':>7} {'503':>7} {'mean ms':>8} {'max ms':>8}")
        for factor in (0.5, 1.0, 2.0):
            r = h2load(binary, run.port, token, sustained * factor, args.seconds)
            print(
                f"{factor:>5.1f}x {sustained * factor:>4.0f} {r['rps']:>9.0f} {r['2xx']:>7.0f} "
                f"{r['5xx']:>7.0f} {r['mean_ms']:>8.1f} {r['max_ms']:>8.1f}",
                flush=True,
            )
        print(
            f"\nof the 503s, extauthz shed {_overloaded(run.http_port or 0):.0f} as overloaded "
            "(server.min_time_left); the rest are Envoy's own (timeout or max_inflight)"
        )
    finally:
        bench.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
