"""The decision core as a table: every reason (but internal_error) reached at least once,
plus the recorded fields, wildcard grants, intersect mode, check order and garbage input."""

from __future__ import annotations

import base64
import dataclasses
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from jwt.algorithms import get_default_algorithms

from extauthz.config import Config
from extauthz.decision import PolicyView, _Trace, authenticate, decide
from extauthz.demo.issuer import LocalIssuer
from extauthz.errors import Reason
from extauthz.feed.cache import FeedState
from extauthz.feed.snapshot import FeedSnapshot, UserEntry
from extauthz.model import Decision, Identity, RequestAttributes
from extauthz.permissions import GrantSet
from extauthz.tokens.cache import VerifiedTokens
from extauthz.tokens.keys import KeySet, parse_jwks

ISS = "https://idp.example.test"
NO_KEYS = "https://nokeys.example.test"
EVIL = "https://evil.example.test"
NOW = 1_800_000_000.0
MAX_STALENESS = 120.0
RS256 = get_default_algorithms()["RS256"]

TICKETS = "tickets.example.test"
TICKETS_AUD = "https://tickets.example.test"
MCP = "mcp.example.test"
MCP_AUD = "https://mcp.example.test/mcp"
REPORTS = "reports.example.test:8443"
REPORTS_AUD = "https://reports.example.test"
# RFC 9449 / RFC 8705 confirmation values (the SHA-256 thumbprint of a key or certificate).
DPOP_JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
MTLS_X5T = "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"

CONFIG: dict[str, Any] = {
    "issuers": [
        {"issuer": ISS, "algorithms": ["RS256", "ES256", "EdDSA"], "jwks_file": "keys/idp.json"},
        {"issuer": NO_KEYS, "algorithms": ["RS256"], "jwks_file": "keys/none.json"},
    ],
    "tokens": {"typ": "at+jwt", "max_lifetime": "1h", "leeway": "30s", "max_delegation_depth": 2},
    "agents": [
        # Acts for users only.
        {
            "issuer": ISS,
            "id": "helpdesk-bot",
            "permissions": ["tickets:read", "tickets:comment", "docs:search"],
        },
        # Acts alone only.
        {
            "issuer": ISS,
            "id": "nightly-reporter",
            "permissions": ["reports:write", "tickets:read"],
            "delegated": False,
            "autonomous": True,
        },
        {"issuer": ISS, "id": "retired-bot", "permissions": ["tickets:read"], "disabled": True},
        # Enabled in the config; the feed suspends it.
        {"issuer": ISS, "id": "suspended-bot", "permissions": ["tickets:read"], "autonomous": True},
        # Wildcards; both delegated and autonomous.
        {
            "issuer": ISS,
            "id": "ops-bot",
            "permissions": ["tickets:*", "docs:*"],
            "autonomous": True,
        },
        # An orchestrator that delegates to sub-agents; no tickets:comment.
        {"issuer": ISS, "id": "planner", "permissions": ["tickets:read", "docs:search"]},
    ],
    "resources": [
        {
            "name": "tickets",
            "hosts": [TICKETS],
            "audience": TICKETS_AUD,
            "routes": [
                {"method": "GET", "path": "/tickets/{id}", "permission": "tickets:read"},
                {"method": "DELETE", "path": "/tickets/{id}", "permission": "tickets:delete"},
                {
                    "method": "POST",
                    "path": "/tickets/{id}/comments",
                    "permission": "tickets:comment",
                },
                {
                    "method": "PUT",
                    "path": "/tickets/{id}/attachments/{name}",
                    "permission": "tickets:attachments:write",
                },
            ],
        },
        {
            "name": "docs-mcp",
            "hosts": [MCP],
            "audience": MCP_AUD,
            "routes": [
                {
                    "method": "POST",
                    "path": "/mcp",
                    "mcp_tools": {"search_docs": "docs:search", "delete_doc": "docs:delete"},
                }
            ],
        },
        {
            "name": "reports",
            "hosts": [REPORTS],
            "audience": REPORTS_AUD,
            "routes": [{"method": "POST", "path": "/reports", "permission": "reports:write"}],
        },
    ],
    "feed": {
        "source": "feed/users.json",
        "issuer": ISS,
        "refresh": "10s",
        "max_staleness": "2m",
    },
}

SNAPSHOT = FeedSnapshot(
    "42",
    {
        "alice": UserEntry(GrantSet(["tickets:read", "tickets:comment", "docs:search"])),
        "bob": UserEntry(GrantSet(["tickets:read"]), disabled=True),
        "carol": UserEntry(GrantSet(["tickets:*", "docs:*"])),
        "dave": UserEntry(GrantSet(["docs:search"])),
    },
    disabled_agents=frozenset({"suspended-bot"}),
    revoked_tokens={"revoked-jti": NOW + 300},
)


def feed_state(name: str, now: float) -> FeedState:
    """A feed refreshed 5 s before ``now`` ("fresh"), just past max_staleness ("stale"), or
    never loaded ("none")."""
    if name == "fresh":
        return FeedState(SNAPSHOT, now - 5)
    if name == "stale":
        return FeedState(SNAPSHOT, now - MAX_STALENESS - 1)
    return FeedState()


FeedName = Literal["fresh", "stale", "none"]
DelegationMode = Literal["current_actor", "intersect"]


# --- tokens ------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(value: object) -> str:
    return b64url(json.dumps(value).encode())


class Mint:
    """Tokens from the trusted LocalIssuer, at NOW. Defaults: alice via helpdesk-bot, for
    the tickets API, scope tickets:read and tickets:comment. A claim set to None is removed."""

    def __init__(self, issuer: LocalIssuer) -> None:
        self.issuer = issuer

    def __call__(
        self,
        *,
        sub: str = "alice",
        client_id: str | None = "helpdesk-bot",
        audience: str | list[str] = TICKETS_AUD,
        scope: str | None = "tickets:read tickets:comment",
        **claims: Any,
    ) -> str:
        return self.issuer.token(
            sub=sub, client_id=client_id, audience=audience, scope=scope, now=NOW, **claims
        )

    def autonomous(self, agent: str, **claims: Any) -> str:
        return self(sub=agent, client_id=agent, **claims)

    def unsigned(self, **claims: Any) -> str:
        """alg none, built by hand."""
        header = {"alg": "none", "typ": "at+jwt", "kid": "rsa-1"}
        return f"{b64json(header)}.{self(**claims).split('.')[1]}."

    def resigned(self, header: dict[str, Any], **claims: Any) -> str:
        """A token with a hand-made header, validly signed with the issuer's RSA key."""
        body = self(**claims).split(".")[1]
        signing_input = f"{b64json({'alg': 'RS256', 'typ': 'at+jwt', **header})}.{body}"
        signature = RS256.sign(signing_input.encode(), self.issuer.keys["rsa-1"])
        return f"{signing_input}.{b64url(signature)}"

    def tampered(self, **claims: Any) -> str:
        """A genuine token whose payload was changed after signing."""
        head, body, signature = self().split(".")
        original = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        return f"{head}.{b64json({**original, **claims})}.{signature}"


