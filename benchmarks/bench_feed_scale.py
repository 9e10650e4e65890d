"""How a large user-permission feed loads: time to parse and validate, memory held.

Generates a feed of N users (default 1,000,000) with about 10 permissions each, drawn
from a role-like pool so that, as in real directories, many users share a set, and a
share of users hold individual sets. Prints the document size, the parse time, the
resident memory before and after and the memory the snapshot holds. A benchmark, not a
test: run ``make bench-feed`` (or ``python benchmarks/bench_feed_scale.py --users N``).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import time

from extauthz.feed.cache import FeedCache
from extauthz.feed.snapshot import parse_feed


def rss_mib() -> float:
    """Current resident set size, from /proc (Linux)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def generate(users: int, seed: int = 7) -> bytes:
    rng = random.Random(seed)
    resources = [f"svc{i}" for i in range(40)]
    actions = ["read", "write", "delete", "admin", "comment"]
    universe = [f"{r}:{a}" for r in resources for a in actions]
    roles = [sorted(rng.sample(universe, 10)) for _ in range(2000)]
    entries: dict[str, dict[str, object]] = {}
    for i in range(users):
        # 90 % hold one of the role sets; 10 % an individual one.
        permissions = rng.choice(roles) if rng.random() < 0.9 else sorted(rng.sample(universe, 10))
        entry: dict[str, object] = {"permissions": permissions}
        if i % 97 == 0:
            entry["disabled"] = True
        entries[f"user-{i:07d}@example.test"] = entry
    revoked = {f"jti-{i}": 4_000_000_000 for i in range(10_000)}
    document = {"version": "bench", "users": entries, "revoked_tokens": revoked}
    return json.dumps(document, separators=(",", ":")).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    started = time.perf_counter()
    raw = generate(args.users)
    print(
        f"generated {args.users:,} users, {len(raw) / 2**20:.0f} MiB of JSON "
        f"in {time.perf_counter() - started:.1f} s"
    )
    gc.collect()
    timings = []
    held = []
    for _ in range(args.rounds):
        before = rss_mib()
        started = time.perf_counter()
        cache = FeedCache()
        cache.accept(parse_feed(raw, "bench"), time.time())
        timings.append(time.perf_counter() - started)
        gc.collect()
        held.append(rss_mib() - before)
        del cache
        gc.collect()
    timings.sort()
    print(
        f"parse + validate + swap: median {timings[len(timings) // 2]:.2f} s, "
        f"best {timings[0]:.2f} s over {args.rounds} rounds"
    )
    print(
        f"resident memory: {rss_mib():.0f} MiB now (JSON text included); "
        f"snapshot holds about {max(held):.0f} MiB"
    )


if __name__ == "__main__":
    main()
