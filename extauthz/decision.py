"""The decision core: one request in, one Decision out. Pure: no I/O, no clock, no gRPC.

Allowed only when the required permission is granted by the agent's configured
permissions AND (for a delegated call) the user's current permissions from the feed AND
the token's scope. Steps run in the contract's fixed order:
token → revocation → agent → chain → user → route → permissions.

``decide`` is two stages that the service times apart: ``authenticate`` (token and
revocation) and ``authorize`` (the rest).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from extauthz.config import AgentConfig, Config
from extauthz.errors import (
    AccessForbidden,
    Denied,
    Reason,
    ServiceUnavailable,
    TokenRejected,
)
from extauthz.feed.cache import FeedState
from extauthz.model import Decision, Identity, RequestAttributes
from extauthz.permissions import GrantSet
from extauthz.routes import McpToolUnknown, Resource, RouteMatch, match_route
from extauthz.tokens.cache import VerifiedToken, VerifiedTokens
from extauthz.tokens.identity import identity_from_claims
from extauthz.tokens.keys import KeySet
from extauthz.tokens.verify import (
    bearer_token,
    validate_claim_times,
    validate_claims,
    verify_signature,
)


@dataclass(frozen=True, slots=True)
class PolicyView:
    """Everything a decision reads, taken once per request so a reload mid-request
    cannot mix two configs or two feeds."""

    config: Config
    key_sets: Mapping[str, KeySet]
    feed: FeedState
    # Verifications already done under this config and these keys (None: no memo).
    verified_tokens: VerifiedTokens | None = None


class _Trace:
    """What the steps established so far, so that a deny still records it. Mutable and
    local to one call; turned into the immutable Decision once, at the end."""

    __slots__ = (
        "agent_has",
        "audience",
        "client_id",
        "identity",
        "issuer",
        "jti",
        "lacking",
        "mcp_method",
        "mcp_tool",
        "permission",
        "resource",
        "routes",
        "scope_has",
        "user_has",
        "verified",
    )

    def __init__(self, routes: Resource | None) -> None:
        self.routes = routes
        self.resource = routes.name if routes else None
        self.audience = routes.audience if routes else None
        # Set by authenticate once the token passed.
        self.verified: VerifiedToken | None = None
        self.identity: Identity | None = None
        self.issuer: str | None = None
        self.client_id: str | None = None
        self.jti: str | None = None
        self.permission: str | None = None
        self.mcp_method: str | None = None
        self.mcp_tool: str | None = None
        self.agent_has: bool | None = None
        self.user_has: bool | None = None
        self.scope_has: bool | None = None
        self.lacking: tuple[str, ...] = ()

    def decision(self, reason: Reason, refetch_keys_of: str | None = None) -> Decision:
        # Positional, in Decision's field order: keywords cost three times as much here.
        return Decision(
            reason,
            self.identity,
            self.issuer,
            self.client_id,
            self.jti,
            self.resource,
            self.audience,
            self.permission,
            self.mcp_method,
            self.mcp_tool,
            self.agent_has,
            self.user_has,
            self.scope_has,
            self.lacking,
            refetch_keys_of,
        )


def decide(request: RequestAttributes, view: PolicyView, now: float) -> Decision:
    """Decide one request. Never raises for bad input: every refusal is a Decision."""
    authenticated = authenticate(request, view, now)
    if isinstance(authenticated, Decision):
        return authenticated
    return authorize(authenticated, request, view, now)


def authenticate(request: RequestAttributes, view: PolicyView, now: float) -> _Trace | Decision:
    """The first stage: the bearer token (signature, claims) and its revocation. A deny is
    the Decision; otherwise what ``authorize`` goes on from."""
    config = view.config
    trace = _Trace(config.resources.resource_for_host(request.host))
    try:
        token = bearer_token(request.headers.get("authorization"))
        cache = view.verified_tokens
        verified = cache.get(token) if cache is not None else None
        if verified is None:
            signed = verify_signature(token, config.issuers, view.key_sets, config.tokens)
            verified = VerifiedToken(
                signed, _claim_str(signed.claims, "client_id"), _claim_str(signed.claims, "jti")
            )
            if cache is not None:
                cache.put(token, verified)
        signed = verified.signed
        trace.issuer, trace.client_id, trace.jti = signed.issuer, verified.client_id, verified.jti
        times = verified.claim_times
        if times is not None and times.audience == trace.audience:
            validate_claim_times(times, config.tokens, now)
        else:
            verified.claim_times = validate_claims(
                signed.claims, config.tokens, trace.audience, now
            )
        _check_not_revoked(trace.jti, signed.issuer, view.feed, config)
    except Denied as denied:
        return trace.decision(denied.reason, denied.refetch_keys_of)
    trace.verified = verified
    return trace


def authorize(trace: _Trace, request: RequestAttributes, view: PolicyView, now: float) -> Decision:
    """The second stage, for a request ``authenticate`` passed: agent, delegation chain,
    user, route and the three-way permission check."""
    config = view.config
    verified = trace.verified
    assert verified is not None, "authorize needs a request that authenticate passed"
    signed = verified.signed
    try:
        identity = verified.identity
        if identity is None:  # claims alone decide it: established once per token
            identity = verified.identity = identity_from_claims(signed.claims, signed.issuer)
        trace.identity = identity
        disabled_agents = view.feed.snapshot.disabled_agents if view.feed.snapshot else frozenset()
        actors = _authorized_actors(identity, signed.claims, config, disabled_agents)
        user_grants = _user_grants(identity, view.feed, config, now)
        resource = trace.routes
        if resource is None:
            raise AccessForbidden(Reason.ROUTE_UNKNOWN, f"no resource for host {request.host!r}")
        try:
            match = match_route(resource, request)
        except McpToolUnknown as unknown:
            trace.mcp_method, trace.mcp_tool = "tools/call", unknown.tool
            raise
        trace.permission, trace.mcp_method, trace.mcp_tool = (
            match.permission,
            match.mcp_method,
            match.mcp_tool,
        )
        if verified.scope_grants is None:
            verified.scope_grants = GrantSet(identity.scopes)
        reason = _check_permission(trace, match, actors, user_grants, verified.scope_grants)
        return trace.decision(reason)
    except Denied as denied:
        return trace.decision(denied.reason, denied.refetch_keys_of)


def _check_not_revoked(jti: str | None, issuer: str, feed: FeedState, config: Config) -> None:
    # Token ids are unique per issuer, and the feed speaks for one issuer. The last good
    # snapshot's revocations hold even when it is stale: they are never less true later.
    snapshot = feed.snapshot
    if (
        jti is not None
        and snapshot is not None
        and issuer == config.feed.issuer
        and jti in snapshot.revoked_tokens
    ):
        raise TokenRejected(Reason.TOKEN_REVOKED, "the token's jti is revoked")


def _authorized_actors(
    identity: Identity,
    claims: Mapping[str, object],
    config: Config,
    disabled_agents: frozenset[str],
) -> tuple[AgentConfig, ...]:
    """The agents whose permissions bound this call: the current actor, or with
    ``delegation: intersect`` every actor in the chain."""
    agent = _registered_agent(identity.agent, identity.issuer, config, disabled_agents)
    _check_mode(agent, identity)
    max_depth = config.tokens.max_delegation_depth
    if "act" in claims and len(identity.actor_chain) > max_depth:
        raise TokenRejected(Reason.DELEGATION_TOO_DEEP, f"more than {max_depth} actors")
    if config.tokens.delegation != "intersect":
        return (agent,)
    prior = tuple(
        _registered_agent(a, identity.issuer, config, disabled_agents)
        for a in identity.actor_chain[1:]
    )
    for actor in prior:
        _check_mode(actor, identity)
    return (agent, *prior)


def _check_mode(agent: AgentConfig, identity: Identity) -> None:
    if identity.user is None:
        if not agent.autonomous:
            raise AccessForbidden(Reason.AGENT_NOT_AUTONOMOUS, f"{agent.id} may not act alone")
    elif not agent.delegated:
        raise AccessForbidden(Reason.AGENT_NOT_DELEGATED, f"{agent.id} may not act for users")


def _registered_agent(
    agent_id: str, issuer: str, config: Config, disabled_agents: frozenset[str]
) -> AgentConfig:
    agent = config.agents.get(agent_id)
    # An agent is a client of one issuer: another issuer naming the same id is not it.
    if agent is None or agent.issuer != issuer:
        raise TokenRejected(Reason.AGENT_UNKNOWN, f"agent {agent_id!r} is not registered")
    # Disabled in the config, or by the feed (which suspends without a config change).
    if agent.disabled or agent_id in disabled_agents:
        raise TokenRejected(Reason.AGENT_DISABLED, f"agent {agent_id!r} is disabled")
    return agent


def _user_grants(
    identity: Identity, feed: FeedState, config: Config, now: float
) -> GrantSet | None:
    if identity.user is None:
        return None
    if feed.snapshot is None or not feed.is_fresh(now, config.feed.max_staleness):
        raise ServiceUnavailable(Reason.FEED_STALE, "user-permission feed is stale")
    # The feed speaks for the users of one issuer; another issuer's "alice" is not them.
    entry = (
        feed.snapshot.users.get(identity.user) if identity.issuer == config.feed.issuer else None
    )
    if entry is None:
        raise AccessForbidden(Reason.USER_UNKNOWN, "user is not in the feed")
    if entry.disabled:
        raise TokenRejected(Reason.USER_DISABLED, "user is disabled")
    return entry.permissions


def _check_permission(
    trace: _Trace,
    match: RouteMatch,
    actors: tuple[AgentConfig, ...],
    user_grants: GrantSet | None,
    scope_grants: GrantSet,
) -> Reason:
    """Record each side's answer on ``trace``; the reason names the first side lacking."""
    permission = match.permission
    if permission is None:
        # MCP methods other than tools/call need a valid token and agent, nothing more.
        return Reason.ALLOWED
    if len(actors) == 1:
        agent_has = actors[0].permissions.grants_permission(permission)
    else:
        agent_has = all(a.permissions.grants_permission(permission) for a in actors)
    user_has = None if user_grants is None else user_grants.grants_permission(permission)
    scope_has = scope_grants.grants_permission(permission)
    trace.agent_has, trace.user_has, trace.scope_has = agent_has, user_has, scope_has
    if not agent_has or user_has is False or not scope_has:
        trace.lacking = tuple(
            side
            for side, has in (("agent", agent_has), ("user", user_has), ("scope", scope_has))
            if has is False
        )
    if not agent_has:
        return Reason.AGENT_LACKS_PERMISSION
    if user_has is False:
        return Reason.USER_LACKS_PERMISSION
    if not scope_has:
        return Reason.SCOPE_LACKS_PERMISSION
    return Reason.ALLOWED


def _claim_str(claims: Mapping[str, object], name: str) -> str | None:
    value = claims.get(name)
    return value if isinstance(value, str) else None
