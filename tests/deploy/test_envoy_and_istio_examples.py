"""deploy/envoy/envoy.yaml and deploy/istio/ set ext_authz up as users should run it.

`envoy --mode validate` and the end-to-end tests run envoy.yaml for real
(tests/e2e/test_deploy_files.py); these pin the settings the docs promise.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from deploy.tools import REPO

ENVOY = REPO / "deploy" / "envoy" / "envoy.yaml"
ISTIO = REPO / "deploy" / "istio"


def _envoy() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(ENVOY.read_text())
    return config


def _http_connection_manager() -> dict[str, Any]:
    (listener,) = _envoy()["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (hcm,) = chain["filters"]
    config: dict[str, Any] = hcm["typed_config"]
    return config


def _ext_authz() -> dict[str, Any]:
    filters = _http_connection_manager()["http_filters"]
    (ext_authz,) = [f for f in filters if f["name"] == "envoy.filters.http.ext_authz"]
    assert filters[-1]["name"] == "envoy.filters.http.router"
    config: dict[str, Any] = ext_authz["typed_config"]
    return config


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", duration)
    assert match, duration
    return float(match[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match[2]]


def test_envoy_calls_extauthz_over_grpc_with_a_timeout_and_fails_closed() -> None:
    config = _ext_authz()
    assert config["transport_api_version"] == "V3"
    assert config["grpc_service"]["envoy_grpc"]["cluster_name"] == "extauthz"
    assert 0 < _seconds(config["grpc_service"]["timeout"]) <= 2
    assert config["failure_mode_allow"] is False
    assert config["status_on_error"] == {"code": 503}
    body = config["with_request_body"]
    assert body["allow_partial_message"] is True and body["pack_as_bytes"] is True
    assert body["max_request_bytes"] >= 8192


def test_envoy_extauthz_cluster_speaks_http2() -> None:
    clusters = {c["name"]: c for c in _envoy()["static_resources"]["clusters"]}
    options = clusters["extauthz"]["typed_extension_protocol_options"]
    http = options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in http["explicit_http_config"]


def test_envoy_health_path_skips_ext_authz() -> None:
    (host,) = _http_connection_manager()["route_config"]["virtual_hosts"]
    health = [r for r in host["routes"] if r["match"].get("path") == "/healthz"]
    assert health, "no /healthz route"
    per_route = health[0]["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
    assert per_route["disabled"] is True
    # ...and it comes before the catch-all, so it is the route that matches.
    assert host["routes"].index(health[0]) < len(host["routes"]) - 1


def test_envoy_access_log_carries_the_decision_id_and_no_credentials() -> None:
    (log,) = _http_connection_manager()["access_log"]
    fields = log["typed_config"]["log_format"]["json_format"]
    assert fields["decision_id"] == "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:decision_id)%"
    assert "authorization" not in yaml.safe_dump(fields).lower()


def test_istio_provider_sets_a_timeout_and_fails_closed() -> None:
    mesh = yaml.safe_load((ISTIO / "mesh-config.yaml").read_text())
    (provider,) = mesh["meshConfig"]["extensionProviders"]
    grpc = provider["envoyExtAuthzGrpc"]
    # Istio's default is 600 s: a stuck authorizer would hold requests for ten minutes.
    assert 0 < _seconds(grpc["timeout"]) <= 2
    assert grpc["failOpen"] is False
    assert grpc["statusOnError"] == "503"
    assert grpc["port"] == 9001
    assert grpc["includeRequestBodyInCheck"]["packAsBytes"] is True


def test_istio_policy_is_custom_and_names_the_provider() -> None:
    mesh = yaml.safe_load((ISTIO / "mesh-config.yaml").read_text())
    (provider,) = mesh["meshConfig"]["extensionProviders"]
    docs = list(yaml.safe_load_all((ISTIO / "authorization-policy.yaml").read_text()))
    (policy,) = [d for d in docs if d["kind"] == "AuthorizationPolicy"]
    assert policy["apiVersion"] == "security.istio.io/v1"
    assert policy["spec"]["action"] == "CUSTOM"
    assert policy["spec"]["provider"]["name"] == provider["name"]
    (rule,) = policy["spec"]["rules"]
    assert rule["to"][0]["operation"]["notPaths"] == ["/healthz", "/readyz"]
