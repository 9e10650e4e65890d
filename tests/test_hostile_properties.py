"""Property-based tests (hypothesis) on the request adapter, the route matcher, the decision
core and the whole Check, each against a small independent reference written here.

- ``request_from_check`` and ``CheckHandler.check`` take any CheckRequest without raising,
  and the answer is always well formed and never ``internal_error`` (which only an
  unexpected exception produces).
- A path is only ever matched to the route its normalised form (what the upstream serves
  after dot segments, encoded or backslash separators and ``;params`` are resolved) would
  match, with the reference normaliser below.
- ``decide`` allows exactly when the permission is granted by the agent, the user (for a
  delegated call) and the token's scope, with the reference wildcard rules below, and
  names the first side lacking.

Deterministic (``derandomize=True``, no example database) and small enough for the suite.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from helpers import AUDIENCE, HOST, ISSUER
from hostile import NOW, ServiceHarness, assert_well_formed, check_for
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from extauthz.config import Config, parse_config
from extauthz.decision import PolicyView, decide
from extauthz.demo.issuer import LocalIssuer
from extauthz.envoy import HEADER_PERMISSION, PARTIAL_BODY_HEADER, request_from_check
from extauthz.errors import Denied, Reason
from extauthz.feed.cache import FeedState
from extauthz.feed.snapshot import FeedSnapshot, UserEntry
from extauthz.model import RequestAttributes
from extauthz.permissions import GrantSet
from extauthz.routes import PathTemplate, Resource, Route, match_route
from extauthz.tokens.keys import KeySet, parse_jwks


def deterministic(examples: int) -> settings:
    """The same examples on every run, no example database, no timing-based failure."""
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )


# --- the reference normaliser and matcher -------------------------------------------------


def reference_normalise(path: str) -> str:
    """What a lenient upstream serves for ``path``: ``%2e`` decoded; ``%2f``, ``%5c`` and
    ``\\`` read as ``/``; each segment cut at ``;`` (Tomcat, Jetty); empty segments merged
    away (Envoy ``merge_slashes``); ``.`` and ``..`` resolved (RFC 3986 §5.2.4)."""
    text = re.sub("%2e", ".", path, flags=re.IGNORECASE)
    text = re.sub("%2f|%5c", "/", text, flags=re.IGNORECASE).replace("\\", "/")
    out: list[str] = []
    for segment in text.split("/"):
        segment = segment.split(";", 1)[0]
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    return "/" + "/".join(out)


def reference_route(routes: list[tuple[str, str]], method: str, path: str) -> int | None:
    """Index of the first (method, template) whose template matches ``path`` segment by
    segment, ``{x}`` standing for one non-empty segment."""
    got = path.split("/")[1:]
    for index, (want_method, template) in enumerate(routes):
        want = template.split("/")[1:]
        if want_method != method.upper() or len(want) != len(got):
            continue
        if all((w.startswith("{") and g) or w == g for w, g in zip(want, got, strict=True)):
            return index
    return None


ROUTES = [
    ("GET", "/tickets/{id}"),
    ("POST", "/tickets"),
    ("DELETE", "/tickets/{id}"),
    ("GET", "/tickets/{id}/comments/{cid}"),
    ("GET", "/admin"),
    ("GET", "/admin/{page}"),
    ("GET", "/files/{name}/raw"),
]
RESOURCE = Resource(
    "api",
    ("api.test",),
    "https://api.test",
    tuple(
        Route(method, PathTemplate.parse(template), permission=f"p:{i}")
        for i, (method, template) in enumerate(ROUTES)
    ),
)

# The example policy's templates too, so that the whole-Check property reaches its routes.
TEMPLATES = ["/tickets/{id}", "/tickets", "/mcp"]
HOSTILE_SEGMENTS = [
    "tickets", "admin", "files", "raw", "comments", "1", "42", "x",
    ".", "..", "...", "%2e", "%2E", ".%2e", "%2e.", "%2E%2e", "..;x", ".;", "..;", ";x", ";",
    "%2f", "%2F", "%5c", "%5C", "\\", "a%2fb", "..%2f", "%2e%2e%5c", "a\\..",
    "1;jsessionid=abc", "%41", "%252e%252e", "é", "\u2025", "%00", "", "a b",
]  # fmt: skip
segments = st.sampled_from(HOSTILE_SEGMENTS) | st.text(
    alphabet=st.sampled_from("a1.%2eEfF5cC;\\/é"), max_size=6
)


@st.composite
def route_shaped_paths(draw: st.DrawFn, templates: list[str] | None = None) -> str:
    """A configured template with its ``{x}`` filled and hostile segments slipped in:
    the paths that come closest to matching a route they should not."""
    template = draw(st.sampled_from(templates or [t for _, t in ROUTES] + TEMPLATES))
    fill = st.sampled_from(["1", "42", "a-b", "1;a", "%41", "é", "..."]) | segments
    out = [draw(fill) if s.startswith("{") else s for s in template.split("/")[1:]]
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        out.insert(draw(st.integers(0, len(out))), draw(segments))
    return "/" + "/".join(out)


paths = st.lists(segments, max_size=6).map(lambda s: "/" + "/".join(s)) | route_shaped_paths()
methods = st.sampled_from(
    ["GET", "GET", "POST", "POST", "DELETE", "get", "Post", "PUT", "HEAD", ""]
)


def request_to(method: str, path: str, **kw: Any) -> RequestAttributes:
    return RequestAttributes(method=method, host="api.test", path=path, headers={}, **kw)


@st.composite
def route_requests(draw: st.DrawFn) -> tuple[str, str]:
    """Mostly a route's own method with a path shaped like its template; else anything."""
    if draw(st.sampled_from([True, True, True, False])):
        method, template = draw(st.sampled_from(ROUTES))
        return method, draw(route_shaped_paths([template]))
    return draw(methods), draw(paths)


