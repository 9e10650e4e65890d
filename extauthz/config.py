"""The configuration: loaded once from YAML, validated whole, frozen.

Every problem is reported as ``ConfigError(file, key path, problem)``. Unknown keys are
errors: a misspelt key in security config must never be silently ignored. Derived values
(grant sets, compiled path templates, the host table) are prepared here so that a check
does no parsing. A reload builds a whole new ``Config`` and swaps one reference.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml

from extauthz.errors import ConfigError
from extauthz.permissions import GrantSet, permission_problem
from extauthz.routes import PathTemplate, Resource, ResourceTable, Route

Mode = Literal["enforce", "dry_run"]
DelegationMode = Literal["current_actor", "intersect"]

# Only asymmetric algorithms: an HMAC "secret" would have to be shared with every verifier,
# and HMAC against a public key is the classic key-confusion attack (RFC 8725 §2.1, §3.1).
SUPPORTED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class ServerConfig:
    grpc_listen: str = "127.0.0.1:9001"
    http_listen: str = "127.0.0.1:9090"
    shutdown_grace: float = 10.0
    # After SIGTERM, how long to keep answering while health reports NOT_SERVING, before the
    # listener closes: long enough for a health-checking proxy to stop sending us checks.
    shutdown_delay: float = 0.0
    # How often the config file (and the JWKS files it names) is checked for changes;
    # 0 turns watching off (SIGHUP still reloads).
    reload_check: float = 5.0


KeySourceKind = Literal["file", "url", "discovery"]
FeedKind = Literal["file", "http", "grpc"]


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    issuer: str
    algorithms: frozenset[str]
    # Exactly one source of keys: a JWKS file, a JWKS URL, or OIDC discovery from the issuer.
    jwks_file: Path | None = None
    jwks_url: str | None = None
    discovery: bool = False
    # The refresh interval when the JWKS response says nothing (no Cache-Control max-age),
    # and the bounds any max-age is clamped to.
    keys_refresh: float = 300.0
    keys_refresh_min: float = 60.0
    keys_refresh_max: float = 3600.0
    # At most one refetch per this interval for a token naming an unknown kid, so a flood
    # of made-up kids cannot turn extauthz into an amplifier against the IdP.
    unknown_kid_refetch: float = 60.0
    fetch_timeout: float = 5.0
    ca_file: Path | None = None

    @property
    def key_source(self) -> KeySourceKind:
        if self.jwks_file is not None:
            return "file"
        return "url" if self.jwks_url is not None else "discovery"


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    # None switches the RFC 9068 ``typ`` check off (``typ: any``).
    typ: str | None = "at+jwt"
    max_lifetime: float = 3600.0
    leeway: float = 30.0
    max_delegation_depth: int = 2
    delegation: DelegationMode = "current_actor"


@dataclass(frozen=True, slots=True)
class AgentConfig:
    id: str
    # The issuer this agent is a client of; tokens from any other issuer are not it.
    issuer: str
    permissions: GrantSet
    delegated: bool = True
    autonomous: bool = False
    disabled: bool = False


# A feed this large is a mistake or an attack; refuse it rather than exhaust memory.
MAX_FEED_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class FeedConfig:
    # The feed file's absolute path, an http(s):// URL, or a grpc:// address (see ``kind``).
    source: str
    # Whose users the feed lists: delegated tokens from other issuers have no user here.
    issuer: str
    kind: FeedKind = "file"
    refresh: float = 10.0
    max_staleness: float = 120.0
    timeout: float = 5.0
    # Extra attempts within one refresh of an HTTP feed, with exponential backoff and jitter.
    retries: int = 2
    max_bytes: int = MAX_FEED_BYTES
    # A bearer credential for the feed server, read from a file (re-read every fetch, so a
    # rotated Secret is picked up) or an environment variable; never from the config itself.
    credentials_file: Path | None = None
    credentials_env: str | None = None
    ca_file: Path | None = None
    # Where the last accepted feed is kept, so a restart during a feed outage still serves.
    snapshot_file: Path | None = None

    @property
    def path(self) -> Path:
        """The feed file (``kind`` file only)."""
        return Path(self.source)


@dataclass(frozen=True, slots=True)
class DecisionLogConfig:
    # Lines queued for the writer thread at most; beyond that, see when_full.
    max_pending: int = 10_000
    # deny: refuse checks whose line cannot be kept (no allow goes unaudited); drop: keep
    # answering and count the lost lines.
    when_full: Literal["deny", "drop"] = "deny"


@dataclass(frozen=True, slots=True)
class ResponseConfig:
    # The upstream gets identity headers; the agent's token is withheld unless it needs it.
    forward_authorization: bool = False
    realm: str = "extauthz"


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    policy_version: str
    mode: Mode
    server: ServerConfig
    issuers: Mapping[str, IssuerConfig]
    tokens: TokenPolicy
    agents: Mapping[str, AgentConfig]
    resources: ResourceTable
    feed: FeedConfig
    response: ResponseConfig
    decision_log: DecisionLogConfig = DecisionLogConfig()


T = TypeVar("T")


class _Section:
    """Reads one mapping of the YAML, tracking the key path for error messages."""

    def __init__(self, file: str, path: str, data: object) -> None:
        self.file = file
        self.path = path
        if not isinstance(data, dict):
            raise ConfigError(file, path or "(top level)", f"must be a mapping, got {_kind(data)}")
        self.data: dict[str, Any] = data

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.file, self.key(name), problem)

    def raw(self, name: str) -> object:
        return self.data.get(name)

    def has(self, name: str) -> bool:
        return name in self.data

    def required(self, name: str) -> object:
        if name not in self.data:
            raise self.error(name, "is required")
        return self.raw(name)

    def string(self, name: str, default: str | None = None) -> str:
        value = self.raw(name) if self.has(name) else default
        if value is None:
            raise self.error(name, "is required")
        if not isinstance(value, str) or not value:
            raise self.error(name, f"must be a non-empty string, got {_kind(value)}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        if not self.has(name):
            return default
        value = self.raw(name)
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, got {_kind(value)}")
        return value

    def duration(self, name: str, default: float, *, allow_zero: bool = False) -> float:
        if not self.has(name):
            return default
        value = self.raw(name)
        match = _DURATION.match(value) if isinstance(value, str) else None
        if match is None:
            raise self.error(name, f"must be a duration like 30s, 10m or 1h, got {value!r}")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        if seconds == 0 and not allow_zero:
            raise self.error(name, "must be greater than zero")
        return seconds

    def string_list(self, name: str, *, required: bool = True) -> list[str]:
        if not self.has(name):
            if required:
                raise self.error(name, "is required")
            return []
        value = self.raw(name)
        if not isinstance(value, list):
            raise self.error(name, f"must be a list, got {_kind(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise self.error(f"{name}[{i}]", f"must be a non-empty string, got {_kind(item)}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.string(name, default)
        if value not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def section(self, name: str, *, required: bool = False) -> _Section:
        if not self.has(name):
            if required:
                raise self.error(name, "is required")
            return _Section(self.file, self.key(name), {})
        return _Section(self.file, self.key(name), self.raw(name))

    def items(self, name: str) -> list[_Section]:
        value = self.required(name)
        if not isinstance(value, list):
            raise self.error(name, f"must be a list, got {_kind(value)}")
        return [_Section(self.file, f"{self.key(name)}[{i}]", v) for i, v in enumerate(value)]

    def allow(self, *names: str) -> None:
        """Refuse keys not in ``names``. Called first, so that a misspelt required key is
        reported as the unknown key it is, not as the required one missing."""
        unknown = sorted(set(self.data) - set(names), key=str)
        if unknown:
            raise self.error(str(unknown[0]), "unknown key")


def load_config(path: str | Path) -> Config:
    """Read, validate and compile a config file. Raises ConfigError naming file, key, problem."""
    file = Path(path)
    try:
        text = file.read_bytes()
    except OSError as err:
        raise ConfigError(str(file), "", f"cannot read: {err.strerror or err}") from err
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # safe: a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(str(file), where, f"not valid YAML: {problem}") from err
    return parse_config(data, file, policy_version=hashlib.sha256(text).hexdigest()[:12])


class _StrictLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping, which PyYAML
    would otherwise resolve silently as last-wins (``max_lifetime: 1h`` then ``100h``)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_config(data: object, file: Path, *, policy_version: str) -> Config:
    """Validate an already-parsed YAML document. Raises ConfigError."""
    # Resolved once, so a later change of working directory cannot move the files.
    base = file.parent.resolve()
    top = _Section(str(file), "", data)
    top.allow(
        "server",
        "mode",
        "issuers",
        "tokens",
        "agents",
        "resources",
        "feed",
        "response",
        "decision_log",
    )
    server = _server(top.section("server"))
    mode = top.choice("mode", ("enforce", "dry_run"), "enforce")
    issuers = _unique(
        [_issuer(s, base) for s in top.items("issuers")], lambda i: i.issuer, top, "issuers"
    )
    if not issuers:
        raise top.error("issuers", "must list at least one issuer")
    tokens = _tokens(top.section("tokens"))
    agents = _unique(
        [_agent(s, issuers) for s in top.items("agents")], lambda a: a.id, top, "agents"
    )
    resources = _resources(top)
    feed = _feed(top.section("feed", required=True), base, issuers)
    response = _response(top.section("response"))
    decision_log = _decision_log(top.section("decision_log"))
    return Config(
        path=file,
        policy_version=policy_version,
        mode=mode,  # type: ignore[arg-type]  # checked by choice()
        server=server,
        issuers=issuers,
        tokens=tokens,
        agents=agents,
        resources=ResourceTable(resources),
        feed=feed,
        response=response,
        decision_log=decision_log,
    )


def _server(s: _Section) -> ServerConfig:
    s.allow("grpc_listen", "http_listen", "shutdown_grace", "shutdown_delay", "reload_check")
    default = ServerConfig()
    grpc_listen = _listen(s, "grpc_listen", default.grpc_listen)
    http_listen = _listen(s, "http_listen", default.http_listen)
    grace = s.duration("shutdown_grace", default.shutdown_grace)
    if grpc_listen == http_listen and not grpc_listen.endswith(":0"):
        raise s.error("http_listen", "must differ from grpc_listen")
    reload_check = s.duration("reload_check", default.reload_check, allow_zero=True)
    delay = s.duration("shutdown_delay", default.shutdown_delay, allow_zero=True)
    return ServerConfig(
        grpc_listen=grpc_listen,
        http_listen=http_listen,
        shutdown_grace=grace,
        shutdown_delay=delay,
        reload_check=reload_check,
    )


def _listen(s: _Section, name: str, default: str) -> str:
    value = s.string(name, default)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise s.error(name, f"must be host:port, got {value!r}")
    return value


def _issuer(s: _Section, base: Path) -> IssuerConfig:
    s.allow(
        "issuer",
        "jwks_file",
        "jwks_url",
        "discovery",
        "algorithms",
        "keys_refresh",
        "keys_refresh_min",
        "keys_refresh_max",
        "unknown_kid_refetch",
        "fetch_timeout",
        "ca_file",
        "allow_plain_http",
    )
    issuer = s.string("issuer")
    algorithms = s.string_list("algorithms")
    if not algorithms:
        raise s.error("algorithms", "must list at least one algorithm")
    for i, alg in enumerate(algorithms):
        if alg not in SUPPORTED_ALGORITHMS:
            raise s.error(
                f"algorithms[{i}]",
                f"{alg!r} is not allowed; use asymmetric algorithms only: "
                + ", ".join(sorted(SUPPORTED_ALGORITHMS)),
            )
    discovery = s.boolean("discovery", False)
    given = [name for name in ("jwks_file", "jwks_url") if s.has(name)] + (
        ["discovery"] if discovery else []
    )
    if not given:
        raise s.error(
            "jwks_file",
            "is required (the issuer's signing keys, a JWKS document), "
            "or give jwks_url, or discovery: true",
        )
    if len(given) > 1:
        raise s.error(given[1], f"give only one of jwks_file, jwks_url, discovery: {given[0]} too")
    plain_http = s.boolean("allow_plain_http", False)
    jwks_url = _url(s, "jwks_url", ("https", "http"), plain_http) if s.has("jwks_url") else None
    if discovery:
        # OIDC discovery reads {issuer}/.well-known/openid-configuration.
        _check_url(s, "issuer", issuer, ("https", "http"), plain_http)
    default = IssuerConfig(issuer, frozenset())
    refresh_min = s.duration("keys_refresh_min", default.keys_refresh_min)
    refresh_max = s.duration("keys_refresh_max", default.keys_refresh_max)
    if refresh_max < refresh_min:
        raise s.error("keys_refresh_max", "must not be shorter than keys_refresh_min")
    remote = jwks_url is not None or discovery
    for name in ("keys_refresh", "unknown_kid_refetch", "fetch_timeout", "ca_file"):
        if not remote and s.has(name):
            raise s.error(name, "only applies to keys fetched from jwks_url or discovery")
    return IssuerConfig(
        issuer,
        frozenset(algorithms),
        jwks_file=base / s.string("jwks_file") if s.has("jwks_file") else None,
        jwks_url=jwks_url,
        discovery=discovery,
        keys_refresh=s.duration("keys_refresh", default.keys_refresh),
        keys_refresh_min=refresh_min,
        keys_refresh_max=refresh_max,
        unknown_kid_refetch=s.duration("unknown_kid_refetch", default.unknown_kid_refetch),
        fetch_timeout=s.duration("fetch_timeout", default.fetch_timeout),
        ca_file=base / s.string("ca_file") if s.has("ca_file") else None,
    )


_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})


def _url(s: _Section, name: str, schemes: tuple[str, ...], plain_http: bool) -> str:
    value = s.string(name)
    _check_url(s, name, value, schemes, plain_http)
    return value


def _check_url(
    s: _Section, name: str, value: str, schemes: tuple[str, ...], plain_http: bool
) -> None:
    """Keys and permissions decide who gets in: fetched over plain HTTP they can be
    rewritten on the way, so http:// is for loopback (a sidecar bridge) unless allowed."""
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.hostname:
        raise s.error(name, f"must be a {' or '.join(schemes)} URL with a host, got {value!r}")
    if parts.username or parts.password:
        raise s.error(name, "must not carry credentials; use credentials_file or credentials_env")
    host = parts.hostname.lower()
    loopback = host in _LOOPBACK_HOSTS or host.startswith("127.")
    if parts.scheme == "http" and not loopback and not plain_http:
        raise s.error(
            name,
            "plain http:// is refused for a non-loopback host (keys and permissions could be "
            "rewritten in transit); use https://, or set allow_plain_http: true if a mesh "
            "encrypts the hop",
        )


