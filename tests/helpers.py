"""Small shared builders for the unit tests (no fixtures here: each test module owns its own).

Import as ``from helpers import ...`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2

from extauthz.demo.issuer import LocalIssuer

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
DEPLOY = ROOT / "deploy" / "extauthz"
DEPLOY_CONFIG = DEPLOY / "config.yaml"

ISSUER = "https://idp.example.test"
HOST = "tickets.example.test"
AUDIENCE = "https://tickets.example.test"


def deploy_config_data() -> dict[str, Any]:
    """The example policy as a fresh, mutable dict."""
    data = yaml.safe_load(DEPLOY_CONFIG.read_text())
    assert isinstance(data, dict)
    return copy.deepcopy(data)


def write_yaml(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def write_feed(path: Path, version: str, users: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": version, "users": dict(users)}))
    return path


def make_deployment(
    dest: Path,
    issuer: LocalIssuer | None,
    edit: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """Copy the example policy into ``dest`` (config, feed), write the issuer's JWKS where
    the config expects it, apply ``edit`` to the config dict, and return the config path."""
    shutil.copytree(DEPLOY, dest, dirs_exist_ok=True)
    if issuer is not None:
        issuer.write_jwks(dest / "keys" / "jwks.json")
    data = deploy_config_data()
    if edit is not None:
        edit(data)
    return write_yaml(dest / "config.yaml", data)


def check_request(
    *,
    method: str = "GET",
    host: str = HOST,
    path: str = "/tickets/1",
    headers: Mapping[str, str] | None = None,
    header_map: Mapping[str, str] | None = None,
    body: str | None = None,
    raw_body: bytes | None = None,
    request_id: str = "",
    source: str = "",
) -> external_auth_pb2.CheckRequest:
    """A CheckRequest as Envoy would send it."""
    check = external_auth_pb2.CheckRequest()
    http = check.attributes.request.http
    http.method = method
    http.host = host
    http.path = path
    if request_id:
        http.id = request_id
    for key, value in (headers or {}).items():
        http.headers[key] = value
    for key, value in (header_map or {}).items():
        http.header_map.headers.append(base_pb2.HeaderValue(key=key, raw_value=value.encode()))
    if body is not None:
        http.body = body
    if raw_body is not None:
        http.raw_body = raw_body
    if source:
        check.attributes.source.address.socket_address.address = source
    return check


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def header_values(options: Any) -> dict[str, str]:
    """HeaderValueOption list → {name: value}."""
    return {o.header.key: o.header.value for o in options}