def chain(*actors: str) -> dict[str, Any]:
    """``chain("a", "b")`` → ``{"sub": "a", "act": {"sub": "b"}}`` (current actor first)."""
    act: dict[str, Any] | None = None
    for actor in reversed(actors):
        act = {"sub": actor} if act is None else {"sub": actor, "act": act}
    assert act is not None
    return act


# --- the table ---------------------------------------------------------------------------


def tools_call(name: str | None, **extra: Any) -> bytes:
    params: dict[str, Any] = {} if name is None else {"name": name, "arguments": {}}
    return json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params, **extra}
    ).encode()


def rpc(method: str) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": {}}).encode()


@dataclass(frozen=True)
class Case:
    expect: Reason
    # None sends no Authorization header (unless ``authorization`` is set).
    token: Callable[[Mint], str] | None = lambda m: m()
    authorization: str | None = None
    method: str = "GET"
    host: str = TICKETS
    path: str = "/tickets/42"
    body: bytes | None = None
    body_truncated: bool = False
    feed: FeedName = "fresh"
    delegation: DelegationMode = "current_actor"
    now: float = NOW


def mcp_case(expect: Reason, body: bytes | None, *, scope: str = "docs:search", **kw: Any) -> Case:
    return Case(
        expect,
        token=lambda m: m(audience=MCP_AUD, scope=scope),
        method="POST",
        host=MCP,
        path="/mcp",
        body=body,
        **kw,
    )


def reports_case(expect: Reason, agent: str = "nightly-reporter", **kw: Any) -> Case:
    kw.setdefault("token", lambda m: m.autonomous(agent, audience=REPORTS_AUD, scope="reports:*"))
    kw.setdefault("host", REPORTS)
    return Case(expect, method="POST", path="/reports", **kw)


A = Reason  # keeps the table narrow

