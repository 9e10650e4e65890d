"""One error tree for the whole service, and the table from reason code to HTTP answer.

Reason codes are a public contract: the same string is the decision-log ``reason``, the
``reason`` label of ``extauthz_decisions_total`` and what dashboards and alerts key on.
Client faults (a bad token: 401, missing rights: 403, a malformed request: 400) are kept
apart from our own faults (stale feed, no keys: 503), as RFC 6750 and the anchors do.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    ALLOWED = "allowed"
    TOKEN_MISSING = "token_missing"
    TOKEN_MALFORMED = "token_malformed"
    TOKEN_INVALID_SIGNATURE = "token_invalid_signature"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_NOT_YET_VALID = "token_not_yet_valid"
    TOKEN_WRONG_ISSUER = "token_wrong_issuer"
    TOKEN_WRONG_AUDIENCE = "token_wrong_audience"
    TOKEN_WRONG_TYPE = "token_wrong_type"
    TOKEN_LIFETIME_TOO_LONG = "token_lifetime_too_long"
    TOKEN_ALGORITHM_NOT_ALLOWED = "token_algorithm_not_allowed"
    TOKEN_CLAIM_MISSING = "token_claim_missing"
    TOKEN_BINDING_UNSUPPORTED = "token_binding_unsupported"
    TOKEN_REVOKED = "token_revoked"
    KEY_UNKNOWN = "key_unknown"
    KEYS_UNAVAILABLE = "keys_unavailable"
    AGENT_MISSING = "agent_missing"
    AGENT_UNKNOWN = "agent_unknown"
    AGENT_DISABLED = "agent_disabled"
    AGENT_NOT_DELEGATED = "agent_not_delegated"
    AGENT_NOT_AUTONOMOUS = "agent_not_autonomous"
    DELEGATION_TOO_DEEP = "delegation_too_deep"
    USER_UNKNOWN = "user_unknown"
    USER_DISABLED = "user_disabled"
    ROUTE_UNKNOWN = "route_unknown"
    MCP_REQUEST_INVALID = "mcp_request_invalid"
    MCP_TOOL_UNKNOWN = "mcp_tool_unknown"
    AGENT_LACKS_PERMISSION = "agent_lacks_permission"
    USER_LACKS_PERMISSION = "user_lacks_permission"
    SCOPE_LACKS_PERMISSION = "scope_lacks_permission"
    FEED_STALE = "feed_stale"
    DECISION_LOG_UNAVAILABLE = "decision_log_unavailable"
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a reason is answered: HTTP status and the RFC 6750 ``error`` code (if any)."""

    status: int
    bearer_error: str | None
    # The 403s that concern a permission carry scope="<required>" in the challenge.
    names_scope: bool = False


_INVALID_TOKEN = Outcome(401, "invalid_token")
_INSUFFICIENT_SCOPE = Outcome(403, "insufficient_scope", names_scope=True)

OUTCOMES: dict[Reason, Outcome] = {
    Reason.ALLOWED: Outcome(200, None),
    Reason.TOKEN_MISSING: Outcome(401, None),
    Reason.TOKEN_MALFORMED: _INVALID_TOKEN,
    Reason.TOKEN_INVALID_SIGNATURE: _INVALID_TOKEN,
    Reason.TOKEN_EXPIRED: _INVALID_TOKEN,
    Reason.TOKEN_NOT_YET_VALID: _INVALID_TOKEN,
    Reason.TOKEN_WRONG_ISSUER: _INVALID_TOKEN,
    Reason.TOKEN_WRONG_AUDIENCE: _INVALID_TOKEN,
    Reason.TOKEN_WRONG_TYPE: _INVALID_TOKEN,
    Reason.TOKEN_LIFETIME_TOO_LONG: _INVALID_TOKEN,
    Reason.TOKEN_ALGORITHM_NOT_ALLOWED: _INVALID_TOKEN,
    Reason.TOKEN_CLAIM_MISSING: _INVALID_TOKEN,
    Reason.TOKEN_BINDING_UNSUPPORTED: _INVALID_TOKEN,
    Reason.TOKEN_REVOKED: _INVALID_TOKEN,
    Reason.KEY_UNKNOWN: _INVALID_TOKEN,
    Reason.AGENT_MISSING: _INVALID_TOKEN,
    Reason.AGENT_UNKNOWN: _INVALID_TOKEN,
    Reason.AGENT_DISABLED: _INVALID_TOKEN,
    Reason.USER_DISABLED: _INVALID_TOKEN,
    Reason.DELEGATION_TOO_DEEP: _INVALID_TOKEN,
    Reason.AGENT_LACKS_PERMISSION: _INSUFFICIENT_SCOPE,
    Reason.USER_LACKS_PERMISSION: _INSUFFICIENT_SCOPE,
    Reason.SCOPE_LACKS_PERMISSION: _INSUFFICIENT_SCOPE,
    Reason.AGENT_NOT_DELEGATED: _INSUFFICIENT_SCOPE,
    Reason.AGENT_NOT_AUTONOMOUS: _INSUFFICIENT_SCOPE,
    Reason.USER_UNKNOWN: _INSUFFICIENT_SCOPE,
    Reason.MCP_TOOL_UNKNOWN: _INSUFFICIENT_SCOPE,
    Reason.ROUTE_UNKNOWN: Outcome(403, "insufficient_scope"),
    Reason.MCP_REQUEST_INVALID: Outcome(400, "invalid_request"),
    Reason.FEED_STALE: Outcome(503, None),
    Reason.KEYS_UNAVAILABLE: Outcome(503, None),
    Reason.DECISION_LOG_UNAVAILABLE: Outcome(503, None),
    Reason.INTERNAL_ERROR: Outcome(500, None),
}


class ExtauthzError(Exception):
    """Root of every error extauthz raises on purpose."""


class ConfigError(ExtauthzError):
    """A configuration file is unreadable or invalid. Names the file, the key and the problem."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {problem}")


class FeedError(ExtauthzError):
    """A user-permission feed could not be read or failed validation; the last good one stays."""


class KeysError(ExtauthzError):
    """An issuer's keys could not be fetched or were invalid; the last good ones stay."""


class Denied(ExtauthzError):
    """A request is refused. ``reason`` fixes the status and challenge through ``OUTCOMES``.

    ``detail`` says what exactly failed, for operators reading the exception and for tests;
    it is never sent to the client.
    """

    def __init__(
        self, reason: Reason, detail: str = "", *, refetch_keys_of: str | None = None
    ) -> None:
        self.reason = reason
        self.detail = detail
        # The configured issuer whose keys lacked what the token needs: fetching that
        # issuer's keys again may turn this deny into an answer (key rotation).
        self.refetch_keys_of = refetch_keys_of
        super().__init__(f"{reason}: {detail}" if detail else str(reason))

    @property
    def outcome(self) -> Outcome:
        return OUTCOMES[self.reason]


class TokenRejected(Denied):
    """The token, or a principal it names, cannot be trusted (401)."""


class AccessForbidden(Denied):
    """A trusted principal lacks the rights the request needs (403)."""


class RequestInvalid(Denied):
    """The request itself is malformed, e.g. an MCP body that is not JSON-RPC (400)."""


class ServiceUnavailable(Denied):
    """We cannot decide safely right now: stale feed, no keys (503). Our fault, not the client's."""