@deterministic(1500)
@given(route_requests())
def test_a_path_only_matches_the_route_its_normalised_form_matches(
    method_and_path: tuple[str, str],
) -> None:
    method, path = method_and_path
    try:
        match = match_route(RESOURCE, request_to(method, path))
    except Denied as denied:  # anything else raised fails the test
        assert denied.reason is Reason.ROUTE_UNKNOWN
        event("denied")
        return
    event("matched")
    index = RESOURCE.routes.index(match.route)

    assert reference_route(ROUTES, method, reference_normalise(path)) == index, (
        f"{method} {path!r} matched {ROUTES[index]}, but the upstream serves "
        f"{reference_normalise(path)!r}"
    )


clean_segments = st.sampled_from(["tickets", "admin", "files", "raw", "comments", "1", "a-b"])


@deterministic(400)
@given(methods, st.lists(clean_segments, max_size=5).map(lambda s: "/" + "/".join(s)))
def test_a_clean_path_matches_exactly_as_the_reference_says(method: str, path: str) -> None:
    expected = reference_route(ROUTES, method, path)
    try:
        match = match_route(RESOURCE, request_to(method, path))
    except Denied as denied:
        assert denied.reason is Reason.ROUTE_UNKNOWN
        index: int | None = None
    else:
        index = RESOURCE.routes.index(match.route)

    assert index == expected


# --- the reference permission rules ----------------------------------------------------


def reference_grants(grant: str, permission: str) -> bool:
    """A grant as a regular expression: a ``*`` segment is one segment, a trailing ``*``
    one or more; anything else (``a*`` included) is literal."""
    parts = grant.split(":")
    pattern = []
    for i, segment in enumerate(parts):
        if segment == "*":
            pattern.append("[^:]+(?::[^:]+)*" if i == len(parts) - 1 else "[^:]+")
        else:
            pattern.append(re.escape(segment))
    return re.fullmatch(":".join(pattern), permission) is not None


def any_grants(grants: list[str], permission: str) -> bool:
    return any(reference_grants(g, permission) for g in grants)


letters = st.sampled_from(["a", "b", "c"])
permissions = st.lists(letters, min_size=1, max_size=3).map(":".join)
grants = st.lists(letters | st.just("*"), min_size=1, max_size=3).map(":".join)
scope_grants = grants | st.sampled_from(["a*", "*a", "a:b*", "*:*", "a:*:c"])


@pytest.fixture(scope="module")
def ed_issuer() -> LocalIssuer:
    return LocalIssuer(ISSUER)


