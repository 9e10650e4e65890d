"""One JSON line per decision, on stdout, flushed as written.

The record is built field by field from the Decision and request attributes: it has no
field that could carry the token or any header value, so a token cannot leak into it.
Operational logs go to stderr (see ``logs.py``), so a collector can route the two apart.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, TextIO

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
        "ts": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
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


# Client-chosen text (host, path, method, request id, MCP method) is cut so that one request
# cannot write a line of tens of kilobytes.
MAX_FIELD_CHARS = 1024


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_FIELD_CHARS else text[:MAX_FIELD_CHARS] + "…"


class DecisionLog:
    """Writes decision lines to a text stream (stdout in production)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, record: dict[str, Any]) -> None:
        self._stream.write(encode_line(record))
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
