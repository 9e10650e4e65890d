"""One JSON line per decision, on stdout.

The record is built field by field from the Decision and request attributes: it has no
field that could carry the token or any header value, so a token cannot leak into it.
Operational logs go to stderr (see ``logs.py``), so a collector can route the two apart.

``DecisionLog`` writes and flushes each line as it comes. The server uses
``BackgroundDecisionLog``: lines go to a writer thread that writes whatever has queued up
in one write and flush, so a slow or stalled collector never blocks the checks. Its queue
is bounded; when it is full the line is counted as dropped and, by default
(``decision_log.when_full: deny``), the check is refused, because an allow nobody can audit
is worse than a refused request. ``drop`` keeps answering instead.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TextIO

import orjson

from extauthz.model import Decision, RequestAttributes

FIELDS = (
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
)


def decision_record(
    *,
    now: float,
    decision_id: str,
    decision: Decision,
    request: RequestAttributes,
    mode: str,
    status: int,
    would_status: int | None,
    feed_version: str | None,
    feed_age_s: float | None,
    policy_version: str,
    latency_us: int,
) -> dict[str, Any]:
    """The decision line as a dict with the keys of ``FIELDS`` (plus ``would_status`` and
    ``mcp_method`` where they apply)."""
    identity = decision.identity
    record: dict[str, Any] = {
        "ts": timestamp(now),
        "decision_id": decision_id,
        "decision": "allow" if decision.allowed else "deny",
        "reason": decision.reason.value,
        "status": status,
        "mode": mode,
        "agent": identity.agent if identity else None,
        "actor_chain": list(identity.actor_chain) if identity else [],
        "user": identity.user if identity else None,
        "client_id": decision.client_id,
        "issuer": decision.issuer,
        "jti": decision.jti,
        "audience": decision.audience,
        "resource": decision.resource,
        "method": _bounded(request.method),
        "host": _bounded(request.host),
        "path": _bounded(request.path),
        "permission": decision.permission,
        "mcp_tool": decision.mcp_tool,
        "agent_has": decision.agent_has,
        "user_has": decision.user_has,
        "scope_has": decision.scope_has,
        "feed_version": feed_version,
        "feed_age_s": None if feed_age_s is None else round(feed_age_s, 3),
        "policy_version": policy_version,
        "request_id": _bounded(request.request_id),
        "source": request.source,
        "latency_us": latency_us,
    }
    if decision.mcp_method is not None:
        record["mcp_method"] = _bounded(decision.mcp_method)
    if would_status is not None:
        record["would_status"] = would_status
    return record


def timestamp(now: float) -> str:
    """``now`` as ISO 8601 in UTC to the millisecond, as
    ``datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")`` writes it (and
    rounds it: to the microsecond, half to even, then cut to the millisecond), with the
    date and time of day made once per second instead of once per line."""
    global _last_second
    second = math.floor(now)
    micros = round((now - second) * 1_000_000)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    last_second, prefix = _last_second
    if second != last_second:
        prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        # One assignment of the pair: a reader in another thread sees the old or the new.
        _last_second = (second, prefix)
    return prefix + _MILLIS_SUFFIX[micros // 1000]


# The second last written and its date and time of day. Lines come in time order, so one
# entry is enough.
_last_second: tuple[int, str] = (-1, "")
_MILLIS_SUFFIX = tuple(f".{millis:03d}+00:00" for millis in range(1000))


# Client-chosen text (host, path, method, request id, MCP method) is cut so that one request
# cannot write a line of tens of kilobytes.
MAX_FIELD_CHARS = 1024


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_FIELD_CHARS else text[:MAX_FIELD_CHARS] + "…"


class DecisionSink(Protocol):
    def write_line(self, line: str) -> None:
        """Record one encoded decision line. Raises OSError or ValueError when it cannot be
        kept."""
        ...


class DecisionLog:
    """Writes decision lines to a text stream (stdout in production)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, record: dict[str, Any]) -> None:
        self.write_line(encode_line(record))

    def write_line(self, line: str) -> None:
        self._stream.write(line)
        # Flushed per line: a collector must see each decision within a second, and a
        # crash must not take buffered audit lines with it.
        self._stream.flush()