def _tokens(s: _Section) -> TokenPolicy:
    s.allow("typ", "max_lifetime", "leeway", "max_delegation_depth", "delegation")
    default = TokenPolicy()
    typ_value = s.string("typ", "at+jwt")
    depth = s.raw("max_delegation_depth") if s.has("max_delegation_depth") else 2
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
        raise s.error("max_delegation_depth", f"must be a whole number >= 0, got {depth!r}")
    policy = TokenPolicy(
        typ=None if typ_value == "any" else typ_value.lower().removeprefix("application/"),
        max_lifetime=s.duration("max_lifetime", default.max_lifetime),
        leeway=_leeway(s, default.leeway),
        max_delegation_depth=depth,
        delegation=s.choice(  # type: ignore[arg-type]  # checked by choice()
            "delegation", ("current_actor", "intersect"), default.delegation
        ),
    )
    return policy


def _leeway(s: _Section, default: float) -> float:
    leeway = s.duration("leeway", default, allow_zero=True)
    if leeway > 300:
        raise s.error("leeway", "must be at most 5m; clock skew beyond that is a fault to fix")
    return leeway


def _issuer_of(s: _Section, issuers: Mapping[str, IssuerConfig], what: str) -> str:
    """``issuer`` of an agent or the feed: defaults to the only issuer, required with several."""
    if not s.has("issuer"):
        if len(issuers) == 1:
            return next(iter(issuers))
        raise s.error("issuer", f"is required when several issuers are configured: {what}")
    issuer = s.string("issuer")
    if issuer not in issuers:
        raise s.error("issuer", f"{issuer!r} is not one of the configured issuers")
    return issuer


