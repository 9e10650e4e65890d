"""Request → resource, route and required permission. Pure: no I/O.

A resource is chosen by the request's host (case-insensitive; a configured host without a
port matches that host on any port). Within it, routes are tried in config order and the
first whose method and path template match wins. An MCP route reads the JSON-RPC body:
``tools/call`` needs the permission mapped to ``params.name``; other MCP methods need none.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from extauthz.errors import AccessForbidden, Reason, RequestInvalid
from extauthz.model import RequestAttributes
from extauthz.strict_json import has_folded_collision, loads_strict

# Request path segments that must never reach a template match: dot segments could make
# the path we authorize differ from the one the upstream serves (RFC 3986 §5.2.4), and an
# encoded slash, or a backslash raw or encoded (WHATWG URL parsing reads it as a slash),
# could make one segment two.
_DOT_SEGMENTS = frozenset({".", "..", "%2e", "%2e%2e", ".%2e", "%2e."})
_MAX_TOOL_NAME = 128
_SEPARATORS = ("%2f", "%5c", "\\")


class McpToolUnknown(AccessForbidden):
    """A ``tools/call`` for a tool the route does not map; carries the tool for the audit."""

    def __init__(self, tool: str) -> None:
        super().__init__(Reason.MCP_TOOL_UNKNOWN, "tool is not mapped")
        # Client-chosen text bound for the audit line: enough to recognise, not a log bomb.
        self.tool = tool if len(tool) <= _MAX_TOOL_NAME else tool[:_MAX_TOOL_NAME] + "…"


@dataclass(frozen=True, slots=True)
class PathTemplate:
    """A path like ``/tickets/{id}``: literal segments, and ``{name}`` for any one segment."""

    text: str
    # None marks a ``{name}`` segment.
    segments: tuple[str | None, ...]

    @classmethod
    def parse(cls, text: str) -> PathTemplate:
        """Compile a template. Raises ValueError saying what is wrong with it."""
        if not text.startswith("/"):
            raise ValueError(f"path {text!r} must start with '/'")
        if "?" in text or "#" in text:
            raise ValueError(f"path {text!r} must not contain a query or fragment")
        segments: list[str | None] = []
        for raw in text[1:].split("/"):
            if raw.startswith("{") and raw.endswith("}") and len(raw) > 2:
                segments.append(None)
            elif "{" in raw or "}" in raw:
                raise ValueError(f"path {text!r}: segment {raw!r} is not a whole '{{name}}'")
            elif raw in (".", ".."):
                raise ValueError(f"path {text!r} must not contain dot segments")
            else:
                segments.append(raw)
        return cls(text, tuple(segments))

    def pattern(self) -> str:
        """The template as a regular expression over a whole request path: a literal
        segment is itself, a ``{name}`` segment any one non-empty segment."""
        return "".join("/" + ("[^/]+" if s is None else re.escape(s)) for s in self.segments)


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: PathTemplate
    # Exactly one of these is set: a plain route needs ``permission``, an MCP route maps tools.
    permission: str | None = None
    mcp_tools: Mapping[str, str] | None = None
    # Optional, MCP routes only: other JSON-RPC methods that need a permission too (e.g.
    # resources/read, which returns data). Methods not listed need only a valid token.
    mcp_methods: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Resource:
    name: str
    hosts: tuple[str, ...]
    audience: str
    routes: tuple[Route, ...]
    # Per method, one expression trying that method's routes in config order, and the
    # routes in that order with the match a plain route always gives: made once here, so a
    # check runs one match in C and builds nothing.
    routes_by_method: Mapping[str, tuple[re.Pattern[str], tuple[_Candidate, ...]]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        by_method: dict[str, list[Route]] = {}
        for route in self.routes:
            by_method.setdefault(route.method, []).append(route)
        compiled = {
            method: (
                # One group per route and none inside: the group that took part names it.
                re.compile("|".join(f"({route.path.pattern()})" for route in routes)),
                tuple(
                    _Candidate(route, None, route.mcp_tools)
                    if route.mcp_tools is not None
                    else _Candidate(route, RouteMatch(self, route, route.permission), {})
                    for route in routes
                ),
            )
            for method, routes in by_method.items()
        }
        object.__setattr__(self, "routes_by_method", compiled)


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """What a request needs. ``permission`` is None for MCP methods that need only a token."""

    resource: Resource
    route: Route
    permission: str | None
    mcp_method: str | None = None
    mcp_tool: str | None = None


class _Candidate(NamedTuple):
    """One route as the compiled matcher holds it: an MCP route with its tools, or a plain
    route with the one match it always gives."""

    route: Route
    plain_match: RouteMatch | None
    mcp_tools: Mapping[str, str]


class ResourceTable:
    """Host → resource lookup, prepared once per config."""

    __slots__ = ("_any_port", "_with_port", "resources")

    def __init__(self, resources: tuple[Resource, ...]) -> None:
        self.resources = resources
        self._with_port: dict[str, Resource] = {}
        self._any_port: dict[str, Resource] = {}
        for resource in resources:
            for host in resource.hosts:
                name, port = split_host_port(host.lower())
                if port is None:
                    self._any_port[name] = resource
                else:
                    self._with_port[f"{name}:{port}"] = resource

    def resource_for_host(self, host: str) -> Resource | None:
        name, port = split_host_port(host.lower())
        if port is not None:
            exact = self._with_port.get(f"{name}:{port}")
            if exact is not None:
                return exact
        return self._any_port.get(name)


def split_host_port(host: str) -> tuple[str, str | None]:
    """Split ``host[:port]``, bracketed IPv6 included. The name is returned as given."""
    if host.startswith("["):
        end = host.find("]")
        if end != -1:
            rest = host[end + 1 :]
            if rest.startswith(":") and rest[1:].isdigit():
                return host[: end + 1], rest[1:]
            return host[: end + 1], None
        return host, None
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        return name, port
    return host, None


def match_route(resource: Resource, request: RequestAttributes) -> RouteMatch:
    """Find the route and required permission for a request on ``resource``.

    Raises AccessForbidden(route_unknown / mcp_tool_unknown) or
    RequestInvalid(mcp_request_invalid).
    """
    if not _is_safe_path(request.path):
        raise AccessForbidden(Reason.ROUTE_UNKNOWN, f"unsafe path {request.path!r}")
    method = request.method.upper()
    compiled = resource.routes_by_method.get(method)
    if compiled is not None:
        pattern, routes = compiled
        found = pattern.fullmatch(request.path)
        if found is not None and found.lastindex is not None:
            candidate = routes[found.lastindex - 1]
            if candidate.plain_match is not None:
                return candidate.plain_match
            return _match_mcp(resource, candidate.route, candidate.mcp_tools, request)
    raise AccessForbidden(Reason.ROUTE_UNKNOWN, f"no route for {method} {request.path}")


def _is_safe_path(path: str) -> bool:
    if not path.startswith("/"):
        return False
    if "%" in path or "." in path or "\\" in path or ";" in path:
        for segment in path[1:].split("/"):
            lowered = segment.lower()
            # To servers that strip ";params" first (Tomcat, Jetty) "..;x" is a dot segment
            # and ";x" an empty one: neither may stand in for a "{name}" segment.
            name = lowered.split(";", 1)[0]
            if (
                name in _DOT_SEGMENTS
                or (not name and segment)
                or any(s in lowered for s in _SEPARATORS)
            ):
                return False
    return True


def _match_mcp(
    resource: Resource, route: Route, tools: Mapping[str, str], request: RequestAttributes
) -> RouteMatch:
    if request.body_truncated:
        # Envoy cut the body at max_request_bytes: never authorize a call we cannot see whole.
        raise RequestInvalid(Reason.MCP_REQUEST_INVALID, "request body was truncated by Envoy")
    if not request.body:
        raise RequestInvalid(Reason.MCP_REQUEST_INVALID, "MCP request without a body")
    message = _parse_json_rpc(request.body)
    mcp_method: str = message["method"]
    if not (mcp_method.isascii() and mcp_method.isprintable()):
        # A NUL or zero-width character could make a lenient server read "tools/call".
        raise RequestInvalid(Reason.MCP_REQUEST_INVALID, "method name has invisible characters")
    if mcp_method != "tools/call":
        guarded = mcp_method.strip().lower()
        if guarded == "tools/call" or (
            mcp_method not in route.mcp_methods
            and any(guarded == m.lower() for m in route.mcp_methods)
        ):
            # JSON-RPC method names are case-sensitive, but a lenient server might not be:
            # a near-spelling of a guarded method must not pass as an unguarded one.
            raise RequestInvalid(Reason.MCP_REQUEST_INVALID, "method name is a near-spelling")
        permission = route.mcp_methods.get(mcp_method)
        return RouteMatch(resource, route, permission, mcp_method=mcp_method)
    params = message.get("params")
    tool = params.get("name") if isinstance(params, dict) else None
    if not isinstance(tool, str) or not tool:
        raise RequestInvalid(Reason.MCP_REQUEST_INVALID, "tools/call without a tool name")
    permission = tools.get(tool)
    if permission is None:
        raise McpToolUnknown(tool)
    return RouteMatch(resource, route, permission, mcp_method=mcp_method, mcp_tool=tool)


def _parse_json_rpc(body: bytes) -> dict[str, Any]:
    try:
        # Exact repeats are refused anywhere; look-alike names only where we authorize from
        # (the message and its params), so tool arguments may carry both "id" and "ID".
        message = loads_strict(body, fold_names=False)
    except (ValueError, RecursionError) as err:
        raise RequestInvalid(
            Reason.MCP_REQUEST_INVALID, "body is not JSON, or repeats a member name"
        ) from err
    if not isinstance(message, dict):
        # JSON-RPC batches were removed from MCP (2025-06-18); one message per request.
        raise RequestInvalid(Reason.MCP_REQUEST_INVALID, "body is not one JSON-RPC object")
    params = message.get("params")
    if has_folded_collision(message) or (isinstance(params, dict) and has_folded_collision(params)):
        raise RequestInvalid(Reason.MCP_REQUEST_INVALID, "member names a lenient parser merges")
    if message.get("jsonrpc") != "2.0" or not isinstance(message.get("method"), str):
        raise RequestInvalid(Reason.MCP_REQUEST_INVALID, "body is not a JSON-RPC 2.0 request")
    return message
