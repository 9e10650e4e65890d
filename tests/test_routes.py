"""Host → resource, method + path → route, MCP body → tool permission (extauthz/routes.py)."""

from __future__ import annotations

import json
import re

import pytest

from extauthz.errors import AccessForbidden, Reason, RequestInvalid
from extauthz.model import RequestAttributes
from extauthz.routes import (
    PathTemplate,
    Resource,
    ResourceTable,
    Route,
    match_route,
    split_host_port,
)

TOOLS = {"get_ticket": "tickets:read", "create_ticket": "tickets:write"}

TICKETS = Resource(
    name="tickets",
    hosts=("Tickets.Example.Test",),
    audience="https://tickets.example.test",
    routes=(
        Route("GET", PathTemplate.parse("/tickets/{id}"), permission="tickets:read"),
        Route("GET", PathTemplate.parse("/tickets/mine"), permission="tickets:mine"),
        Route("POST", PathTemplate.parse("/tickets"), permission="tickets:write"),
        Route(
            "PUT",
            PathTemplate.parse("/tickets/{id}/comments/{cid}"),
            permission="tickets:comments:write",
        ),
        Route("GET", PathTemplate.parse("/"), permission="tickets:index"),
        Route("POST", PathTemplate.parse("/mcp"), mcp_tools=TOOLS),
    ),
)
ADMIN = Resource("admin", ("admin.example.test:8443",), "https://admin", ())
IPV6 = Resource("v6", ("[2001:db8::1]",), "https://v6", ())
IPV6_PORT = Resource("v6port", ("[::1]:9443",), "https://v6port", ())
TABLE = ResourceTable((TICKETS, ADMIN, IPV6, IPV6_PORT))


def req(
    path: str,
    method: str = "GET",
    body: bytes | None = None,
    *,
    truncated: bool = False,
) -> RequestAttributes:
    return RequestAttributes(
        method=method,
        host="tickets.example.test",
        path=path,
        headers={},
        body=body,
        body_truncated=truncated,
    )


def mcp(message: object) -> RequestAttributes:
    return req("/mcp", "POST", json.dumps(message).encode())


def tools_call(name: object) -> dict[str, object]:
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name}}


# --- hosts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "resource"),
    [
        ("tickets.example.test", "tickets"),
        ("TICKETS.EXAMPLE.TEST", "tickets"),
        ("tickets.example.test:443", "tickets"),
        ("tickets.example.test:8080", "tickets"),
        ("admin.example.test:8443", "admin"),
        ("ADMIN.example.test:8443", "admin"),
        ("admin.example.test", None),
        ("admin.example.test:443", None),
        ("[2001:db8::1]", "v6"),
        ("[2001:DB8::1]:8443", "v6"),
        ("[::1]:9443", "v6port"),
        ("[::1]", None),
        ("[::1]:9444", None),
        ("other.example.test", None),
        ("tickets.example.test.evil", None),
        ("", None),
    ],
)
def test_host_selects_resource(host: str, resource: str | None) -> None:
    found = TABLE.resource_for_host(host)
    assert (found.name if found else None) == resource


@pytest.mark.parametrize(
    ("host", "split"),
    [
        ("a.test", ("a.test", None)),
        ("a.test:80", ("a.test", "80")),
        ("a.test:", ("a.test:", None)),
        ("a.test:http", ("a.test:http", None)),
        ("[::1]", ("[::1]", None)),
        ("[::1]:8080", ("[::1]", "8080")),
        ("[::1]:x", ("[::1]", None)),
        ("::1", ("::1", None)),
        ("[::1", ("[::1", None)),
    ],
)
def test_split_host_port(host: str, split: tuple[str, str | None]) -> None:
    assert split_host_port(host) == split


# --- path templates ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "permission"),
    [
        ("GET", "/tickets/42", "tickets:read"),
        ("get", "/tickets/42", "tickets:read"),
        ("GET", "/tickets/a%20b", "tickets:read"),
        ("POST", "/tickets", "tickets:write"),
        ("PUT", "/tickets/1/comments/2", "tickets:comments:write"),
        ("GET", "/", "tickets:index"),
    ],
)
def test_method_and_path_select_route_permission(method: str, path: str, permission: str) -> None:
    match = match_route(TICKETS, req(path, method))
    assert match.permission == permission
    assert match.resource is TICKETS
    assert match.mcp_method is None
    assert match.mcp_tool is None