CASES = [
    # --- allowed --------------------------------------------------------------------------
    pytest.param(Case(A.ALLOWED), id="delegated_user_reads_a_ticket"),
    pytest.param(
        Case(A.ALLOWED, token=lambda m: m(kid="ec-1")), id="allowed_with_an_ec_signed_token"
    ),
    pytest.param(
        Case(A.ALLOWED, token=lambda m: m(kid="ed25519-1")),
        id="allowed_with_an_ed25519_signed_token",
    ),
    pytest.param(
        Case(A.ALLOWED, method="POST", path="/tickets/42/comments"),
        id="delegated_user_comments_on_a_ticket",
    ),
    pytest.param(reports_case(A.ALLOWED), id="autonomous_agent_posts_a_report_on_its_port"),
    pytest.param(
        reports_case(A.ALLOWED, feed="stale"), id="autonomous_agent_allowed_while_feed_is_stale"
    ),
    pytest.param(
        reports_case(A.ALLOWED, feed="none"), id="autonomous_agent_allowed_with_no_feed_at_all"
    ),
    pytest.param(
        Case(A.ALLOWED, token=lambda m: m(client_id="planner", act=chain("helpdesk-bot"))),
        id="agent_is_the_current_actor_not_client_id",
    ),
    pytest.param(
        Case(A.ALLOWED, token=lambda m: m(client_id=None, azp="helpdesk-bot")),
        id="agent_is_azp_without_client_id",
    ),
    pytest.param(
        Case(A.ALLOWED, token=lambda m: m(scope=None, scp=["tickets:read"])),
        id="scope_given_as_scp_list",
    ),
    pytest.param(
        Case(A.ALLOWED, token=lambda m: m(act=chain("helpdesk-bot", "planner"))),
        id="two_actors_within_max_delegation_depth",
    ),
    pytest.param(
        Case(A.ALLOWED, token=lambda m: m(act=chain("helpdesk-bot", "unregistered-agent"))),
        id="prior_actor_is_only_informational_in_current_actor_mode",
    ),
    pytest.param(
        Case(A.ALLOWED, token=lambda m: m(act=chain("helpdesk-bot", "retired-bot"))),
        id="disabled_prior_actor_is_only_informational_in_current_actor_mode",
    ),
    pytest.param(
        Case(A.ALLOWED, token=lambda m: m(header={"typ": "application/at+jwt"})),
        id="typ_application_at_jwt",
    ),
    pytest.param(
        Case(A.ALLOWED, token=lambda m: m(audience=["https://other.example.test", TICKETS_AUD])),
        id="audience_list_containing_the_resource",
    ),
    pytest.param(Case(A.ALLOWED, now=NOW + 300 + 29), id="expired_but_within_leeway"),
    pytest.param(Case(A.ALLOWED, host="TICKETS.Example.TEST"), id="host_matched_case_insensitive"),
    pytest.param(
        Case(A.ALLOWED, host="tickets.example.test:8080"),
        id="host_entry_without_port_matches_any_port",
    ),
    pytest.param(mcp_case(A.ALLOWED, tools_call("search_docs")), id="mcp_tool_call_allowed"),
    pytest.param(
        mcp_case(A.ALLOWED, rpc("initialize"), scope=""), id="mcp_initialize_needs_no_perm"
    ),
    pytest.param(
        mcp_case(A.ALLOWED, rpc("tools/list"), scope=""), id="mcp_tools_list_needs_no_perm"
    ),
    # --- the token ------------------------------------------------------------------------
    pytest.param(Case(A.TOKEN_MISSING, token=None), id="no_authorization_header"),
    pytest.param(
        Case(A.TOKEN_MISSING, token=None, authorization="Basic YWxpY2U6c2VjcmV0"),
        id="basic_auth_instead_of_bearer",
    ),
    pytest.param(
        Case(A.TOKEN_MALFORMED, token=None, authorization="Bearer not-a-jwt"), id="not_a_jwt"
    ),
    pytest.param(
        Case(A.TOKEN_MALFORMED, token=lambda m: m(header={"crit": ["exp"]})),
        id="unknown_critical_header",
    ),
    pytest.param(
        Case(A.TOKEN_MALFORMED, token=lambda m: m(exp="tomorrow")), id="exp_of_the_wrong_type"
    ),
    pytest.param(Case(A.TOKEN_WRONG_ISSUER, token=lambda m: m(iss=EVIL)), id="unknown_issuer"),
    pytest.param(Case(A.TOKEN_ALGORITHM_NOT_ALLOWED, token=lambda m: m.unsigned()), id="alg_none"),
    pytest.param(
        Case(A.TOKEN_WRONG_TYPE, token=lambda m: m(header={"typ": "JWT"})),
        id="id_token_typed_jwt",
    ),
    pytest.param(Case(A.KEY_UNKNOWN, token=lambda m: m(header={"kid": "nope"})), id="unknown_kid"),
    pytest.param(
        Case(A.KEYS_UNAVAILABLE, token=lambda m: m(iss=NO_KEYS)), id="issuer_without_keys"
    ),
    pytest.param(
        Case(A.TOKEN_INVALID_SIGNATURE, token=lambda m: m.tampered(sub="carol")),
        id="payload_changed_after_signing",
    ),
    pytest.param(Case(A.TOKEN_CLAIM_MISSING, token=lambda m: m(iat=None)), id="token_without_iat"),
    pytest.param(Case(A.TOKEN_EXPIRED, now=NOW + 300 + 30), id="expired_beyond_leeway"),
    pytest.param(
        Case(A.TOKEN_NOT_YET_VALID, token=lambda m: m(nbf=int(NOW) + 60)), id="nbf_in_a_minute"
    ),
    pytest.param(
        Case(A.TOKEN_LIFETIME_TOO_LONG, token=lambda m: m(lifetime=3601)),
        id="lifetime_over_an_hour",
    ),
    pytest.param(
        Case(A.TOKEN_WRONG_AUDIENCE, token=lambda m: m(audience=MCP_AUD)),
        id="token_for_another_resource",
    ),
    pytest.param(
        Case(A.TOKEN_BINDING_UNSUPPORTED, token=lambda m: m(cnf={"jkt": DPOP_JKT})),
        id="dpop_bound_token_presented_as_a_bearer_token",
    ),
    pytest.param(
        Case(A.TOKEN_BINDING_UNSUPPORTED, token=lambda m: m(cnf={"x5t#S256": MTLS_X5T})),
        id="mtls_bound_token_presented_as_a_bearer_token",
    ),
    # --- revocation -----------------------------------------------------------------------
    pytest.param(Case(A.TOKEN_REVOKED, token=lambda m: m(jti="revoked-jti")), id="revoked_jti"),
    pytest.param(
        Case(A.TOKEN_REVOKED, token=lambda m: m(jti="revoked-jti"), feed="stale"),
        id="revocation_in_a_stale_feed_still_holds",
    ),
    pytest.param(
        reports_case(
            A.TOKEN_REVOKED,
            token=lambda m: m.autonomous(
                "nightly-reporter", audience=REPORTS_AUD, scope="reports:*", jti="revoked-jti"
            ),
        ),
        id="revoked_autonomous_token",
    ),
    pytest.param(
        Case(A.ALLOWED, token=lambda m: m(jti="revoked-JTI")), id="revoked_jti_matches_exactly"
    ),
    # --- the agent and the chain ----------------------------------------------------------
    pytest.param(Case(A.AGENT_MISSING, token=lambda m: m(client_id=None)), id="no_agent_named"),
    pytest.param(
        Case(A.AGENT_UNKNOWN, token=lambda m: m(client_id="stranger-bot")), id="unregistered_agent"
    ),
    pytest.param(
        Case(A.AGENT_DISABLED, token=lambda m: m(client_id="retired-bot")), id="disabled_agent"
    ),
    pytest.param(
        Case(A.AGENT_DISABLED, token=lambda m: m(client_id="suspended-bot")),
        id="agent_disabled_by_the_feed",
    ),
    pytest.param(
        Case(
            A.AGENT_DISABLED,
            token=lambda m: m.autonomous("suspended-bot", scope="tickets:read"),
            feed="stale",
        ),
        id="agent_disabled_by_a_stale_feed_stays_disabled",
    ),
    pytest.param(
        Case(
            A.AGENT_DISABLED,
            token=lambda m: m(act=chain("helpdesk-bot", "suspended-bot")),
            delegation="intersect",
        ),
        id="intersect_refuses_a_prior_actor_the_feed_disabled",
    ),
    pytest.param(
        Case(A.AGENT_NOT_DELEGATED, token=lambda m: m(client_id="nightly-reporter")),
        id="autonomous_only_agent_acting_for_a_user",
    ),
    pytest.param(
        Case(A.AGENT_NOT_AUTONOMOUS, token=lambda m: m.autonomous("helpdesk-bot")),
        id="delegated_only_agent_acting_alone",
    ),
    pytest.param(
        Case(
            A.DELEGATION_TOO_DEEP,
            token=lambda m: m(act=chain("helpdesk-bot", "planner", "ops-bot")),
        ),
        id="three_actors_exceed_depth_two",
    ),
    # --- the user -------------------------------------------------------------------------
    pytest.param(Case(A.USER_UNKNOWN, token=lambda m: m(sub="mallory")), id="user_not_in_feed"),
    pytest.param(Case(A.USER_DISABLED, token=lambda m: m(sub="bob")), id="user_disabled_in_feed"),
    pytest.param(Case(A.FEED_STALE, feed="stale"), id="delegated_call_with_stale_feed"),
    pytest.param(Case(A.FEED_STALE, feed="none"), id="delegated_call_with_no_feed_yet"),
    # --- the route ------------------------------------------------------------------------
    pytest.param(Case(A.ROUTE_UNKNOWN, host="unknown.example.test"), id="unknown_host"),
    pytest.param(Case(A.ROUTE_UNKNOWN, path="/admin/users"), id="no_route_for_the_path"),
    pytest.param(Case(A.ROUTE_UNKNOWN, method="PATCH"), id="no_route_for_the_method"),
    pytest.param(Case(A.ROUTE_UNKNOWN, path="/tickets/../admin"), id="dot_segment_in_the_path"),
    pytest.param(
        reports_case(A.ROUTE_UNKNOWN, host="reports.example.test:9443"),
        id="host_entry_with_port_does_not_match_another_port",
    ),
    pytest.param(
        reports_case(A.ROUTE_UNKNOWN, host="reports.example.test"),
        id="host_entry_with_port_does_not_match_no_port",
    ),
    pytest.param(mcp_case(A.MCP_REQUEST_INVALID, b"{not json"), id="mcp_body_not_json"),
    pytest.param(
        mcp_case(A.MCP_REQUEST_INVALID, tools_call("search_docs", jsonrpc="1.0")),
        id="mcp_body_not_json_rpc_2",
    ),
    pytest.param(
        mcp_case(A.MCP_REQUEST_INVALID, b"[" + tools_call("search_docs") + b"]"),
        id="mcp_batch_array",
    ),
    pytest.param(
        mcp_case(A.MCP_REQUEST_INVALID, tools_call(None)), id="mcp_tools_call_without_name"
    ),
    pytest.param(
        mcp_case(A.MCP_REQUEST_INVALID, tools_call("search_docs"), body_truncated=True),
        id="mcp_body_truncated_by_envoy",
    ),
    pytest.param(mcp_case(A.MCP_REQUEST_INVALID, None), id="mcp_without_body"),
    pytest.param(mcp_case(A.MCP_TOOL_UNKNOWN, tools_call("drop_tables")), id="mcp_unmapped_tool"),
    # --- permissions ----------------------------------------------------------------------
    pytest.param(
        Case(
            A.AGENT_LACKS_PERMISSION,
            token=lambda m: m(sub="carol", scope="tickets:delete"),
            method="DELETE",
        ),
        id="agent_lacks_delete",
    ),
    pytest.param(
        Case(A.USER_LACKS_PERMISSION, token=lambda m: m(sub="dave")), id="user_lacks_read"
    ),
    pytest.param(
        Case(A.SCOPE_LACKS_PERMISSION, token=lambda m: m(scope="docs:search")),
        id="scope_lacks_read",
    ),
    pytest.param(
        Case(A.SCOPE_LACKS_PERMISSION, token=lambda m: m(scope=None)), id="token_without_scope"
    ),
    pytest.param(
        Case(A.SCOPE_LACKS_PERMISSION, token=lambda m: m(scope="tick*:read tickets:rea*")),
        id="wildcard_inside_a_segment_grants_nothing",
    ),
    pytest.param(
        mcp_case(A.AGENT_LACKS_PERMISSION, tools_call("delete_doc"), scope="docs:*"),
        id="mcp_tool_the_agent_lacks",
    ),
    pytest.param(
        reports_case(
            A.AGENT_LACKS_PERMISSION,
            token=lambda m: m.autonomous("ops-bot", audience=REPORTS_AUD, scope="reports:write"),
        ),
        id="agent_wildcard_does_not_reach_another_prefix",
    ),
    # --- wildcard grants on each side -----------------------------------------------------
    pytest.param(
        Case(
            A.ALLOWED,
            token=lambda m: m(sub="carol", client_id="ops-bot", scope="tickets:delete"),
            method="DELETE",
        ),
        id="wildcard_agent_and_user_concrete_scope",
    ),
    pytest.param(
        Case(
            A.ALLOWED,
            token=lambda m: m(sub="carol", scope="tickets:comment"),
            method="POST",
            path="/tickets/42/comments",
        ),
        id="wildcard_user_concrete_agent_and_scope",
    ),
    pytest.param(
        Case(A.ALLOWED, token=lambda m: m(scope="tickets:*")), id="wildcard_scope_concrete_others"
    ),
    pytest.param(
        Case(
            A.ALLOWED,
            token=lambda m: m(sub="carol", client_id="ops-bot", scope="tickets:*"),
            method="PUT",
            path="/tickets/42/attachments/a.txt",
        ),
        id="trailing_wildcard_on_all_three_sides_covers_several_segments",
    ),
    pytest.param(
        Case(A.ALLOWED, token=lambda m: m(sub="carol", client_id="ops-bot", scope="*")),
        id="scope_star_grants_everything",
    ),
    # --- intersect mode -------------------------------------------------------------------
    pytest.param(
        Case(
            A.ALLOWED,
            token=lambda m: m(act=chain("helpdesk-bot", "planner")),
            delegation="intersect",
        ),
        id="intersect_allows_what_every_actor_has",
    ),
    pytest.param(
        Case(
            A.AGENT_LACKS_PERMISSION,
            token=lambda m: m(act=chain("helpdesk-bot", "planner")),
            method="POST",
            path="/tickets/42/comments",
            delegation="intersect",
        ),
        id="intersect_sub_agent_cannot_exceed_its_delegator",
    ),
    pytest.param(
        Case(
            A.AGENT_LACKS_PERMISSION,
            token=lambda m: m(sub="carol", act=chain("ops-bot", "planner"), scope="tickets:*"),
            method="DELETE",
            delegation="intersect",
        ),
        id="intersect_wildcard_sub_agent_bounded_by_concrete_delegator",
    ),
    pytest.param(
        Case(
            A.ALLOWED,
            token=lambda m: m(sub="carol", act=chain("planner", "ops-bot")),
            delegation="intersect",
        ),
        id="intersect_concrete_sub_agent_under_wildcard_delegator",
    ),
    pytest.param(
        Case(
            A.AGENT_UNKNOWN,
            token=lambda m: m(act=chain("helpdesk-bot", "unregistered-agent")),
            delegation="intersect",
        ),
        id="intersect_requires_every_actor_registered",
    ),
    pytest.param(
        Case(
            A.AGENT_DISABLED,
            token=lambda m: m(act=chain("helpdesk-bot", "retired-bot")),
            delegation="intersect",
        ),
        id="intersect_requires_every_actor_enabled",
    ),
    pytest.param(
        Case(
            A.AGENT_NOT_DELEGATED,
            token=lambda m: m(act=chain("helpdesk-bot", "nightly-reporter")),
            delegation="intersect",
        ),
        id="intersect_requires_every_actor_of_a_delegated_chain_to_act_for_users",
    ),
    pytest.param(
        Case(
            A.AGENT_NOT_AUTONOMOUS,
            token=lambda m: m(sub="ops-bot", act=chain("ops-bot", "helpdesk-bot")),
            delegation="intersect",
        ),
        id="intersect_requires_every_actor_of_an_autonomous_chain_to_act_alone",
    ),
    pytest.param(
        Case(
            A.ALLOWED,
            token=lambda m: m(sub="ops-bot", act=chain("ops-bot", "nightly-reporter")),
            delegation="intersect",
        ),
        id="intersect_allows_an_autonomous_chain_of_autonomous_actors",
    ),
    pytest.param(
        Case(A.ALLOWED, token=lambda m: m(act=chain("helpdesk-bot", "nightly-reporter"))),
        id="prior_actor_not_delegated_is_only_informational_in_current_actor_mode",
    ),
    pytest.param(
        Case(
            A.ALLOWED,
            token=lambda m: m(sub="ops-bot", act=chain("ops-bot", "helpdesk-bot")),
        ),
        id="prior_actor_not_autonomous_is_only_informational_in_current_actor_mode",
    ),
]

