"""extauthz killed, drained and restarted while Envoy is under load."""

from __future__ import annotations

import time

import pytest

from faults.conftest import StartFaultStack
from faults.harness import Load, wait_for

pytestmark = pytest.mark.e2e
SCOPE = "tickets:read tickets:write"


def test_rolling_restart_of_two_instances_drops_no_request(
    start_fault_stack: StartFaultStack,
) -> None:
    # Envoy health-checks every 100 ms: a second of NOT_SERVING while still answering is
    # enough for it to move all traffic to the other instance, even on a loaded machine.
    stack = start_fault_stack(
        {"server.shutdown_delay": "1s", "server.shutdown_grace": "5s"}, instances=2
    )
    token = stack.delegated_token(agent="support-agent", user="alice", scope=SCOPE)
    denied = stack.delegated_token(agent="support-agent", user="alice", scope="tickets:read")

    def send(i: int) -> tuple[str, str, str, int]:
        if i % 4 == 3:
            return "POST", "/tickets", denied, 403
        return "GET", f"/tickets/{i}", token, 200

    with Load(stack.ports.envoy, send, threads=4, max_seconds=60) as load:
        load.wait_for(100)
        for name in ("a", "b"):
            stopping = time.monotonic()
            assert stack.processes[name].stop() == 0  # SIGTERM, drained, exit 0
            during = [a for a in load.snapshot() if a.started >= stopping]
            stack.start_instance(name)
            wait_for(lambda: stack.envoy_healthy_hosts() == 2, f"{name} back in rotation", 30)
            assert during, "traffic flowed while the instance drained"
            load.wait_for(100)
    answers = load.snapshot()
    assert load.wrong() == []
    assert len(answers) >= 300
    stats = stack.envoy_stats()
    assert stats.get("cluster.extauthz.health_check.failure", 0) >= 2  # each one seen leaving
    # Every answer came from an extauthz decision: allows and denies alike carry its id.
    assert all(a.decision_id for a in answers)


def test_extauthz_killed_under_load_fails_closed_then_recovers_on_the_same_port(
    start_fault_stack: StartFaultStack,
) -> None:
    stack = start_fault_stack()
    token = stack.delegated_token(agent="support-agent", user="alice", scope=SCOPE)

    def send(i: int) -> tuple[str, str, str, int]:
        return "GET", f"/tickets/{i}", token, 200

    with Load(stack.ports.envoy, send, threads=3, max_seconds=60) as load:
        load.wait_for(50)
        stack.kill_instance("a")  # SIGKILL: no drain, connections just vanish
        killed = time.monotonic()  # the process is gone: nothing after this can be decided
        wait_for(
            lambda: sum(a.started > killed and a.status == 503 for a in load.snapshot()) >= 20,
            "Envoy answering 503 while extauthz is gone",
        )
        restarted = time.monotonic()
        stack.start_instance("a")
        recovery = wait_for(
            lambda: any(a.started > restarted and a.status == 200 for a in load.snapshot()),
            "the first allow after the restart",
            30,
        )
        load.wait_for(50)
    answers = load.snapshot()
    outage = [a for a in answers if killed < a.started < restarted]
    assert outage and all(a.status == 503 and not a.reached_upstream for a in outage)
    assert all(a.decision_id is None for a in outage)  # Envoy answered, nobody decided
    # Fail closed, never open: no request reached the upstream without a decision.
    assert all(a.decision_id for a in answers if a.reached_upstream)
    assert {a.status for a in answers} <= {200, 503}
    first_back = min(a.started for a in answers if a.started > restarted and a.status == 200)
    assert all(a.status == 200 for a in answers if a.started > first_back + 0.05)
    print(f"outage answers {len(outage)}, recovery {recovery:.2f}s after restart")
    assert stack.metric("extauthz_decisions_total", decision="allow", reason="allowed") > 0
