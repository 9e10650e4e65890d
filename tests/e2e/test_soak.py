"""Soak: mixed allow/deny traffic with distinct tokens through a real Envoy for
``$EXTAUTHZ_SOAK_SECONDS`` (60 s in the suite; ``EXTAUTHZ_SOAK_SECONDS=600 make soak`` by
hand) while the feed is replaced and the config reloaded every couple of seconds.

Zero failed checks, zero wrong decisions (every answer against its expected status, and a
sample of decision lines against the pure decision core run here with the same config and
feed version), and no growth of resident memory, file descriptors or event-loop tasks
after warm-up. The figures are printed (run with ``-s``) for docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from faults.harness import Load, percentile

from extauthz.config import Config, load_config
from extauthz.decision import PolicyView, decide
from extauthz.demo.stack import Stack
from extauthz.feed.cache import FeedState
from extauthz.feed.snapshot import FeedSnapshot, parse_feed
from extauthz.model import RequestAttributes
from extauthz.server import load_key_sets

pytestmark = pytest.mark.e2e
SOAK_SECONDS = float(os.environ.get("EXTAUTHZ_SOAK_SECONDS", "60"))
RATE = float(os.environ.get("EXTAUTHZ_SOAK_RATE", "120"))  # requests per second, in total
SCOPE = "tickets:read tickets:write"
SAMPLE = 300


def proc_status(pid: int) -> tuple[int, int]:
    """(resident KiB, open file descriptors) of ``pid``."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def replace_file(path: Path, content: str) -> None:
    staged = path.with_name(path.name + ".new")
    staged.write_text(content)
    os.replace(staged, path)