@pytest.fixture(scope="module")
def core(
    ed_issuer: LocalIssuer,
) -> Callable[[list[str], list[str], list[str], str, bool], tuple[Any, Any]]:
    key_sets = {ISSUER: KeySet(ISSUER, parse_jwks(ed_issuer.jwks(), "jwks.json"))}

    def run(
        agent: list[str], user: list[str], scope: list[str], needed: str, delegated: bool
    ) -> tuple[Any, Any]:
        config: Config = parse_config(
            {
                "issuers": [{"issuer": ISSUER, "algorithms": ["EdDSA"], "jwks_file": "k.json"}],
                "agents": [
                    {"id": "bot", "permissions": agent, "delegated": True, "autonomous": True}
                ],
                "resources": [
                    {
                        "name": "r",
                        "hosts": ["r.test"],
                        "audience": "https://r.test",
                        "routes": [{"method": "GET", "path": "/r/{id}", "permission": needed}],
                    }
                ],
                "feed": {"source": "users.json"},
            },
            Path("/etc/extauthz/config.yaml"),
            policy_version="test",
        )
        feed = FeedState(FeedSnapshot("1", {"alice": UserEntry(GrantSet(user))}), NOW - 1)
        token = ed_issuer.token(
            sub="alice" if delegated else "bot",
            client_id="bot",
            audience="https://r.test",
            scope=" ".join(scope),
            kid="ed25519-1",
            now=NOW,
        )
        request = RequestAttributes(
            method="GET", host="r.test", path="/r/1", headers={"authorization": f"Bearer {token}"}
        )
        return decide(request, PolicyView(config, key_sets, feed), NOW), config

    return run


@deterministic(300)
@given(
    agent=st.lists(grants, max_size=4),
    user=st.lists(grants, max_size=4),
    scope=st.lists(scope_grants, max_size=4),
    needed=permissions,
    delegated=st.booleans(),
)
def test_decide_allows_exactly_where_agent_user_and_scope_all_grant(
    core: Callable[..., tuple[Any, Any]],
    agent: list[str],
    user: list[str],
    scope: list[str],
    needed: str,
    delegated: bool,
) -> None:
    decision, _ = core(agent, user, scope, needed, delegated)
    agent_has = any_grants(agent, needed)
    user_has = any_grants(user, needed) if delegated else None
    scope_has = any_grants(scope, needed)
    sides = (("agent", agent_has), ("user", user_has), ("scope", scope_has))

    assert decision.allowed is (agent_has and user_has is not False and scope_has)
    assert (decision.agent_has, decision.user_has, decision.scope_has) == (
        agent_has,
        user_has,
        scope_has,
    )
    assert decision.lacking == tuple(side for side, has in sides if has is False)
    if not agent_has:
        assert decision.reason is Reason.AGENT_LACKS_PERMISSION
    elif user_has is False:
        assert decision.reason is Reason.USER_LACKS_PERMISSION
    elif not scope_has:
        assert decision.reason is Reason.SCOPE_LACKS_PERMISSION
    else:
        assert decision.reason is Reason.ALLOWED


# --- arbitrary CheckRequests ------------------------------------------------------------

header_names = st.sampled_from(
    [
        "authorization",
        PARTIAL_BODY_HEADER,
        "x-request-id",
        ":authority",
        "content-type",
        "x-extauthz-user",
        "x-http-method-override",
        "Authorization",
    ]
) | st.text(max_size=12)
texts = st.text(max_size=40) | st.builds(
    lambda c, n: c * n, st.characters(), st.integers(1000, 20_000)
)
long_paths = st.builds(lambda s, n: "/" + "/".join([s] * n), segments, st.integers(100, 3000))
# "none" last: hypothesis leans towards the first element of a sampled list.
AUTH_KINDS = ["delegated", "mcp", "autonomous", "mutated", "garbage", "none"]
hosts = st.sampled_from(
    [HOST, HOST.upper(), f"{HOST}:8443", "[::1]:80", "evil.test", "", f"{HOST}:x"]
) | st.text(max_size=20)
bodies = (
    st.none()
    | st.binary(max_size=200)
    | st.sampled_from(
        [
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_ticket"}}',
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"create_ticket"}}',
            b'{"jsonrpc":"2.0","id":1,"method":"Tools/Call","params":{"name":"get_ticket"}}',
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\\ud800"}}',
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"initialize"}',
            b'{"jsonrpc":"2.0","id":1,"method":"initialize"}',
            b"\xef\xbb\xbf{}",
        ]
    )
)