def _agent(s: _Section, issuers: Mapping[str, IssuerConfig]) -> AgentConfig:
    s.allow("id", "issuer", "permissions", "delegated", "autonomous", "disabled")
    agent_id = s.string("id")
    if not agent_id.isprintable() or agent_id != agent_id.strip():
        raise s.error("id", "must not contain control characters or surrounding spaces")
    issuer = _issuer_of(s, issuers, "which one's client is this agent?")
    permissions = s.string_list("permissions", required=False)
    for i, grant in enumerate(permissions):
        problem = permission_problem(grant, allow_wildcard=True)
        if problem:
            raise s.error(f"permissions[{i}]", problem)
    default = AgentConfig(agent_id, issuer, GrantSet(()))
    agent = AgentConfig(
        id=agent_id,
        issuer=issuer,
        permissions=GrantSet(permissions),
        delegated=s.boolean("delegated", default.delegated),
        autonomous=s.boolean("autonomous", default.autonomous),
        disabled=s.boolean("disabled", default.disabled),
    )
    return agent


def _resources(top: _Section) -> tuple[Resource, ...]:
    resources: list[Resource] = []
    owner_of_host: dict[str, str] = {}
    for s in top.items("resources"):
        resource = _resource(s)
        for i, host in enumerate(resource.hosts):
            key = host.lower()
            if key in owner_of_host:
                raise s.error(f"hosts[{i}]", f"{host!r} is already used by {owner_of_host[key]!r}")
            owner_of_host[key] = resource.name
        resources.append(resource)
    names = [r.name for r in resources]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise top.error(f"resources[{i}].name", f"duplicate resource {name!r}")
    return tuple(resources)