# Decided around the core, not by it: see test_service.py.
EXCLUDED_FROM_TABLE = {Reason.INTERNAL_ERROR, Reason.DECISION_LOG_UNAVAILABLE, Reason.OVERLOADED}


# --- running a case ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mint(local_issuer: LocalIssuer) -> Mint:
    return Mint(local_issuer)


@pytest.fixture(scope="module")
def key_sets(local_issuer: LocalIssuer) -> dict[str, KeySet]:
    keys = parse_jwks(local_issuer.jwks(), "keys/idp.json")
    return {ISS: KeySet(ISS, keys, "keys/idp.json"), NO_KEYS: KeySet(NO_KEYS, {})}


View = Callable[..., PolicyView]


@pytest.fixture
def view(make_config: Callable[..., Config], key_sets: dict[str, KeySet]) -> View:
    """``view(feed, delegation, now, **tokens)`` → PolicyView; a named feed is relative to
    ``now``."""
    configs: dict[tuple[str, tuple[tuple[str, Any], ...]], Config] = {}

    def build(
        feed: FeedName | FeedState = "fresh",
        delegation: DelegationMode = "current_actor",
        now: float = NOW,
        **tokens: Any,
    ) -> PolicyView:
        key = (delegation, tuple(sorted(tokens.items())))
        if key not in configs:
            data = json.loads(json.dumps(CONFIG))
            data["tokens"].update(tokens, delegation=delegation)
            configs[key] = make_config(data)
        state = feed_state(feed, now) if isinstance(feed, str) else feed
        return PolicyView(configs[key], key_sets, state)

    return build


def request(
    *,
    authorization: str | None = None,
    method: str = "GET",
    host: str = TICKETS,
    path: str = "/tickets/42",
    body: bytes | None = None,
    body_truncated: bool = False,
) -> RequestAttributes:
    headers = {} if authorization is None else {"authorization": authorization}
    return RequestAttributes(
        method=method,
        host=host,
        path=path,
        headers=headers,
        body=body,
        body_truncated=body_truncated,
        request_id="req-1",
    )