def test_first_matching_route_in_config_order_wins() -> None:
    # "/tickets/mine" is also a "/tickets/{id}", which comes first.
    match = match_route(TICKETS, req("/tickets/mine"))
    assert match.permission == "tickets:read"
    assert match.route is TICKETS.routes[0]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/tickets"),  # missing segment
        ("GET", "/tickets/"),  # empty parameter
        ("GET", "/tickets/1/2"),  # extra segment
        ("GET", "/tickets/1/"),  # trailing slash is an extra (empty) segment
        ("GET", "//tickets/1"),
        ("GET", "/Tickets/1"),  # literal segments are case-sensitive
        ("DELETE", "/tickets/1"),  # no route for the method
        ("POST", "/tickets/1"),
        ("PUT", "/tickets/1/comments/"),
        ("GET", "/other"),
        ("GET", "tickets/1"),  # not an origin-form path
        ("GET", ""),
    ],
)
def test_unmatched_request_is_route_unknown(method: str, path: str) -> None:
    with pytest.raises(AccessForbidden) as info:
        match_route(TICKETS, req(path, method))
    assert info.value.reason is Reason.ROUTE_UNKNOWN
    assert info.value.outcome.status == 403


@pytest.mark.parametrize(
    "path",
    [
        "/tickets/..",
        "/tickets/../admin",
        "/tickets/.",
        "/./tickets/1",
        "/tickets/%2e%2e",
        "/tickets/%2E%2E",
        "/tickets/%2e",
        "/tickets/.%2e",
        "/tickets/%2e.",
        "/tickets/1%2F..%2Fadmin",
        "/tickets/1%2fx",
        "/tickets/1%5Cx",
        "/tickets/..%2f",
    ],
)
def test_unsafe_paths_are_route_unknown(path: str) -> None:
    with pytest.raises(AccessForbidden) as info:
        match_route(TICKETS, req(path))
    assert info.value.reason is Reason.ROUTE_UNKNOWN
    assert "unsafe path" in info.value.detail