def _resource(s: _Section) -> Resource:
    s.allow("name", "hosts", "audience", "routes")
    name = s.string("name")
    hosts = s.string_list("hosts")
    if not hosts:
        raise s.error("hosts", "must list at least one host")
    audience = s.string("audience")
    routes = tuple(_route(r) for r in s.items("routes"))
    return Resource(name=name, hosts=tuple(hosts), audience=audience, routes=routes)


def _route(s: _Section) -> Route:
    s.allow("method", "path", "permission", "mcp_tools", "mcp_methods")
    method = s.string("method").upper()
    if method not in HTTP_METHODS:
        raise s.error("method", f"must be one of {', '.join(sorted(HTTP_METHODS))}")
    try:
        path = PathTemplate.parse(s.string("path"))
    except ValueError as err:
        raise s.error("path", str(err)) from err
    has_permission, has_tools = s.has("permission"), s.has("mcp_tools")
    if has_permission == has_tools:
        raise s.error("permission", "a route needs exactly one of 'permission' or 'mcp_tools'")
    if has_permission:
        permission = s.string("permission")
        problem = permission_problem(permission, allow_wildcard=False)
        if problem:
            raise s.error("permission", problem)
        if s.has("mcp_methods"):
            raise s.error("mcp_methods", "only an MCP route (one with mcp_tools) may have it")
        return Route(method, path, permission=permission)
    mapping = _permission_map(s.section("mcp_tools"), "tool")
    methods = _permission_map(s.section("mcp_methods"), "method")
    if "tools/call" in methods:
        raise s.error("mcp_methods.tools/call", "tools/call is authorized per tool: mcp_tools")
    return Route(method, path, mcp_tools=mapping, mcp_methods=methods)