def attributes_of(case: Case, mint: Mint) -> RequestAttributes:
    authorization = case.authorization
    if case.token is not None:
        authorization = f"Bearer {case.token(mint)}"
    return request(
        authorization=authorization,
        method=case.method,
        host=case.host,
        path=case.path,
        body=case.body,
        body_truncated=case.body_truncated,
    )


def run(case: Case, view: View, mint: Mint) -> Decision:
    return decide(attributes_of(case, mint), view(case.feed, case.delegation, case.now), case.now)


def bearer(token: str, **kw: Any) -> RequestAttributes:
    return request(authorization=f"Bearer {token}", **kw)


# What the verify stage (authenticate) can refuse: the token itself and its revocation.
TOKEN_STAGE_REASONS = {r for r in Reason if r.value.startswith(("token_", "key"))}


@pytest.mark.parametrize("case", CASES)
def test_the_token_stage_refuses_token_faults_and_passes_the_rest_on(
    case: Case, view: View, mint: Mint
) -> None:
    # The service times the two stages apart (extauthz_check_stage_seconds): a deny for
    # the token must come from the first, anything else from the second.
    attributes = attributes_of(case, mint)
    case_view = view(case.feed, case.delegation, case.now)
    authenticated = authenticate(attributes, case_view, case.now)

    if case.expect in TOKEN_STAGE_REASONS:
        fresh_view = view(case.feed, case.delegation, case.now)
        assert authenticated == decide(attributes, fresh_view, case.now)
    else:
        assert not isinstance(authenticated, Decision)
        assert authenticated.verified is not None


@pytest.mark.parametrize("case", CASES)
def test_decides_the_expected_reason(case: Case, view: View, mint: Mint) -> None:
    decision = run(case, view, mint)

    assert decision.reason is case.expect
    assert decision.allowed is (case.expect is Reason.ALLOWED)


@pytest.mark.parametrize("case", CASES)
def test_a_warm_token_cache_decides_every_case_the_same(case: Case, view: View, mint: Mint) -> None:
    # The same request twice through one cache: a miss, then (for a verified token) a hit.
    # A hit must still check time, audience, revocation, agent, user and permission.
    cache = VerifiedTokens()
    attributes = attributes_of(case, mint)
    cached_view = dataclasses.replace(
        view(case.feed, case.delegation, case.now), verified_tokens=cache
    )
    first = decide(attributes, cached_view, case.now)
    second = decide(attributes, cached_view, case.now)
    assert (first.reason, second.reason) == (case.expect, case.expect)
    assert second == first


def test_a_cached_token_is_still_refused_once_it_expires(view: View, mint: Mint) -> None:
    cache = VerifiedTokens()
    token = mint()
    fresh = dataclasses.replace(view(), verified_tokens=cache)
    assert decide(bearer(token), fresh, NOW).reason is Reason.ALLOWED
    assert len(cache) == 1
    later = NOW + 300 + 31  # past exp and the 30 s leeway
    expired = dataclasses.replace(view(now=later), verified_tokens=cache)
    assert decide(bearer(token), expired, later).reason is Reason.TOKEN_EXPIRED


def test_a_cached_token_is_still_checked_for_the_audience_of_each_resource(
    view: View, mint: Mint
) -> None:
    # What a hit remembers of the claims holds for the audience they passed for only.
    cache = VerifiedTokens()
    token = mint()  # for the tickets resource
    cached = dataclasses.replace(view(), verified_tokens=cache)
    assert decide(bearer(token), cached, NOW).reason is Reason.ALLOWED
    other = bearer(token, host=MCP, method="POST", path="/mcp")
    assert decide(other, cached, NOW).reason is Reason.TOKEN_WRONG_AUDIENCE
    assert decide(bearer(token), cached, NOW).reason is Reason.ALLOWED


def test_a_cached_token_is_still_refused_once_the_feed_revokes_it(view: View, mint: Mint) -> None:
    cache = VerifiedTokens()
    token = mint(jti="later-revoked")
    assert decide(bearer(token), dataclasses.replace(view(), verified_tokens=cache), NOW).allowed
    revoked = FeedSnapshot(
        SNAPSHOT.version, SNAPSHOT.users, revoked_tokens={"later-revoked": NOW + 300}
    )
    state = FeedState(revoked, NOW - 5)
    decision = decide(bearer(token), dataclasses.replace(view(state), verified_tokens=cache), NOW)
    assert decision.reason is Reason.TOKEN_REVOKED


def test_only_verified_tokens_are_cached(view: View, mint: Mint) -> None:
    cache = VerifiedTokens()
    cached = dataclasses.replace(view(), verified_tokens=cache)
    unknown_kid = mint.resigned({"kid": "nope"})
    for token in (mint.tampered(sub="mallory"), mint.unsigned(), "x.y.z", unknown_kid):
        assert not decide(bearer(token), cached, NOW).allowed
    assert len(cache) == 0


def test_table_reaches_every_reason_except_internal_error(view: View, mint: Mint) -> None:
    reached = {run(p.values[0], view, mint).reason for p in CASES}

    assert reached == set(Reason) - EXCLUDED_FROM_TABLE


# --- what a decision records -------------------------------------------------------------


def test_allowed_delegated_decision_records_who_what_and_why(view: View, mint: Mint) -> None:
    token = mint(jti="jti-alice-1")

    decision = decide(bearer(token), view(), NOW)

    assert decision.reason is Reason.ALLOWED
    identity = decision.identity
    assert identity is not None
    assert identity.agent == "helpdesk-bot"
    assert identity.user == "alice"
    assert identity.actor_chain == ("helpdesk-bot",)
    assert identity.client_id == "helpdesk-bot"
    assert identity.issuer == ISS
    assert identity.jti == "jti-alice-1"
    assert identity.scopes == frozenset({"tickets:read", "tickets:comment"})
    assert (decision.issuer, decision.client_id, decision.jti) == (
        ISS,
        "helpdesk-bot",
        "jti-alice-1",
    )
    assert decision.resource == "tickets"
    assert decision.audience == TICKETS_AUD
    assert decision.permission == "tickets:read"
    assert (decision.agent_has, decision.user_has, decision.scope_has) == (True, True, True)
    assert decision.lacking == ()
    assert decision.mcp_method is None
    assert decision.mcp_tool is None


def test_autonomous_decision_has_no_user_and_no_user_side(view: View, mint: Mint) -> None:
    token = mint.autonomous("nightly-reporter", audience=REPORTS_AUD, scope="reports:write")

    decision = decide(bearer(token, method="POST", host=REPORTS, path="/reports"), view(), NOW)

    assert decision.reason is Reason.ALLOWED
    assert decision.identity is not None
    assert decision.identity.user is None
    assert decision.identity.agent == "nightly-reporter"
    assert (decision.agent_has, decision.user_has, decision.scope_has) == (True, None, True)
    assert decision.resource == "reports"
    assert decision.audience == REPORTS_AUD


def test_delegated_chain_is_recorded_current_actor_first(view: View, mint: Mint) -> None:
    token = mint(client_id="planner", act=chain("helpdesk-bot", "planner"))

    decision = decide(bearer(token), view(), NOW)

    assert decision.reason is Reason.ALLOWED
    assert decision.identity is not None
    assert decision.identity.agent == "helpdesk-bot"
    assert decision.identity.actor_chain == ("helpdesk-bot", "planner")
    assert decision.identity.client_id == "planner"
    assert decision.client_id == "planner"