@st.composite
def check_requests(draw: st.DrawFn) -> tuple[str, external_auth_pb2.CheckRequest]:
    check = external_auth_pb2.CheckRequest()
    http = check.attributes.request.http
    if draw(st.booleans()):
        # Close to what the example policy serves, so that examples reach its routes.
        http.method, template = draw(
            st.sampled_from([("GET", "/tickets/{id}"), ("POST", "/tickets"), ("POST", "/mcp")])
        )
        http.host = HOST
        http.path = draw(route_shaped_paths([template]))
    else:
        http.method = draw(methods | st.text(max_size=8))
        http.host = draw(hosts)
        http.path = draw(paths | long_paths | texts)
    http.path += draw(st.sampled_from(["", "?a=1", "?", "#f", "?x=/../"]))
    use_map = draw(st.booleans())
    for name, value in draw(st.dictionaries(header_names, texts, max_size=5)).items():
        if use_map:
            raw = draw(st.binary(max_size=20)) if draw(st.booleans()) else value.encode()
            http.header_map.headers.append(base_pb2.HeaderValue(key=name, raw_value=raw))
        else:
            http.headers[name] = value
    body = draw(bodies)
    if body is not None:
        if draw(st.booleans()):
            http.raw_body = body
        else:
            http.body = body.decode("utf-8", "replace")
    if draw(st.booleans()):
        check.attributes.source.address.socket_address.address = draw(st.text(max_size=20))
    return draw(st.sampled_from(AUTH_KINDS)), check


def test_reference_normaliser_resolves_the_documented_tricks() -> None:
    assert reference_normalise("/tickets/../admin") == "/admin"
    assert reference_normalise("/tickets/%2E%2e/admin") == "/admin"
    assert reference_normalise("/tickets/..;x/admin") == "/admin"
    assert reference_normalise("/tickets/1%2f..%2F..%5cadmin") == "/admin"
    assert reference_normalise("//tickets//1") == "/tickets/1"
    assert reference_normalise("/tickets/;x") == "/tickets"


@pytest.fixture(scope="module")
def service(local_issuer: LocalIssuer, tmp_path_factory: pytest.TempPathFactory) -> ServiceHarness:
    return ServiceHarness(tmp_path_factory.mktemp("properties"), local_issuer)


@pytest.fixture(scope="module")
def tokens(local_issuer: LocalIssuer) -> dict[str, str]:
    def mint(**kw: Any) -> str:
        return local_issuer.token(audience=AUDIENCE, now=NOW, kid="ed25519-1", **kw)

    return {
        "delegated": mint(
            sub="alice", client_id="support-agent", scope="tickets:read tickets:write"
        ),
        "autonomous": mint(sub="triage-bot", client_id="triage-bot", scope="tickets:*"),
        "mcp": mint(sub="bob", client_id="support-agent", scope="tickets:*"),
    }


def authorization_for(
    kind: str, tokens: dict[str, str], check: external_auth_pb2.CheckRequest
) -> None:
    http = check.attributes.request.http
    if kind == "none":
        return
    if kind == "garbage":
        http.headers["authorization"] = "Bearer " + http.path[:50]
    elif kind == "mutated":
        token = tokens["delegated"]
        at = len(http.path) % len(token)
        http.headers["authorization"] = (
            f"Bearer {token[:at]}{'A' if token[at] != 'A' else 'B'}{token[at + 1 :]}"
        )
    else:
        http.headers["authorization"] = f"Bearer {tokens[kind]}"


@deterministic(600)
@given(check_requests())
def test_request_from_check_takes_any_check_request(
    drawn: tuple[str, external_auth_pb2.CheckRequest],
) -> None:
    _, check = drawn
    http = check.attributes.request.http

    request = request_from_check(check)

    assert request.path == http.path.split("?", 1)[0]
    assert request.method == http.method
    assert isinstance(request.body_truncated, bool)
    assert request.body == (http.raw_body or (http.body.encode() if http.body else None))


@deterministic(600)
@given(check_requests())
def test_check_answers_any_check_request_well_formed_and_as_the_core_decides(
    service: ServiceHarness,
    tokens: dict[str, str],
    drawn: tuple[str, external_auth_pb2.CheckRequest],
) -> None:
    kind, check = drawn
    authorization_for(kind, tokens, check)

    response = service.check(check)

    reason = assert_well_formed(response)
    event(kind + ":" + reason.value)  # --hypothesis-show-statistics: how deep they reach
    assert reason is not Reason.INTERNAL_ERROR
    core = decide(request_from_check(check), service.runtime.view(), NOW)
    assert reason is core.reason
    if reason is Reason.ALLOWED:
        request = request_from_check(check)
        routes = [(r.method, r.path.text) for r in service.config.resources.resources[0].routes]
        assert (
            reference_route(routes, request.method, reference_normalise(request.path)) is not None
        )
        granted = {h.header.key: h.header.value for h in response.ok_response.headers}
        assert granted.get(HEADER_PERMISSION) == core.permission


def test_check_answers_a_valid_request_after_the_properties_ran(
    service: ServiceHarness, tokens: dict[str, str]
) -> None:
    assert service.reason(check_for(tokens["delegated"])) is Reason.ALLOWED