def _permission_map(s: _Section, what: str) -> dict[str, str]:
    """A mapping of names (tools, JSON-RPC methods) to concrete required permissions."""
    mapping: dict[str, str] = {}
    for name in list(s.data):
        if not isinstance(name, str) or not name:
            raise s.error(str(name), f"{what} names must be non-empty strings")
        permission = s.string(name)
        problem = permission_problem(permission, allow_wildcard=False)
        if problem:
            raise s.error(name, problem)
        mapping[name] = permission
    return mapping


def _feed(s: _Section, base: Path, issuers: Mapping[str, IssuerConfig]) -> FeedConfig:
    s.allow(
        "source",
        "issuer",
        "refresh",
        "max_staleness",
        "timeout",
        "retries",
        "max_bytes",
        "credentials_file",
        "credentials_env",
        "ca_file",
        "allow_plain_http",
        "snapshot_file",
    )
    default = FeedConfig("", "")
    source = s.string("source")
    plain_http = s.boolean("allow_plain_http", False)
    kind: FeedKind
    if source.startswith(("https://", "http://")):
        kind = "http"
        _check_url(s, "source", source, ("https", "http"), plain_http)
    elif source.startswith("grpc://"):
        kind = "grpc"
        _check_grpc_address(s, source, plain_http)
    elif "://" in source:
        raise s.error("source", "must be a file path, an http(s):// URL or a grpc://host:port")
    else:
        kind, source = "file", str(base / source)
    if kind == "file":
        for name in ("timeout", "retries", "credentials_file", "credentials_env", "ca_file"):
            if s.has(name):
                raise s.error(name, "only applies to an http(s):// or grpc:// feed source")
    if kind == "grpc":
        # A stream reconnects with its own backoff, and grpc:// is plaintext.
        for name in ("retries", "ca_file"):
            if s.has(name):
                raise s.error(name, "does not apply to a grpc:// feed source")
    if s.has("credentials_file") and s.has("credentials_env"):
        raise s.error("credentials_env", "give only one of credentials_file, credentials_env")
    retries = s.raw("retries") if s.has("retries") else default.retries
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 10:
        raise s.error("retries", f"must be a whole number from 0 to 10, got {retries!r}")
    max_bytes = s.raw("max_bytes") if s.has("max_bytes") else default.max_bytes
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1024:
        raise s.error("max_bytes", f"must be a whole number of bytes >= 1024, got {max_bytes!r}")
    feed = FeedConfig(
        source=source,
        issuer=_issuer_of(s, issuers, "whose users does the feed list?"),
        kind=kind,
        refresh=s.duration("refresh", default.refresh),
        max_staleness=s.duration("max_staleness", default.max_staleness),
        timeout=s.duration("timeout", default.timeout),
        retries=retries,
        max_bytes=max_bytes,
        credentials_file=base / s.string("credentials_file") if s.has("credentials_file") else None,
        credentials_env=s.string("credentials_env") if s.has("credentials_env") else None,
        ca_file=base / s.string("ca_file") if s.has("ca_file") else None,
        snapshot_file=base / s.string("snapshot_file") if s.has("snapshot_file") else None,
    )
    if feed.max_staleness <= feed.refresh:
        raise s.error("max_staleness", "must be longer than refresh, or every feed goes stale")
    return feed