@pytest.mark.parametrize("path", ["/tickets/v1.2", "/tickets/...", "/tickets/%41"])
def test_dots_and_escapes_that_are_not_unsafe_still_match(path: str) -> None:
    assert match_route(TICKETS, req(path)).permission == "tickets:read"


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("tickets", "must start with '/'"),
        ("/tickets/{id", "is not a whole '{name}'"),
        ("/tickets/{}", "is not a whole '{name}'"),
        ("/tickets/x{id}", "is not a whole '{name}'"),
        ("/tickets/..", "dot segments"),
        ("/tickets/?q", "query or fragment"),
        ("/tickets#f", "query or fragment"),
    ],
)
def test_bad_path_templates_are_rejected(template: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        PathTemplate.parse(template)


def test_path_template_marks_parameters() -> None:
    template = PathTemplate.parse("/a/{x}/b/{y}")
    assert template.segments == ("a", None, "b", None)
    pattern = re.compile(template.pattern())
    assert pattern.fullmatch("/a/1/b/2")
    assert not pattern.fullmatch("/a/1/b")
    assert not pattern.fullmatch("/a//b/2")
    assert not pattern.fullmatch("/a/1/x/b/2")


@pytest.mark.parametrize(
    ("path", "matches"),
    [
        ("/v1.0/a+b/(x)/[y]/$", True),
        ("/v1x0/a+b/(x)/[y]/$", False),
        ("/v1.0/aab/(x)/[y]/$", False),
        ("/v1.0/a+b/x/[y]/$", False),
    ],
)
def test_template_literals_are_literal_not_expressions(path: str, matches: bool) -> None:
    literal = Resource(
        "lit",
        ("lit.test",),
        "https://lit",
        (Route("GET", PathTemplate.parse("/v1.0/a+b/(x)/[y]/$"), permission="lit:read"),),
    )
    request = RequestAttributes(method="GET", host="lit.test", path=path, headers={})
    if matches:
        assert match_route(literal, request).permission == "lit:read"
    else:
        with pytest.raises(AccessForbidden):
            match_route(literal, request)


def test_a_method_with_many_routes_picks_each_one() -> None:
    routes = tuple(
        Route("GET", PathTemplate.parse(f"/r{i}/{{id}}"), permission=f"r:{i}") for i in range(300)
    )
    many = Resource("many", ("many.test",), "https://many", routes)
    for i in (0, 1, 99, 299):
        request = RequestAttributes(method="GET", host="many.test", path=f"/r{i}/x", headers={})
        assert match_route(many, request).permission == f"r:{i}"


# --- MCP ---------------------------------------------------------------------------------


def test_mcp_tools_call_needs_the_mapped_permission() -> None:
    match = match_route(TICKETS, mcp(tools_call("create_ticket")))
    assert match.permission == "tickets:write"
    assert match.mcp_method == "tools/call"
    assert match.mcp_tool == "create_ticket"
    assert match.route is TICKETS.routes[5]


@pytest.mark.parametrize("method", ["initialize", "tools/list", "notifications/initialized"])
def test_other_mcp_methods_need_no_permission(method: str) -> None:
    match = match_route(TICKETS, mcp({"jsonrpc": "2.0", "id": 1, "method": method}))
    assert match.permission is None
    assert match.mcp_method == method
    assert match.mcp_tool is None


def test_unmapped_mcp_tool_is_forbidden() -> None:
    with pytest.raises(AccessForbidden) as info:
        match_route(TICKETS, mcp(tools_call("delete_everything")))
    assert info.value.reason is Reason.MCP_TOOL_UNKNOWN
    assert info.value.outcome.status == 403


def test_mcp_body_read_from_raw_bytes_with_unicode() -> None:
    body = '{"jsonrpc":"2.0","id":"é","method":"tools/call","params":{"name":"get_ticket"}}'
    match = match_route(TICKETS, req("/mcp", "POST", body.encode("utf-8")))
    assert match.permission == "tickets:read"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"{",
        b"\xff\xfe\x00",
        b"null",
        b'"tools/call"',
        b"[]",
        json.dumps([tools_call("get_ticket")]).encode(),  # batch
        json.dumps({"id": 1, "method": "tools/call", "params": {"name": "x"}}).encode(),
        json.dumps({"jsonrpc": "1.0", "id": 1, "method": "tools/list"}).encode(),
        json.dumps({"jsonrpc": 2.0, "id": 1, "method": "tools/list"}).encode(),
        json.dumps({"jsonrpc": "2.0", "id": 1}).encode(),
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": 7}).encode(),
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call"}).encode(),
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}}).encode(),
        json.dumps(tools_call("")).encode(),
        json.dumps(tools_call(None)).encode(),
        json.dumps(tools_call(["get_ticket"])).encode(),
        json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": ["get_ticket"]}
        ).encode(),
    ],
)
def test_malformed_mcp_request_is_invalid(body: bytes) -> None:
    with pytest.raises(RequestInvalid) as info:
        match_route(TICKETS, req("/mcp", "POST", body))
    assert info.value.reason is Reason.MCP_REQUEST_INVALID
    assert info.value.outcome.status == 400


def test_missing_mcp_body_is_invalid() -> None:
    with pytest.raises(RequestInvalid) as info:
        match_route(TICKETS, req("/mcp", "POST", None))
    assert info.value.reason is Reason.MCP_REQUEST_INVALID


def test_truncated_mcp_body_is_invalid_even_when_it_parses() -> None:
    request = req("/mcp", "POST", json.dumps(tools_call("get_ticket")).encode(), truncated=True)
    with pytest.raises(RequestInvalid) as info:
        match_route(TICKETS, request)
    assert info.value.reason is Reason.MCP_REQUEST_INVALID
    assert "truncated" in info.value.detail


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        b"{" * 100_000,
        b'{"jsonrpc":"2.0","method":"tools/call","params":{"name":"get_ticket","x":'
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}}",
    ],
)
def test_deeply_nested_json_is_invalid_not_a_crash(body: bytes) -> None:
    with pytest.raises(RequestInvalid) as info:
        match_route(TICKETS, req("/mcp", "POST", body))
    assert info.value.reason is Reason.MCP_REQUEST_INVALID