def encode_line(record: dict[str, Any]) -> str:
    """One compact, ASCII-only JSON line. ASCII-only: a client-sent lone surrogate
    ("\ud800") must not make the line unwritable on a UTF-8 stream and so drop the audit
    record. orjson encodes in C; the rare line with non-ASCII text (or a surrogate, which
    orjson refuses) goes through the standard encoder, which escapes it."""
    try:
        encoded = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        encoded = b""
    if encoded and encoded.isascii():
        return encoded.decode("ascii")
    return json.dumps(record, separators=(",", ":")) + "\n"


_SEEN_ONCE = object()
_NOT_MADE = object()
# The members that differ from one check to the next, in the order the line has them.
_PER_CHECK = ("ts", "decision_id", "feed_age_s", "request_id", "latency_us")


class DecisionLines:
    """Writes exactly the line ``encode_line(decision_record(...))`` writes, from parts kept
    per distinct decision: a token that comes back makes the same decision, for the same
    route, over and over, and of its line only ``_PER_CHECK`` changes. Parts are kept only
    where every byte is ASCII; anything else takes the reference way. Bounded: when full,
    it starts over. Used by the event loop's thread only."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        # Per decision: its parts, or _SEEN_ONCE, or _NOT_MADE (a line not all ASCII).
        self._parts: dict[tuple[Any, ...], tuple[bytes, ...] | object] = {}

    def encode(
        self,
        *,
        now: float,
        decision_id: str,
        decision: Decision,
        request: RequestAttributes,
        mode: str,
        status: int,
        would_status: int | None,
        feed_version: str | None,
        feed_age_s: float | None,
        policy_version: str,
        latency_us: int,
    ) -> str:
        # Everything the line holds but its per-check members (the request's fields as
        # they came: the line's cut form follows from them).
        key = (
            decision,
            request.method,
            request.host,
            request.path,
            request.source,
            mode,
            status,
            would_status,
            feed_version,
            policy_version,
        )
        parts = self._parts.get(key)
        if isinstance(parts, tuple):
            try:
                line = b"".join(
                    (
                        parts[0],
                        b'"' + timestamp(now).encode("ascii") + b'"',
                        parts[1],
                        orjson.dumps(decision_id),
                        parts[2],
                        b"null" if feed_age_s is None else orjson.dumps(round(feed_age_s, 3)),
                        parts[3],
                        orjson.dumps(_bounded(request.request_id)),
                        parts[4],
                        b"%d" % latency_us,
                        parts[5],
                    )
                )
            except orjson.JSONEncodeError:
                line = b""
            if line.isascii() and line:
                return line.decode("ascii")
        record = decision_record(
            now=now,
            decision_id=decision_id,
            decision=decision,
            request=request,
            mode=mode,
            status=status,
            would_status=would_status,
            feed_version=feed_version,
            feed_age_s=feed_age_s,
            policy_version=policy_version,
            latency_us=latency_us,
        )
        if parts is None and _client_chars(decision, request) <= _MAX_KEPT_CLIENT_CHARS:
            # Made the second time a decision comes: one seen only once (a token used
            # for a single request) costs a dict entry, not the cutting up of its line.
            if len(self._parts) >= self.max_entries:
                self._parts.clear()
            self._parts[key] = _SEEN_ONCE
        elif parts is _SEEN_ONCE:
            self._parts[key] = _line_parts(record) or _NOT_MADE
        return encode_line(record)


# The key keeps the client's own text alive: only short text is kept, so that requests with
# long paths or method names cannot make these entries hold megabytes.
_MAX_KEPT_CLIENT_CHARS = 512


def _client_chars(decision: Decision, request: RequestAttributes) -> int:
    return (
        len(request.method)
        + len(request.host)
        + len(request.path)
        + len(request.source)
        + len(decision.mcp_method or "")
        + len(decision.mcp_tool or "")
    )


def _line_parts(record: dict[str, Any]) -> tuple[bytes, ...] | None:
    """The record's line cut around its ``_PER_CHECK`` members: the text before each of
    their values (its name included) and the text after the last. None unless all ASCII."""
    parts: list[bytes] = []
    members: list[bytes] = []
    per_check: list[str] = []
    try:
        for name, value in record.items():
            if name in _PER_CHECK:
                per_check.append(name)
                opening = b"{" if not parts else b","
                parts.append(
                    opening + b"".join(m + b"," for m in members) + b'"%s":' % name.encode()
                )
                members = []
            else:
                # A member as orjson writes it inside the whole object: {"name":value}.
                members.append(orjson.dumps({name: value})[1:-1])
    except orjson.JSONEncodeError:
        return None
    parts.append(b"".join(b"," + m for m in members) + b"}\n")
    if tuple(per_check) != _PER_CHECK or not all(part.isascii() for part in parts):
        return None
    return tuple(parts)


WhenFull = Literal["deny", "drop"]
log = logging.getLogger("extauthz.decision_log")


class DecisionLogFull(OSError):
    """The writer is behind by its whole queue (or cannot write at all): the line is lost."""


# Lines written per write() call at most, so one batch stays a few megabytes.
_BATCH_LINES = 4096
_PROBE_INTERVAL = 1.0
# How long a line waits for the writer at most (plus the write itself). Each wake-up takes
# the GIL from a busy event loop, which costs both threads far more under load than the
# write: at 5 ms the writer cost 15-18 µs of CPU per check at 2,500 checks/s, at 50 ms 3 µs.
_WRITE_INTERVAL = 0.05


class BackgroundDecisionLog:
    def __init__(
        self,
        stream: TextIO,
        *,
        max_pending: int = 10_000,
        when_full: WhenFull = "deny",
        on_drop: Callable[[int], None] = lambda count: None,
        interval: float = _WRITE_INTERVAL,
    ) -> None:
        self._stream = stream
        self.max_pending = max_pending
        self.when_full = when_full
        self._on_drop = on_drop
        self._interval = interval
        # append() and popleft() of a deque are atomic: the checks add lines and the
        # writer takes them with no lock and no wake-up per line.
        self._lines: collections.deque[str] = collections.deque()
        # Each counter has one writer (the checks, or the writer thread), so no lock.
        self._queued = 0
        self._done = 0
        self._failing = False
        self._next_probe = 0.0
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Lines handed over and not yet written (or dropped)."""
        return self._queued - self._done

    def write(self, record: dict[str, Any]) -> None:
        self.write_line(encode_line(record))

    def write_line(self, line: str) -> None:
        """Queue one line. Raises DecisionLogFull when the line cannot be kept and
        ``when_full`` is deny; with drop, the line is counted and the call returns."""
        if self.pending >= self.max_pending or (self._failing and not self._probe_due()):
            self._on_drop(1)
            if self.when_full == "deny":
                raise DecisionLogFull("decision log writer is behind or failing")
            return
        self._queued += 1
        self._lines.append(line)

    def _probe_due(self) -> bool:
        """While writes fail, one line a second still goes to the writer: the one that
        finds the stream writable again ends the failing state."""
        now = time.monotonic()
        if now < self._next_probe:
            return False
        self._next_probe = now + _PROBE_INTERVAL
        return True

    def close(self, timeout: float) -> bool:
        """Write what is queued, then stop the thread. True when all was written in time."""
        self._closing.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        # Woken by a timer, not by every line: under load one write and flush carries
        # hundreds of lines, and the checks never pay for waking this thread.
        while True:
            closing = self._closing.wait(self._interval)
            while self._lines:
                batch: list[str] = []
                while self._lines and len(batch) < _BATCH_LINES:
                    batch.append(self._lines.popleft())
                self._write(batch)
            if closing:
                return

    def _write(self, batch: list[str]) -> None:
        try:
            self._stream.write("".join(batch))
            self._stream.flush()
        except (OSError, ValueError) as err:
            self._on_drop(len(batch))
            if not self._failing:
                self._next_probe = time.monotonic() + _PROBE_INTERVAL
                log.error(
                    "decision log cannot be written; lines are dropped and counted",
                    extra={"error": str(err), "lines": len(batch)},
                )
            self._failing = True
        else:
            if self._failing:
                log.info("decision log writes again")
            self._failing = False
        finally:
            self._done += len(batch)