def _check_grpc_address(s: _Section, source: str, plain_http: bool) -> None:
    host, sep, port = source.removeprefix("grpc://").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535 or "/" in host:
        raise s.error("source", f"must be grpc://host:port, got {source!r}")
    # grpc:// is plaintext: the same rule as http:// applies.
    _check_url(s, "source", f"http://{host}:{port}", ("http",), plain_http)


def _decision_log(s: _Section) -> DecisionLogConfig:
    s.allow("max_pending", "when_full")
    default = DecisionLogConfig()
    pending = s.raw("max_pending") if s.has("max_pending") else default.max_pending
    if not isinstance(pending, int) or isinstance(pending, bool) or pending < 1:
        raise s.error("max_pending", f"must be a whole number >= 1, got {pending!r}")
    return DecisionLogConfig(
        max_pending=pending,
        when_full=s.choice(  # type: ignore[arg-type]  # checked by choice()
            "when_full", ("deny", "drop"), default.when_full
        ),
    )


def _response(s: _Section) -> ResponseConfig:
    s.allow("forward_authorization", "realm")
    default = ResponseConfig()
    realm = s.string("realm", default.realm)
    if '"' in realm or "\\" in realm:
        raise s.error("realm", "must not contain quotes or backslashes")
    response = ResponseConfig(
        forward_authorization=s.boolean("forward_authorization", default.forward_authorization),
        realm=realm,
    )
    return response


def _unique(items: list[T], key: Callable[[T], str], top: _Section, name: str) -> dict[str, T]:
    result: dict[str, T] = {}
    for i, item in enumerate(items):
        k = key(item)
        if k in result:
            raise top.error(f"{name}[{i}]", f"duplicate entry {k!r}")
        result[k] = item
    return result


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"boolean {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    return type(value).__name__