def test_mcp_route_method_must_match_before_the_body_is_read() -> None:
    with pytest.raises(AccessForbidden) as info:
        match_route(TICKETS, req("/mcp", "GET", b"garbage"))
    assert info.value.reason is Reason.ROUTE_UNKNOWN


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"tools/list",'
        b'"params":{"name":"create_ticket"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"name":"create_ticket","name":"get_ticket"}}',
    ],
    ids=["duplicate-method", "duplicate-tool-name"],
)
def test_mcp_body_with_duplicate_member_names_is_invalid(body: bytes) -> None:
    with pytest.raises(RequestInvalid):
        match_route(TICKETS, req("/mcp", "POST", body))


@pytest.mark.parametrize("path", ["/tickets/..\\admin", "/tickets/1\\..\\..\\admin"])
def test_raw_backslash_is_an_unsafe_path(path: str) -> None:
    with pytest.raises(AccessForbidden) as info:
        match_route(TICKETS, req(path))
    assert info.value.reason is Reason.ROUTE_UNKNOWN


# --- MCP method guarding -----------------------------------------------------------------

GUARDED = Resource(
    name="docs",
    hosts=("docs.example.test",),
    audience="https://docs.example.test",
    routes=(
        Route(
            "POST",
            PathTemplate.parse("/mcp"),
            mcp_tools=TOOLS,
            mcp_methods={"resources/read": "docs:read"},
        ),
    ),
)


def rpc(method: str, params: object = None) -> bytes:
    message: dict[str, object] = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        message["params"] = params
    return json.dumps(message).encode()


def test_mapped_mcp_method_requires_its_permission() -> None:
    match = match_route(GUARDED, req("/mcp", "POST", rpc("resources/read", {"uri": "d://1"})))
    assert (match.permission, match.mcp_method, match.mcp_tool) == (
        "docs:read",
        "resources/read",
        None,
    )


def test_unmapped_mcp_method_still_needs_no_permission() -> None:
    match = match_route(GUARDED, req("/mcp", "POST", rpc("prompts/list")))
    assert (match.permission, match.mcp_method) == (None, "prompts/list")


@pytest.mark.parametrize(
    ("resource", "method"),
    [
        (TICKETS, "Tools/Call"),
        (TICKETS, "tools/call "),
        (TICKETS, "TOOLS/CALL"),
        (GUARDED, "Resources/Read"),
        (GUARDED, " resources/read"),
    ],
)
def test_near_spelling_of_a_guarded_method_is_invalid(resource: Resource, method: str) -> None:
    # A lenient server might run these as the guarded method: they must not pass unguarded.
    with pytest.raises(RequestInvalid) as info:
        match_route(resource, req("/mcp", "POST", rpc(method, {"name": "create_ticket"})))
    assert info.value.reason is Reason.MCP_REQUEST_INVALID


def test_mcp_method_with_invisible_characters_near_a_guarded_method_is_invalid() -> None:
    body = rpc("resources/read\u200b", {"uri": "d://1"})
    with pytest.raises(RequestInvalid) as info:
        match_route(GUARDED, req("/mcp", "POST", body))
    assert info.value.reason is Reason.MCP_REQUEST_INVALID


# --- path parameters (";") ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/tickets/..;",
        "/tickets/..;x",
        "/tickets/%2e%2e;",
        "/tickets/%2E%2E;a=b",
        "/tickets/.%2e;jsessionid=1",
        "/tickets/.;",
        "/..;/tickets/1",
    ],
)
def test_dot_segment_with_path_parameters_is_an_unsafe_path(path: str) -> None:
    # Tomcat and Jetty drop ";params" before resolving dot segments: "..;x" is ".." there.
    with pytest.raises(AccessForbidden) as info:
        match_route(TICKETS, req(path))
    assert info.value.reason is Reason.ROUTE_UNKNOWN
    assert "unsafe path" in info.value.detail


@pytest.mark.parametrize("path", ["/tickets/;x", "/tickets/;", "/tickets/;jsessionid=1", "/;x/1"])
def test_segment_empty_before_its_path_parameters_is_an_unsafe_path(path: str) -> None:
    # Tomcat and Jetty serve "/tickets/;x" as "/tickets/": it must not pass as /tickets/{id}.
    with pytest.raises(AccessForbidden) as info:
        match_route(TICKETS, req(path))
    assert info.value.reason is Reason.ROUTE_UNKNOWN
    assert "unsafe path" in info.value.detail


