"""The decision line (extauthz/decision_log.py). The key set and order are a contract."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extauthz.decision_log import (
    FIELDS,
    MAX_FIELD_CHARS,
    BackgroundDecisionLog,
    DecisionLines,
    DecisionLog,
    DecisionLogFull,
    decision_record,
    encode_line,
    timestamp,
)
from extauthz.errors import Reason
from extauthz.model import Decision, Identity, RequestAttributes

# GOLDEN: changing this list is a breaking change for every log pipeline that reads it.
GOLDEN_FIELDS = [
    "ts",
    "decision_id",
    "decision",
    "reason",
    "status",
    "mode",
    "agent",
    "actor_chain",
    "user",
    "client_id",
    "issuer",
    "jti",
    "audience",
    "resource",
    "method",
    "host",
    "path",
    "permission",
    "mcp_tool",
    "agent_has",
    "user_has",
    "scope_has",
    "feed_version",
    "feed_age_s",
    "policy_version",
    "request_id",
    "source",
    "latency_us",
]

IDENTITY = Identity(
    agent="support-agent",
    user="alice",
    actor_chain=("support-agent", "planner-agent"),
    client_id="support-agent",
    issuer="https://idp.example.test",
    jti="jti-1",
    scopes=frozenset({"tickets:read"}),
)
REQUEST = RequestAttributes(
    method="GET",
    host="tickets.example.test",
    path="/tickets/42",
    headers={"authorization": "Bearer SECRET-TOKEN", "cookie": "session=SECRET-COOKIE"},
    request_id="req-1",
    source="10.0.0.7",
)
ALLOWED = Decision(
    Reason.ALLOWED,
    identity=IDENTITY,
    issuer="https://idp.example.test",
    client_id="support-agent",
    jti="jti-1",
    resource="tickets",
    audience="https://tickets.example.test",
    permission="tickets:read",
    agent_has=True,
    user_has=True,
    scope_has=True,
)


# The arguments of decision_record (and DecisionLines.encode) for one allowed check.
RECORD_ARGUMENTS: dict[str, Any] = {
    "now": 1_767_225_600.1234,  # 2026-01-01T00:00:00.123Z
    "decision_id": "d" * 32,
    "decision": ALLOWED,
    "request": REQUEST,
    "mode": "enforce",
    "status": 200,
    "would_status": None,
    "feed_version": "42",
    "feed_age_s": 12.345678,
    "policy_version": "abcdef012345",
    "latency_us": 87,
}


def record(decision: Decision = ALLOWED, **overrides: Any) -> dict[str, Any]:
    return decision_record(**{**RECORD_ARGUMENTS, "decision": decision, **overrides})


def test_fields_constant_is_pinned() -> None:
    assert list(FIELDS) == GOLDEN_FIELDS


def test_golden_allow_line() -> None:
    line = record()
    assert list(line) == GOLDEN_FIELDS
    assert line == {
        "ts": "2026-01-01T00:00:00.123+00:00",
        "decision_id": "d" * 32,
        "decision": "allow",
        "reason": "allowed",
        "status": 200,
        "mode": "enforce",
        "agent": "support-agent",
        "actor_chain": ["support-agent", "planner-agent"],
        "user": "alice",
        "client_id": "support-agent",
        "issuer": "https://idp.example.test",
        "jti": "jti-1",
        "audience": "https://tickets.example.test",
        "resource": "tickets",
        "method": "GET",
        "host": "tickets.example.test",
        "path": "/tickets/42",
        "permission": "tickets:read",
        "mcp_tool": None,
        "agent_has": True,
        "user_has": True,
        "scope_has": True,
        "feed_version": "42",
        "feed_age_s": 12.346,
        "policy_version": "abcdef012345",
        "request_id": "req-1",
        "source": "10.0.0.7",
        "latency_us": 87,
    }


def test_golden_deny_before_identity_line() -> None:
    line = record(
        Decision(Reason.TOKEN_EXPIRED, resource="tickets", audience="https://tickets.example.test"),
        status=401,
        feed_version=None,
        feed_age_s=None,
    )
    assert list(line) == GOLDEN_FIELDS
    assert line["decision"] == "deny"
    assert line["reason"] == "token_expired"
    assert line["status"] == 401
    assert line["agent"] is None
    assert line["actor_chain"] == []
    assert line["user"] is None
    assert line["issuer"] is None
    assert line["permission"] is None
    assert (line["agent_has"], line["user_has"], line["scope_has"]) == (None, None, None)
    assert line["feed_version"] is None
    assert line["feed_age_s"] is None


def test_mcp_method_and_would_status_are_appended_after_the_fixed_fields() -> None:
    decision = Decision(
        Reason.USER_LACKS_PERMISSION,
        identity=IDENTITY,
        permission="tickets:write",
        mcp_method="tools/call",
        mcp_tool="create_ticket",
        agent_has=True,
        user_has=False,
        scope_has=True,
        lacking=("user",),
    )
    line = record(decision, mode="dry_run", status=200, would_status=403)
    assert list(line) == [*GOLDEN_FIELDS, "mcp_method", "would_status"]
    assert line["decision"] == "deny"
    assert line["status"] == 200
    assert line["would_status"] == 403
    assert line["mode"] == "dry_run"
    assert line["mcp_tool"] == "create_ticket"
    assert line["mcp_method"] == "tools/call"
    assert line["user_has"] is False


def test_autonomous_agent_line_has_no_user() -> None:
    autonomous = Identity("triage-bot", None, ("triage-bot",), "triage-bot", "i", None, frozenset())
    line = record(Decision(Reason.ALLOWED, identity=autonomous, permission="tickets:read"))
    assert line["user"] is None
    assert line["agent"] == "triage-bot"
    assert line["actor_chain"] == ["triage-bot"]
    assert line["jti"] is None


def test_value_shapes() -> None:
    line = record(feed_age_s=0.0004, latency_us=0)
    assert isinstance(line["latency_us"], int)
    assert line["feed_age_s"] == 0.0
    assert isinstance(line["actor_chain"], list)
    assert record(feed_age_s=7.0)["feed_age_s"] == 7.0


def test_line_has_no_header_values() -> None:
    text = json.dumps(record())
    assert "SECRET-TOKEN" not in text
    assert "SECRET-COOKIE" not in text


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0
        self.flushed_text: list[str] = []

    def flush(self) -> None:
        self.flushes += 1
        self.flushed_text.append(self.getvalue())
        super().flush()


def test_decision_log_writes_one_compact_json_line_and_flushes_each_time() -> None:
    stream = CountingStream()
    log = DecisionLog(stream)

    log.write(record())
    assert stream.flushes == 1
    first = stream.getvalue()
    assert first.endswith("\n")
    assert first.count("\n") == 1
    assert ", " not in first and '": ' not in first  # compact separators
    assert list(json.loads(first)) == GOLDEN_FIELDS

    log.write(record(decision_id="e" * 32))
    assert stream.flushes == 2
    lines = stream.getvalue().splitlines()
    assert [json.loads(x)["decision_id"] for x in lines] == ["d" * 32, "e" * 32]
    # Each flush happened with its own line complete.
    assert stream.flushed_text[0] == first


def test_decision_log_line_survives_non_ascii_and_newlines_in_values() -> None:
    stream = io.StringIO()
    request = RequestAttributes("GET", "tickets.example.test", "/tickets/é\n1", {})
    DecisionLog(stream).write(record(request=request))
    text = stream.getvalue()
    assert text.count("\n") == 1
    assert json.loads(text)["path"] == "/tickets/é\n1"


# --- client-chosen text is bounded -------------------------------------------------------


def request_with(field: str, value: str) -> RequestAttributes:
    return REQUEST._replace(**{field: value})


@pytest.mark.parametrize("field", ["host", "path", "request_id"])
@pytest.mark.parametrize("length", [1025, 60_000])
def test_client_chosen_field_over_1024_chars_is_cut_to_1024_plus_an_ellipsis(
    field: str, length: int
) -> None:
    value = ("/abcdefg" * length)[:length]

    line = record(request=request_with(field, value))

    assert line[field] == value[:1024] + "\u2026"


@pytest.mark.parametrize("field", ["host", "path", "request_id"])
@pytest.mark.parametrize("length", [0, 1, 1023, 1024])
def test_client_chosen_field_of_at_most_1024_chars_is_kept_whole(field: str, length: int) -> None:
    value = "y" * length

    assert record(request=request_with(field, value))[field] == value


def test_decision_line_stays_short_for_a_huge_path_host_and_request_id() -> None:
    stream = io.StringIO()
    request = RequestAttributes(
        "GET", "h" * 60_000, "/" + "p" * 60_000, {}, request_id="r" * 60_000
    )
    DecisionLog(stream).write(record(request=request))
    assert len(stream.getvalue()) < 8 * 1024


def test_mcp_method_and_http_method_are_cut_like_other_client_text() -> None:
    decision = Decision(Reason.ALLOWED, mcp_method="m" * 5000)
    request = RequestAttributes(method="M" * 5000, host="h", path="/", headers={})
    line = decision_record(
        now=0.0,
        decision_id="d",
        decision=decision,
        request=request,
        mode="enforce",
        status=200,
        would_status=None,
        feed_version=None,
        feed_age_s=None,
        policy_version="p",
        latency_us=1,
    )
    assert line["mcp_method"] == "m" * 1024 + "…"
    assert line["method"] == "M" * 1024 + "…"


@pytest.mark.parametrize("path", ["/tickets/é", "/tickets/\ud800", "/tickets/\u2028x"])
def test_decision_line_is_ascii_even_for_non_ascii_or_surrogate_text(path: str) -> None:
    stream = io.StringIO()
    DecisionLog(stream).write(record(request=RequestAttributes("GET", "h", path, {})))
    text = stream.getvalue()
    assert text.isascii() and text.endswith("\n") and text.count("\n") == 1
    assert json.loads(text)["path"] == path


# --- the background writer -----------------------------------------------------------------


class GatedStream(io.StringIO):
    """A stdout whose reader can stall (writes block) or break (writes fail)."""

    def __init__(self) -> None:
        super().__init__()
        self.open_gate = threading.Event()
        self.open_gate.set()
        self.broken = False
        self.writes = 0

    def write(self, text: str) -> int:
        self.open_gate.wait(10)
        if self.broken:
            raise BrokenPipeError(32, "Broken pipe")
        self.writes += 1
        return super().write(text)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def ids_written(stream: io.StringIO) -> list[str]:
    return [json.loads(x)["decision_id"] for x in stream.getvalue().splitlines()]


def test_background_log_writes_every_line_in_order_and_close_drains_it() -> None:
    stream = GatedStream()
    log = BackgroundDecisionLog(stream)
    for n in range(500):
        log.write(record(decision_id=f"{n:032d}"))
    assert log.close(5.0)
    assert ids_written(stream) == [f"{n:032d}" for n in range(500)]
    assert log.pending == 0


def test_lines_queued_while_stdout_stalls_are_written_in_batches_when_it_drains() -> None:
    stream = GatedStream()
    log = BackgroundDecisionLog(stream, max_pending=1000)
    stream.open_gate.clear()
    log.write(record(decision_id="first".ljust(32, "0")))
    # The writer takes "first" and blocks writing it; the rest queue up behind it.
    for n in range(100):
        log.write(record(decision_id=f"{n:032d}"))
    stream.open_gate.set()
    assert log.close(5.0)
    assert len(ids_written(stream)) == 101
    assert stream.writes < 101  # batched: fewer writes than lines


def test_a_full_queue_refuses_with_deny_and_counts_the_dropped_line() -> None:
    dropped: list[int] = []
    stream = GatedStream()
    stream.open_gate.clear()
    log = BackgroundDecisionLog(stream, max_pending=3, on_drop=dropped.append)
    for n in range(3):
        log.write(record(decision_id=f"{n:032d}"))
    with pytest.raises(DecisionLogFull):
        log.write(record(decision_id="x" * 32))
    assert dropped == [1]
    stream.open_gate.set()
    wait_until(lambda: log.pending == 0, "the backlog to drain")
    log.write(record(decision_id="y" * 32))  # room again: accepted
    assert log.close(5.0)
    assert ids_written(stream)[-1] == "y" * 32


def test_a_full_queue_with_drop_keeps_answering_and_counts() -> None:
    dropped: list[int] = []
    stream = GatedStream()
    stream.open_gate.clear()
    log = BackgroundDecisionLog(stream, max_pending=2, when_full="drop", on_drop=dropped.append)
    for n in range(5):
        log.write(record(decision_id=f"{n:032d}"))  # never raises
    assert sum(dropped) == 3
    stream.open_gate.set()
    assert log.close(5.0)


def test_a_failing_stdout_drops_and_counts_lines_then_recovers_on_a_probe(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="extauthz.decision_log")
    dropped: list[int] = []
    stream = GatedStream()
    stream.broken = True
    log = BackgroundDecisionLog(stream, on_drop=dropped.append)
    log.write(record(decision_id="a" * 32))
    wait_until(lambda: sum(dropped) == 1, "the failed write to be counted")
    with pytest.raises(DecisionLogFull):  # failing: refused until the next probe
        log.write(record(decision_id="b" * 32))
    stream.broken = False
    log._next_probe = 0.0  # the probe is due (it is once a second)
    log.write(record(decision_id="c" * 32))
    # Written, and the writer has finished with it (the failing state ends with it).
    wait_until(lambda: "c" * 32 in stream.getvalue() and log.pending == 0, "the probe line")
    log.write(record(decision_id="d" * 32))  # recovered: accepted at once
    assert log.close(5.0)
    assert ids_written(stream) == ["c" * 32, "d" * 32]
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("decision log cannot be written; lines are dropped and counted") == 1
    assert "decision log writes again" in messages


@settings(max_examples=2000, deadline=None)
@given(
    st.floats(min_value=946_684_800, max_value=4_102_444_800)  # 2000 to 2100
    | st.integers(946_684_800, 4_102_444_800).map(lambda s: s - 0.0005)
    | st.integers(946_684_800, 4_102_444_800).map(lambda s: s - 0.0000004)
    | st.integers(946_684_800, 4_102_444_800).map(lambda s: s + 0.9999996)
)
def test_the_line_timestamp_is_what_datetime_writes(now: float) -> None:
    # Made from a per-second prefix for speed; it must never differ from the plain way,
    # at a second's edge (where rounding to the microsecond carries into the next) least.
    expected = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
    assert timestamp(now) == expected


# --- lines from prepared parts (DecisionLines) ----------------------------------------------

# Mostly ASCII, as real lines are (only all-ASCII lines are made from parts), with the
# texts that must take the reference way or be cut now and then: often enough that a line
# made from parts meets them in its per-check members too.
_ascii_texts = st.text(st.sampled_from('ab-_:/."\\\n\x00 '), max_size=6)
_odd_texts = st.sampled_from(
    ["é", "\ud800", "a\ud800b", "x" * (MAX_FIELD_CHARS + 3), "y" * MAX_FIELD_CHARS]
)
_texts = st.integers(0, 9).flatmap(lambda n: _odd_texts if n == 9 else _ascii_texts)
_per_check_texts = _ascii_texts | _odd_texts
_maybe_texts = st.none() | _texts
_maybe_bools = st.sampled_from([None, True, False])
_identities = st.none() | st.builds(
    Identity,
    agent=_texts,
    user=_maybe_texts,
    actor_chain=st.lists(_texts, max_size=3).map(tuple),
    client_id=_maybe_texts,
    issuer=_texts,
    jti=_maybe_texts,
    scopes=st.frozensets(_texts, max_size=2),
)
_decisions = st.builds(
    Decision,
    reason=st.sampled_from(list(Reason)),
    identity=_identities,
    issuer=_maybe_texts,
    client_id=_maybe_texts,
    jti=_maybe_texts,
    resource=_maybe_texts,
    audience=_maybe_texts,
    permission=_maybe_texts,
    mcp_method=_maybe_texts,
    mcp_tool=_maybe_texts,
    agent_has=_maybe_bools,
    user_has=_maybe_bools,
    scope_has=_maybe_bools,
)
_requests = st.builds(
    RequestAttributes,
    method=_texts,
    host=_texts,
    path=_texts,
    headers=st.just({}),
    request_id=_texts,
    source=_texts,
)
_per_check = st.fixed_dictionaries(
    {
        "now": st.floats(946_684_800, 4_102_444_800),
        "decision_id": _per_check_texts | st.just("0123456789abcdef" * 2),
        "feed_age_s": st.none() | st.floats(0, 1e9),
        "request_id": _per_check_texts,
        "latency_us": st.integers(0, 10**9),
    }
)


@settings(max_examples=400, deadline=None)
@given(
    decision=_decisions,
    request=_requests,
    mode=st.sampled_from(["enforce", "dry_run"]),
    status=st.sampled_from([200, 401, 403, 503]),
    would_status=st.none() | st.sampled_from([200, 403]),
    feed_version=_maybe_texts,
    policy_version=_texts,
    checks=st.lists(_per_check, min_size=3, max_size=6),
)
def test_lines_from_prepared_parts_are_the_reference_lines_byte_for_byte(
    decision: Decision,
    request: RequestAttributes,
    mode: str,
    status: int,
    would_status: int | None,
    feed_version: str | None,
    policy_version: str,
    checks: list[dict[str, Any]],
) -> None:
    # The same decision over several checks: the second makes the parts, the later ones
    # use them, each with its own time, id, feed age, request id and latency.
    lines = DecisionLines()
    for check in checks:
        arguments: dict[str, Any] = {
            "now": check["now"],
            "decision_id": check["decision_id"],
            "decision": decision,
            "request": request._replace(request_id=check["request_id"]),
            "mode": mode,
            "status": status,
            "would_status": would_status,
            "feed_version": feed_version,
            "feed_age_s": check["feed_age_s"],
            "policy_version": policy_version,
            "latency_us": check["latency_us"],
        }
        assert lines.encode(**arguments) == encode_line(decision_record(**arguments))


def test_prepared_parts_are_kept_per_decision_and_bounded() -> None:
    lines = DecisionLines(max_entries=2)
    arguments = RECORD_ARGUMENTS
    for path in ("/tickets/1", "/tickets/1", "/tickets/2", "/tickets/3", "/tickets/3"):
        for latency_us in (87, 12345):
            changed = {
                **arguments,
                "request": REQUEST._replace(path=path),
                "latency_us": latency_us,
            }
            line = lines.encode(**changed)
            assert json.loads(line)["path"] == path
            assert json.loads(line)["latency_us"] == latency_us
            assert line == encode_line(decision_record(**changed))
        assert 1 <= len(lines._parts) <= 2
    # Made on a decision's second line and used from its third.
    assert any(isinstance(parts, tuple) for parts in lines._parts.values())


def test_a_decision_with_long_client_text_is_written_but_not_kept() -> None:
    # Kept parts keep the request's text alive: a long path must not be held on to.
    lines = DecisionLines()
    request = REQUEST._replace(path="/" + "p" * 5000)
    arguments = {**RECORD_ARGUMENTS, "request": request}
    for _ in range(3):
        assert lines.encode(**arguments) == encode_line(decision_record(**arguments))
    assert lines._parts == {}
    lines.encode(**{**arguments, "request": REQUEST})
    assert len(lines._parts) == 1