def test_expired_token_records_issuer_jti_and_client_id_but_no_identity(
    view: View, mint: Mint
) -> None:
    token = mint(jti="jti-old", iat=int(NOW) - 7200, exp=int(NOW) - 3600)

    decision = decide(bearer(token), view(), NOW)

    assert decision.reason is Reason.TOKEN_EXPIRED
    assert decision.issuer == ISS
    assert decision.jti == "jti-old"
    assert decision.client_id == "helpdesk-bot"
    assert decision.identity is None
    assert decision.resource == "tickets"
    assert decision.audience == TICKETS_AUD
    assert decision.permission is None
    assert (decision.agent_has, decision.user_has, decision.scope_has) == (None, None, None)
    assert decision.lacking == ()


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda m: m.tampered(jti="forged-jti"), id="bad_signature"),
        pytest.param(lambda m: m(iss=EVIL, jti="forged-jti"), id="wrong_issuer"),
        pytest.param(lambda m: m(header={"kid": "nope"}, jti="forged-jti"), id="unknown_kid"),
    ],
)
def test_claims_of_an_unverified_token_are_not_recorded(
    view: View, mint: Mint, make_token: Callable[[Mint], str]
) -> None:
    decision = decide(bearer(make_token(mint)), view(), NOW)

    assert not decision.allowed
    assert (decision.issuer, decision.jti, decision.client_id, decision.identity) == (
        None,
        None,
        None,
        None,
    )
    assert decision.resource == "tickets"


def test_token_missing_still_records_the_resource(view: View) -> None:
    decision = decide(request(), view(), NOW)

    assert decision.reason is Reason.TOKEN_MISSING
    assert (decision.resource, decision.audience) == ("tickets", TICKETS_AUD)


def test_unknown_host_records_identity_but_no_resource(view: View, mint: Mint) -> None:
    decision = decide(bearer(mint(), host="elsewhere.example.test"), view(), NOW)

    assert decision.reason is Reason.ROUTE_UNKNOWN
    assert decision.identity is not None and decision.identity.user == "alice"
    assert (decision.resource, decision.audience, decision.permission) == (None, None, None)


def test_user_unknown_records_identity(view: View, mint: Mint) -> None:
    decision = decide(bearer(mint(sub="mallory")), view(), NOW)

    assert decision.reason is Reason.USER_UNKNOWN
    assert decision.identity is not None
    assert decision.identity.user == "mallory"


@pytest.mark.parametrize(
    ("sub", "agent", "scope", "reason", "has", "lacking"),
    [
        pytest.param(
            "dave",
            "helpdesk-bot",
            "docs:search",
            Reason.AGENT_LACKS_PERMISSION,
            (False, False, False),
            ("agent", "user", "scope"),
            id="all_three_lack_agent_reported",
        ),
        pytest.param(
            "dave",
            "helpdesk-bot",
            "tickets:delete",
            Reason.AGENT_LACKS_PERMISSION,
            (False, False, True),
            ("agent", "user"),
            id="agent_and_user_lack_agent_reported",
        ),
        pytest.param(
            "dave",
            "ops-bot",
            "docs:search",
            Reason.USER_LACKS_PERMISSION,
            (True, False, False),
            ("user", "scope"),
            id="user_and_scope_lack_user_reported",
        ),
        pytest.param(
            "carol",
            "helpdesk-bot",
            "docs:search",
            Reason.AGENT_LACKS_PERMISSION,
            (False, True, False),
            ("agent", "scope"),
            id="agent_and_scope_lack_agent_reported",
        ),
        pytest.param(
            "carol",
            "ops-bot",
            "docs:search",
            Reason.SCOPE_LACKS_PERMISSION,
            (True, True, False),
            ("scope",),
            id="only_scope_lacks",
        ),
    ],
)
def test_records_every_side_lacking_and_reports_agent_then_user_then_scope(
    view: View,
    mint: Mint,
    sub: str,
    agent: str,
    scope: str,
    reason: Reason,
    has: tuple[bool, bool, bool],
    lacking: tuple[str, ...],
) -> None:
    token = mint(sub=sub, client_id=agent, scope=scope)

    decision = decide(bearer(token, method="DELETE"), view(), NOW)

    assert decision.reason is reason
    assert decision.permission == "tickets:delete"
    assert (decision.agent_has, decision.user_has, decision.scope_has) == has
    assert decision.lacking == lacking


def test_autonomous_agent_lacking_scope_is_not_blamed_on_a_user(view: View, mint: Mint) -> None:
    token = mint.autonomous("nightly-reporter", audience=REPORTS_AUD, scope="tickets:read")

    decision = decide(bearer(token, method="POST", host=REPORTS, path="/reports"), view(), NOW)

    assert decision.reason is Reason.SCOPE_LACKS_PERMISSION
    assert decision.user_has is None
    assert decision.lacking == ("scope",)


def test_mcp_tool_call_records_method_tool_and_permission(view: View, mint: Mint) -> None:
    token = mint(audience=MCP_AUD, scope="docs:search")

    decision = decide(
        bearer(token, method="POST", host=MCP, path="/mcp", body=tools_call("search_docs")),
        view(),
        NOW,
    )

    assert decision.reason is Reason.ALLOWED
    assert decision.resource == "docs-mcp"
    assert decision.audience == MCP_AUD
    assert decision.mcp_method == "tools/call"
    assert decision.mcp_tool == "search_docs"
    assert decision.permission == "docs:search"
    assert (decision.agent_has, decision.user_has, decision.scope_has) == (True, True, True)


@pytest.mark.parametrize("method", ["initialize", "tools/list", "notifications/initialized"])
def test_other_mcp_methods_need_only_a_valid_token_and_agent(
    view: View, mint: Mint, method: str
) -> None:
    token = mint(sub="dave", audience=MCP_AUD, scope=None)

    decision = decide(
        bearer(token, method="POST", host=MCP, path="/mcp", body=rpc(method)), view(), NOW
    )

    assert decision.reason is Reason.ALLOWED
    assert decision.mcp_method == method
    assert decision.permission is None
    assert decision.mcp_tool is None
    assert (decision.agent_has, decision.user_has, decision.scope_has) == (None, None, None)


def test_other_mcp_methods_still_need_a_registered_agent(view: View, mint: Mint) -> None:
    token = mint(client_id="stranger-bot", audience=MCP_AUD)

    decision = decide(
        bearer(token, method="POST", host=MCP, path="/mcp", body=rpc("tools/list")), view(), NOW
    )

    assert decision.reason is Reason.AGENT_UNKNOWN


def test_intersect_mode_records_the_whole_chain_and_the_agent_side(view: View, mint: Mint) -> None:
    token = mint(act=chain("helpdesk-bot", "planner"))

    decision = decide(
        bearer(token, method="POST", path="/tickets/1/comments"), view(delegation="intersect"), NOW
    )

    assert decision.reason is Reason.AGENT_LACKS_PERMISSION
    assert decision.identity is not None
    assert decision.identity.actor_chain == ("helpdesk-bot", "planner")
    assert (decision.agent_has, decision.user_has, decision.scope_has) == (False, True, True)
    assert decision.lacking == ("agent",)


