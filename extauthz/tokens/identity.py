"""Who a verified token speaks for: the agent, the user (if any), the actor chain, the scope.

The agent is the current actor ``act.sub`` when ``act`` is present (RFC 8693 §4.1), else
``client_id`` (RFC 9068 §2.2), else ``azp``. A token whose ``sub`` is the agent itself has
no user: the agent acts autonomously (RFC 9068 §2.2, client credentials).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from extauthz.errors import Reason, TokenRejected
from extauthz.model import Identity


def identity_from_claims(claims: Mapping[str, Any], issuer: str) -> Identity:
    """Build the identity. Raises TokenRejected (agent_missing, token_malformed for an
    ``act``, ``scope`` or ``scp`` of the wrong shape). The chain's depth is bounded by the
    decision, after the current actor is checked, as the contract's order says."""
    chain = _actor_chain(claims.get("act")) if "act" in claims else ()
    client_id = _optional_string(claims, "client_id")
    if chain:
        agent = chain[0]
    else:
        agent = client_id or _optional_string(claims, "azp") or ""
        if not agent:
            raise TokenRejected(Reason.AGENT_MISSING, "no act, client_id or azp claim")
        chain = (agent,)
    sub = claims["sub"]
    return Identity(
        agent=agent,
        user=None if sub == agent else sub,
        actor_chain=chain,
        client_id=client_id,
        issuer=issuer,
        jti=_optional_string(claims, "jti"),
        scopes=_scopes(claims),
    )


def _actor_chain(act: object) -> tuple[str, ...]:
    chain: list[str] = []
    while act is not None:
        if not isinstance(act, dict):
            raise TokenRejected(Reason.TOKEN_MALFORMED, "'act' must be an object")
        actor = act.get("sub")
        if not isinstance(actor, str) or not actor:
            raise TokenRejected(Reason.TOKEN_MALFORMED, "'act.sub' must be a non-empty string")
        chain.append(actor)
        act = act.get("act")
    return tuple(chain)


def _optional_string(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise TokenRejected(Reason.TOKEN_MALFORMED, f"{name!r} must be a string")
    return value


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    # RFC 9068 §2.2.3: "scope" is a space-delimited string; some IdPs send "scp" as a list.
    scope = claims.get("scope")
    if scope is not None:
        if not isinstance(scope, str):
            raise TokenRejected(Reason.TOKEN_MALFORMED, "'scope' must be a string")
        return frozenset(scope.split())
    scp = claims.get("scp")
    if scp is None:
        return frozenset()
    if isinstance(scp, str):
        return frozenset(scp.split())
    if isinstance(scp, list) and all(isinstance(s, str) for s in scp):
        return frozenset(scp)
    raise TokenRejected(Reason.TOKEN_MALFORMED, "'scp' must be a list of strings")
