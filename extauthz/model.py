"""Plain value types that cross module boundaries. No Envoy or gRPC types in here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from extauthz.errors import Reason


class RequestAttributes(NamedTuple):
    """What the decision needs to know about one HTTP request, taken from Envoy's CheckRequest.

    ``path`` is the path without the query string, undecoded. ``headers`` has lower-case names.
    A named tuple, like ``Decision``: made on every check, and a frozen dataclass costs
    several times as much to build.
    """

    method: str
    host: str
    path: str
    headers: Mapping[str, str]
    body: bytes | None = None
    body_truncated: bool = False
    request_id: str = ""
    source: str = ""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling, as established from a verified token.

    ``actor_chain`` lists actor ids, current actor first (RFC 8693 nesting order).
    ``user`` is None for an autonomous agent (its token's ``sub`` is the agent itself).
    """

    agent: str
    user: str | None
    actor_chain: tuple[str, ...]
    client_id: str | None
    issuer: str
    jti: str | None
    scopes: frozenset[str]


class Decision(NamedTuple):
    """The outcome of one check, with everything an auditor needs to know why.

    Fields that were not reached stay None (e.g. ``user_has`` for an autonomous agent, or
    everything past the token for a token that failed verification). Immutable; a named
    tuple because one or two are built per check.
    """

    reason: Reason
    identity: Identity | None = None
    # Claims read before the identity was complete, so a denied line still says what it could.
    issuer: str | None = None
    client_id: str | None = None
    jti: str | None = None
    resource: str | None = None
    audience: str | None = None
    permission: str | None = None
    mcp_method: str | None = None
    mcp_tool: str | None = None
    agent_has: bool | None = None
    user_has: bool | None = None
    scope_has: bool | None = None
    lacking: tuple[str, ...] = ()
    # Not audited: the issuer whose keys to fetch again before this deny is final.
    refetch_keys_of: str | None = None

    @property
    def allowed(self) -> bool:
        return self.reason is Reason.ALLOWED