# --- the feed ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        pytest.param(FeedState(SNAPSHOT, NOW - MAX_STALENESS), Reason.ALLOWED, id="at_the_limit"),
        pytest.param(
            FeedState(SNAPSHOT, NOW - MAX_STALENESS - 0.5), Reason.FEED_STALE, id="just_past"
        ),
        pytest.param(FeedState(SNAPSHOT, None), Reason.FEED_STALE, id="never_refreshed"),
        pytest.param(FeedState(None, NOW), Reason.FEED_STALE, id="no_snapshot"),
    ],
)
def test_delegated_calls_need_a_feed_no_older_than_max_staleness(
    view: View, mint: Mint, state: FeedState, expected: Reason
) -> None:
    assert decide(bearer(mint()), view(feed=state), NOW).reason is expected


# --- the check order at the decision level ----------------------------------------------

ORDER_CASES = [
    pytest.param(
        Case(A.TOKEN_EXPIRED, token=lambda m: m(jti="revoked-jti"), now=NOW + 3600),
        id="expired_before_revoked",
    ),
    pytest.param(
        Case(A.TOKEN_REVOKED, token=lambda m: m(jti="revoked-jti", client_id="stranger-bot")),
        id="revoked_before_unknown_agent",
    ),
    pytest.param(
        Case(A.FEED_STALE, token=lambda m: m(jti="revoked-jti"), feed="none"),
        id="no_feed_means_no_revocations_known_and_a_delegated_call_is_stale",
    ),
    pytest.param(
        Case(A.TOKEN_EXPIRED, token=lambda m: m(client_id="stranger-bot"), now=NOW + 3600),
        id="expired_before_unknown_agent",
    ),
    pytest.param(
        Case(A.TOKEN_WRONG_AUDIENCE, token=lambda m: m(client_id="stranger-bot", audience=MCP_AUD)),
        id="wrong_audience_before_unknown_agent",
    ),
    pytest.param(
        Case(A.AGENT_MISSING, token=lambda m: m(client_id=None, sub="mallory")),
        id="missing_agent_before_unknown_user",
    ),
    pytest.param(
        Case(A.AGENT_UNKNOWN, token=lambda m: m(client_id="stranger-bot", sub="mallory")),
        id="unknown_agent_before_unknown_user",
    ),
    pytest.param(
        Case(A.AGENT_DISABLED, token=lambda m: m(client_id="retired-bot", sub="bob")),
        id="disabled_agent_before_disabled_user",
    ),
    pytest.param(
        Case(A.AGENT_NOT_DELEGATED, token=lambda m: m(client_id="nightly-reporter"), feed="stale"),
        id="agent_not_delegated_before_stale_feed",
    ),
    pytest.param(
        Case(
            A.AGENT_UNKNOWN,
            token=lambda m: m(act=chain("stranger-bot", "planner", "helpdesk-bot")),
        ),
        id="unknown_agent_before_delegation_too_deep",
    ),
    pytest.param(
        Case(
            A.AGENT_NOT_DELEGATED,
            token=lambda m: m(act=chain("nightly-reporter", "planner", "helpdesk-bot")),
        ),
        id="agent_not_delegated_before_delegation_too_deep",
    ),
    pytest.param(
        Case(
            A.DELEGATION_TOO_DEEP,
            token=lambda m: m(sub="mallory", act=chain("helpdesk-bot", "planner", "ops-bot")),
        ),
        id="delegation_too_deep_before_unknown_user",
    ),
    pytest.param(
        Case(
            A.AGENT_UNKNOWN,
            token=lambda m: m(sub="mallory", act=chain("helpdesk-bot", "unregistered-agent")),
            delegation="intersect",
        ),
        id="intersect_unknown_prior_actor_before_unknown_user",
    ),
    pytest.param(
        Case(A.FEED_STALE, host="unknown.example.test", feed="stale"),
        id="stale_feed_before_unknown_host",
    ),
    pytest.param(
        Case(A.USER_UNKNOWN, token=lambda m: m(sub="mallory"), host="unknown.example.test"),
        id="unknown_user_before_unknown_host",
    ),
    pytest.param(
        Case(A.USER_DISABLED, token=lambda m: m(sub="bob"), path="/nowhere"),
        id="disabled_user_before_unknown_route",
    ),
    pytest.param(
        Case(
            A.AGENT_NOT_AUTONOMOUS,
            token=lambda m: m.autonomous("helpdesk-bot"),
            host="unknown.example.test",
        ),
        id="agent_not_autonomous_before_unknown_host",
    ),
    pytest.param(
        Case(
            A.ROUTE_UNKNOWN,
            token=lambda m: m(audience=MCP_AUD, scope=None),
            host="unknown.example.test",
        ),
        id="unknown_host_has_no_audience_to_check",
    ),
    pytest.param(
        Case(A.ROUTE_UNKNOWN, token=lambda m: m(sub="dave", scope=None), path="/nowhere"),
        id="unknown_route_before_missing_permissions",
    ),
    pytest.param(
        mcp_case(A.MCP_REQUEST_INVALID, b"[]", scope=""),
        id="invalid_mcp_request_before_missing_permissions",
    ),
]


@pytest.mark.parametrize("case", ORDER_CASES)
def test_reports_the_earlier_step_when_a_request_has_two_faults(
    case: Case, view: View, mint: Mint
) -> None:
    assert run(case, view, mint).reason is case.expect


# --- decide never raises -----------------------------------------------------------------

_RANDOM = random.Random(8725)
GARBAGE = [_RANDOM.randbytes(n) for n in (1, 7, 33, 64, 301, 2048)]


@pytest.mark.parametrize("raw", GARBAGE, ids=lambda raw: f"{len(raw)}_bytes")
def test_decide_never_raises_on_garbage_tokens(view: View, raw: bytes) -> None:
    text = raw.decode("latin-1")
    three_parts = ".".join(b64url(raw[i::3]) for i in range(3))

    as_bearer = decide(request(authorization=f"Bearer {text}x"), view(), NOW)
    as_parts = decide(request(authorization=f"Bearer {three_parts}"), view(), NOW)
    as_header = decide(request(authorization=f"X{text}"), view(), NOW)

    assert as_bearer.reason is Reason.TOKEN_MALFORMED
    assert as_parts.reason is Reason.TOKEN_MALFORMED
    assert as_header.reason is Reason.TOKEN_MISSING


@pytest.mark.parametrize("raw", GARBAGE, ids=lambda raw: f"{len(raw)}_bytes")
def test_decide_never_raises_on_garbage_mcp_bodies(view: View, mint: Mint, raw: bytes) -> None:
    token = mint(audience=MCP_AUD, scope="docs:search")

    decision = decide(bearer(token, method="POST", host=MCP, path="/mcp", body=raw), view(), NOW)

    assert decision.reason is Reason.MCP_REQUEST_INVALID