@pytest.mark.parametrize("path", ["/tickets/a;b", "/tickets/1;jsessionid=x", "/tickets/v1.2;x"])
def test_semicolon_inside_an_ordinary_segment_still_matches_a_parameter(path: str) -> None:
    assert match_route(TICKETS, req(path)).permission == "tickets:read"


# --- MCP method names and member names a lenient parser reads differently ----------------


@pytest.mark.parametrize(
    "method",
    ["tools/call\u0000", "tools/call\u200b", "\u200btools/call", "tools/list\u00e9"],
    ids=["nul", "zero-width-space", "leading-zero-width-space", "non-ascii"],
)
def test_mcp_method_name_that_is_not_printable_ascii_is_invalid(method: str) -> None:
    with pytest.raises(RequestInvalid) as info:
        match_route(TICKETS, req("/mcp", "POST", rpc(method, {"name": "create_ticket"})))
    assert info.value.reason is Reason.MCP_REQUEST_INVALID


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"name":"get_ticket","Name":"create_ticket"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"name":"get_ticket","NAME":"create_ticket"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"name":"get_ticket","name\\u0000":"create_ticket"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"name":"get_ticket","name\\u200b":"create_ticket"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"name":"get_ticket","\\uff4e\\uff41\\uff4d\\uff45":"create_ticket"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_ticket"},'
        b'"param\\u017f":{"name":"create_ticket"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/list","Method":"tools/call",'
        b'"params":{"name":"create_ticket"}}',
    ],
    ids=[
        "tool-name-and-capitalised",
        "tool-name-and-upper-case",
        "tool-name-and-nul-escape",
        "tool-name-and-zero-width-space",
        "tool-name-and-fullwidth",
        "params-and-long-s",
        "method-and-capitalised",
    ],
)
def test_mcp_body_with_member_names_equal_under_case_folding_is_invalid(body: bytes) -> None:
    # Go's encoding/json, for one, matches member names case-insensitively (long s folds to s),
    # and some parsers drop control characters: the upstream could read the other member.
    with pytest.raises(RequestInvalid) as info:
        match_route(TICKETS, req("/mcp", "POST", body))
    assert info.value.reason is Reason.MCP_REQUEST_INVALID


# --- MCP body encoding -------------------------------------------------------------------

TOOLS_CALL_TEXT = json.dumps(tools_call("get_ticket"))


@pytest.mark.parametrize(
    "body",
    [
        b"\xef\xbb\xbf" + TOOLS_CALL_TEXT.encode("utf-8"),
        TOOLS_CALL_TEXT.encode("utf-16"),
        TOOLS_CALL_TEXT.encode("utf-16-le"),
        TOOLS_CALL_TEXT.encode("utf-16-be"),
        TOOLS_CALL_TEXT.encode("utf-32"),
        b'{"jsonrpc":"2.0","id":"\xed\xa0\x80","method":"tools/call",'
        b'"params":{"name":"get_ticket"}}',
    ],
    ids=[
        "utf-8-with-bom",
        "utf-16-with-bom",
        "utf-16-le",
        "utf-16-be",
        "utf-32",
        "utf-8-encoded-surrogate",
    ],
)
def test_mcp_body_that_is_not_strict_utf8_without_bom_is_invalid(body: bytes) -> None:
    with pytest.raises(RequestInvalid) as info:
        match_route(TICKETS, req("/mcp", "POST", body))
    assert info.value.reason is Reason.MCP_REQUEST_INVALID


def test_tool_arguments_may_hold_names_that_differ_only_in_case() -> None:
    # extauthz authorizes from the message and its params, not from tool arguments.
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "get_ticket", "arguments": {"id": "1", "ID": "2"}},
        }
    ).encode()
    match = match_route(TICKETS, req("/mcp", "POST", body))
    assert (match.permission, match.mcp_tool) == ("tickets:read", "get_ticket")


def test_exact_repeats_inside_tool_arguments_are_still_invalid() -> None:
    body = (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"name":"get_ticket","arguments":{"id":"1","id":"2"}}}'
    )
    with pytest.raises(RequestInvalid):
        match_route(TICKETS, req("/mcp", "POST", body))
