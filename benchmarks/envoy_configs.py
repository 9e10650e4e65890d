"""Envoy configs for the cases of ``bench_envoy.py``, derived from deploy/envoy/envoy.yaml.

Every front proxy is the shipped file with its ports rewritten, so the ext_authz cases
measure exactly what users deploy (body buffering, path normalization, access log and
all). The cases without an authorizer take the ext_authz filter out (``envoy-noauth``) or
put Envoy's native ``jwt_authn`` in its place (``envoy-jwt_authn``), verifying the same
issuer and audience against the issuer's JWKS given inline. The upstream is a second
Envoy that answers every request 200 itself (``direct_response``), so that a Python
upstream is not what limits the fast cases on a small machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOYED = REPO / "deploy" / "envoy" / "envoy.yaml"

EXT_AUTHZ = "envoy.filters.http.ext_authz"
JWT_AUTHN = "envoy.filters.http.jwt_authn"
# How the front proxy authorizes, per filter kind.
FILTERS = ("none", "jwt_authn", "ext_authz")
_TYPE_PREFIX = "type.googleapis.com/envoy.extensions."


def load_deployed() -> dict[str, Any]:
    config = yaml.safe_load(DEPLOYED.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{DEPLOYED}: expected a YAML mapping")
    return config


def _endpoint(port: int) -> dict[str, Any]:
    return {
        "lb_endpoints": [
            {
                "endpoint": {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}
                }
            }
        ]
    }


def _http_manager(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert isinstance(manager, dict)
    return manager


def front_config(
    filter_kind: str,
    *,
    listen: int,
    admin: int,
    upstream: int,
    authorizer: int | None = None,
    jwks: dict[str, Any] | None = None,
    issuer: str = "",
    audience: str = "",
) -> dict[str, Any]:
    """The deployed front proxy with ``filter_kind`` as its authorization filter."""
    if filter_kind not in FILTERS:
        raise ValueError(f"unknown filter kind {filter_kind!r}")
    config = load_deployed()
    config["admin"]["address"]["socket_address"]["port_value"] = admin
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = listen
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    clusters["upstream"]["load_assignment"]["endpoints"] = [_endpoint(upstream)]
    manager = _http_manager(config)
    filters = manager["http_filters"]
    if filter_kind == "ext_authz":
        if authorizer is None:
            raise ValueError("ext_authz needs the authorizer's port")
        clusters["extauthz"]["load_assignment"]["endpoints"] = [_endpoint(authorizer)]
        return config
    # No ext_authz: drop its filter, its cluster and the per-route setting that names it.
    manager["http_filters"] = [f for f in filters if f["name"] != EXT_AUTHZ]
    config["static_resources"]["clusters"] = [clusters["upstream"]]
    for host in manager["route_config"]["virtual_hosts"]:
        for route in host["routes"]:
            route.get("typed_per_filter_config", {}).pop(EXT_AUTHZ, None)
            if not route.get("typed_per_filter_config", True):
                del route["typed_per_filter_config"]
    if filter_kind == "jwt_authn":
        if jwks is None or not issuer or not audience:
            raise ValueError("jwt_authn needs the JWKS, issuer and audience")
        manager["http_filters"].insert(0, jwt_authn_filter(jwks, issuer, audience))
    return config


def jwt_authn_filter(jwks: dict[str, Any], issuer: str, audience: str) -> dict[str, Any]:
    """Envoy's native JWT verification: same issuer and audience, keys inline, a token
    required on every path but /healthz (as the ext_authz filter is disabled there)."""
    return {
        "name": JWT_AUTHN,
        "typed_config": {
            "@type": _TYPE_PREFIX + "filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {
                "idp": {
                    "issuer": issuer,
                    "audiences": [audience],
                    "local_jwks": {"inline_string": json.dumps(jwks)},
                    "forward": False,
                }
            },
            "rules": [
                {"match": {"path": "/healthz"}},
                {"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}},
            ],
        },
    }


def upstream_config(*, listen: int, admin: int) -> dict[str, Any]:
    """An Envoy that answers every request 200 with a short body: the protected service.
    The deployed listener, without access log, authorization or clusters."""
    config = load_deployed()
    config["admin"]["address"]["socket_address"]["port_value"] = admin
    listener = config["static_resources"]["listeners"][0]
    listener["name"] = "upstream"
    listener["address"]["socket_address"]["port_value"] = listen
    config["static_resources"]["clusters"] = []
    manager = _http_manager(config)
    manager["stat_prefix"] = "upstream"
    manager.pop("access_log", None)
    manager["http_filters"] = [f for f in manager["http_filters"] if f["name"] != EXT_AUTHZ]
    answer = {"status": 200, "body": {"inline_string": "ok\n"}}
    manager["route_config"] = {
        "name": "upstream",
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "direct_response": answer}],
            }
        ],
    }
    return config


def write(config: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