@pytest.mark.parametrize(
    ("make_token", "expected"),
    [
        pytest.param(lambda m: m(act=[]), Reason.TOKEN_MALFORMED, id="act_a_list"),
        pytest.param(lambda m: m(act={"sub": {}}), Reason.TOKEN_MALFORMED, id="act_sub_object"),
        pytest.param(lambda m: m(scope=5), Reason.TOKEN_MALFORMED, id="scope_a_number"),
        pytest.param(lambda m: m(scope=None, scp={"a": 1}), Reason.TOKEN_MALFORMED, id="scp_obj"),
        pytest.param(lambda m: m(client_id=7), Reason.TOKEN_MALFORMED, id="client_id_a_number"),
        pytest.param(lambda m: m(jti=["x"]), Reason.TOKEN_MALFORMED, id="jti_a_list"),
        pytest.param(lambda m: m(sub=[]), Reason.TOKEN_MALFORMED, id="sub_a_list"),
        pytest.param(lambda m: m(exp=10**400), Reason.TOKEN_MALFORMED, id="exp_beyond_float"),
        pytest.param(lambda m: m(iat=-(10**400)), Reason.TOKEN_MALFORMED, id="iat_beyond_float"),
        pytest.param(lambda m: m.resigned({"kid": {}}), Reason.KEY_UNKNOWN, id="kid_an_object"),
        pytest.param(lambda m: m(header={"typ": []}), Reason.TOKEN_WRONG_TYPE, id="typ_a_list"),
        pytest.param(lambda m: m(header={"crit": "x"}), Reason.TOKEN_MALFORMED, id="crit_a_str"),
    ],
)
def test_decide_never_raises_on_signed_tokens_with_odd_claims(
    view: View, mint: Mint, make_token: Callable[[Mint], str], expected: Reason
) -> None:
    decision = decide(bearer(make_token(mint)), view(), NOW)

    assert decision.reason is expected


# --- issuer binding ----------------------------------------------------------------------

PARTNER = "https://partner.example.test"


@pytest.fixture(scope="module")
def partner_mint() -> Mint:
    """Tokens from a second trusted issuer, with keys of its own."""
    return Mint(LocalIssuer(PARTNER))


@pytest.fixture
def two_issuers(
    make_config: Callable[..., Config], key_sets: dict[str, KeySet], partner_mint: Mint
) -> View:
    """``two_issuers(feed_issuer, delegation)`` → the table's policy plus the partner issuer
    and its client ``partner-bot`` (delegated and autonomous, tickets:read)."""

    def build(feed_issuer: str = ISS, delegation: DelegationMode = "current_actor") -> PolicyView:
        data = json.loads(json.dumps(CONFIG))
        data["issuers"].append(
            {"issuer": PARTNER, "algorithms": ["RS256"], "jwks_file": "keys/partner.json"}
        )
        data["agents"].append(
            {
                "issuer": PARTNER,
                "id": "partner-bot",
                "permissions": ["tickets:read"],
                "autonomous": True,
            }
        )
        data["feed"]["issuer"] = feed_issuer
        data["tokens"]["delegation"] = delegation
        keys = parse_jwks(partner_mint.issuer.jwks(), "keys/partner.json")
        all_keys = {**key_sets, PARTNER: KeySet(PARTNER, keys, "keys/partner.json")}
        return PolicyView(make_config(data), all_keys, feed_state("fresh", NOW))

    return build


def test_each_issuer_authorizes_its_own_agents(
    two_issuers: View, mint: Mint, partner_mint: Mint
) -> None:
    # The controls for the denials below: both issuers' tokens verify and are usable.
    partner_alone = partner_mint.autonomous("partner-bot", scope="tickets:read")
    partner_for_alice = partner_mint(client_id="partner-bot")

    assert decide(bearer(mint()), two_issuers(), NOW).reason is Reason.ALLOWED
    assert decide(bearer(partner_alone), two_issuers(), NOW).reason is Reason.ALLOWED
    assert decide(bearer(partner_for_alice), two_issuers(PARTNER), NOW).reason is Reason.ALLOWED


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda m, p: p(), id="partner_token_naming_a_delegated_agent"),
        pytest.param(
            lambda m, p: p.autonomous("ops-bot", scope="tickets:read"),
            id="partner_token_naming_an_autonomous_agent",
        ),
        pytest.param(
            lambda m, p: m.autonomous("partner-bot", scope="tickets:read"),
            id="own_token_naming_the_partner_agent",
        ),
    ],
)
def test_token_from_another_issuer_than_the_agents_is_agent_unknown(
    two_issuers: View,
    mint: Mint,
    partner_mint: Mint,
    make_token: Callable[[Mint, Mint], str],
) -> None:
    decision = decide(bearer(make_token(mint, partner_mint)), two_issuers(), NOW)

    assert decision.reason is Reason.AGENT_UNKNOWN


def test_intersect_prior_actor_registered_with_another_issuer_is_agent_unknown(
    two_issuers: View, partner_mint: Mint
) -> None:
    token = partner_mint(sub="partner-bot", act=chain("partner-bot", "ops-bot"))

    assert decide(bearer(token), two_issuers(), NOW).reason is Reason.ALLOWED
    assert (
        decide(bearer(token), two_issuers(delegation="intersect"), NOW).reason
        is Reason.AGENT_UNKNOWN
    )


@pytest.mark.parametrize(
    ("feed_issuer", "make_token"),
    [
        pytest.param(ISS, lambda m, p: p(client_id="partner-bot"), id="partner_user"),
        pytest.param(PARTNER, lambda m, p: m(), id="own_user_when_the_feed_is_the_partners"),
    ],
)
def test_delegated_token_from_another_issuer_than_the_feeds_is_user_unknown(
    two_issuers: View,
    mint: Mint,
    partner_mint: Mint,
    feed_issuer: str,
    make_token: Callable[[Mint, Mint], str],
) -> None:
    # "alice" is in the feed, but the feed lists only the users of feed.issuer.
    decision = decide(bearer(make_token(mint, partner_mint)), two_issuers(feed_issuer), NOW)

    assert decision.reason is Reason.USER_UNKNOWN
    assert decision.identity is not None
    assert decision.identity.user == "alice"


def test_every_step_recorded_on_the_way_reaches_its_own_field_of_the_decision() -> None:
    # The trace turns into a Decision positionally, for speed: each field must still land
    # under its own name.
    trace = _Trace(None)
    identity = Identity(
        "agent-x", "user-x", ("agent-x",), "client-x", "issuer-x", "jti-x", frozenset()
    )
    recorded: dict[str, object] = {
        "resource": "resource-x",
        "audience": "audience-x",
        "identity": identity,
        "issuer": "issuer-y",
        "client_id": "client-y",
        "jti": "jti-y",
        "permission": "p:x",
        "mcp_method": "tools/call",
        "mcp_tool": "tool-x",
        "agent_has": True,
        "user_has": False,
        "scope_has": None,
        "lacking": ("user",),
    }
    for name, value in recorded.items():
        setattr(trace, name, value)

    decision = trace.decision(Reason.USER_LACKS_PERMISSION, "issuer-to-refetch")

    assert decision._asdict() == {
        "reason": Reason.USER_LACKS_PERMISSION,
        "refetch_keys_of": "issuer-to-refetch",
        **recorded,
    }