def test_soak_mixed_traffic_through_reloads_and_feed_replacements(
    start_stack: Callable[..., Stack],
) -> None:
    stack = start_stack({"server.reload_check": "100ms", "feed.refresh": "100ms"})
    # (method, path, user or None for the autonomous triage-bot, scope, expected status)
    kinds: list[tuple[str, str, str | None, str, int]] = [
        ("GET", "/tickets/{n}", "alice", SCOPE, 200),
        ("POST", "/tickets", "alice", SCOPE, 200),
        ("GET", "/tickets/{n}", None, "tickets:read", 200),
        ("DELETE", "/tickets/{n}", "alice", SCOPE, 403),  # nobody grants tickets:delete
        ("POST", "/tickets", "bob", SCOPE, 403),  # bob's feed entry: read only
        ("GET", "/tickets/{n}", "mallory", SCOPE, 401),  # disabled in the feed: user_disabled
        ("GET", "/tickets/{n}", "alice", "tickets:write", 403),  # scope lacks read
        ("GET", "/nowhere", "alice", SCOPE, 403),  # no route
    ]
    tokens: list[str] = []
    for i in range(240):  # distinct tokens, each used about RATE*SOAK_SECONDS/240 times
        _, _, user, scope, _ = kinds[i % len(kinds)]
        if user is None:
            tokens.append(stack.autonomous_token(agent="triage-bot", scope=scope))
        else:
            tokens.append(stack.delegated_token(agent="support-agent", user=user, scope=scope))

    def request(i: int) -> tuple[str, str, str, int]:
        method, path, _, _, expected = kinds[i % len(kinds)]
        return method, path.format(n=i), tokens[i % len(tokens)], expected

    configs: dict[str, Config] = {}
    feeds: dict[str, FeedSnapshot] = {}
    config = yaml.safe_load(stack.config_path.read_text())
    feed = json.loads(stack.feed_path.read_text())
    configs[load_config(stack.config_path).policy_version] = load_config(stack.config_path)
    feeds[feed["version"]] = parse_feed(stack.feed_path.read_bytes(), "soak")
    assert stack.extauthz is not None
    pid = stack.extauthz.pid
    samples: list[tuple[float, int, int, float]] = []  # (t, rss KiB, fds, tasks)
    began = time.monotonic()
    with Load(
        stack.ports.envoy,
        request,
        threads=4,
        rate=RATE,
        max_requests=int(RATE * SOAK_SECONDS * 1.2) + 100,
        max_seconds=SOAK_SECONDS + 30,
        timeout=5.0,
    ) as load:
        round_ = 0
        while time.monotonic() - began < SOAK_SECONDS:
            round_ += 1
            # A config change no request in the traffic depends on: one more agent.
            changed: dict[str, Any] = json.loads(json.dumps(config))
            changed["agents"].append({"id": f"soak-{round_}", "permissions": ["tickets:read"]})
            text = yaml.safe_dump(changed, sort_keys=False)
            version_file = stack.config_dir / f"soak-{round_}.yaml"
            version_file.write_text(text)
            loaded = load_config(version_file)
            configs[loaded.policy_version] = loaded
            replace_file(stack.config_path, text)
            # A new feed version: more users, the same answer for the ones in the traffic.
            users = {**feed["users"], f"soak-user-{round_}": {"permissions": ["tickets:read"]}}
            body = json.dumps({"version": f"soak-{round_}", "users": users})
            feeds[f"soak-{round_}"] = parse_feed(body.encode(), "soak")
            replace_file(stack.feed_path, body)
            rss, fds = proc_status(pid)
            samples.append(
                (time.monotonic() - began, rss, fds, stack.metric("extauthz_event_loop_tasks"))
            )
            time.sleep(min(2.0, max(0.0, SOAK_SECONDS - (time.monotonic() - began))))
        load.stop()
    elapsed = time.monotonic() - began
    answers = load.snapshot()

    # Zero failed checks, zero wrong decisions.
    assert len(answers) >= RATE * SOAK_SECONDS * 0.8
    assert [a for a in answers if a.status != a.expected] == []
    assert all(a.decision_id for a in answers)
    reloads = stack.metric("extauthz_config_reload_total", outcome="success")
    assert reloads >= round_ * 0.5
    assert stack.metric("extauthz_config_reload_total", outcome="error") == 0
    assert stack.metric("extauthz_decision_log_dropped_total") == 0

    # A sample of decision lines, decided again here by the pure core with the config and
    # feed version the line names.
    # Every check has its line; the writer puts them out within its 50 ms interval.
    lines = {line["decision_id"]: line for line in stack.decisions()}
    deadline = time.monotonic() + 2.0
    while len(lines) < len(answers) and time.monotonic() < deadline:
        time.sleep(0.05)
        lines = {line["decision_id"]: line for line in stack.decisions()}
    assert len(lines) == len(answers)
    checked = 0
    for answer in random.Random(7).sample(answers, min(SAMPLE, len(answers))):
        line = lines[answer.decision_id or ""]
        method, path, token, _ = request(answer.index)
        cfg = configs[line["policy_version"]]
        now = datetime.fromisoformat(line["ts"]).timestamp()
        view = PolicyView(cfg, load_key_sets(cfg), FeedState(feeds[line["feed_version"]], now))
        attributes = RequestAttributes(
            method=method,
            host="tickets.example.test",
            path=path,
            headers={"authorization": f"Bearer {token}"},
        )
        decision = decide(attributes, view, now)
        assert (line["decision"], line["reason"]) == (
            "allow" if decision.allowed else "deny",
            decision.reason.value,
        ), line
        checked += 1
    assert len({line["policy_version"] for line in lines.values()}) >= 3
    assert len({line["feed_version"] for line in lines.values()}) >= 3

    # Flat after warm-up (the first quarter): memory, descriptors, tasks.
    warm = [s for s in samples if s[0] >= SOAK_SECONDS / 4]
    first, last = warm[0], warm[-1]
    rss_growth_kib = last[1] - first[1]
    latencies = [a.latency for a in answers]
    print(
        f"\nsoak {elapsed:.0f}s: {len(answers)} requests ({len(answers) / elapsed:.0f}/s), "
        f"{round_} config+feed replacements, {reloads:.0f} reloads, 0 wrong, "
        f"{checked} lines re-decided; latency p50 {percentile(latencies, 0.5) * 1000:.1f} ms "
        f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms max {max(latencies) * 1000:.0f} ms; "
        f"RSS {samples[0][1] / 1024:.1f} MiB at start, {first[1] / 1024:.1f} after warm-up, "
        f"{last[1] / 1024:.1f} at end; fds {first[2]}->{last[2]}; tasks {first[3]:.0f}->"
        f"{last[3]:.0f}"
    )
    assert rss_growth_kib < 8 * 1024, samples
    assert last[2] <= first[2] + 2, samples
    assert last[3] <= first[3] + 3, samples
