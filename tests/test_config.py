"""Config loading and validation (extauthz/config.py): every problem names file, key, problem."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import DATA, DEPLOY, DEPLOY_CONFIG, ISSUER, deploy_config_data, write_yaml

from extauthz.config import Config, load_config
from extauthz.errors import ConfigError
from extauthz.permissions import GrantSet

Edit = Callable[[dict[str, Any]], None]


def load_edited(tmp_path: Path, edit: Edit | None = None) -> Config:
    data = deploy_config_data()
    if edit is not None:
        edit(data)
    return load_config(write_yaml(tmp_path / "config.yaml", data))


def error_of(tmp_path: Path, edit: Edit) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_edited(tmp_path, edit)
    return info.value


def error_of_text(tmp_path: Path, text: str) -> ConfigError:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


def route(data: dict[str, Any], i: int) -> dict[str, Any]:
    routes: list[dict[str, Any]] = data["resources"][0]["routes"]
    return routes[i]


# --- the example policy ----------------------------------------------------------------


def test_example_policy_loads_with_every_value_in_place() -> None:
    config = load_config(DEPLOY_CONFIG)

    assert config.path == DEPLOY_CONFIG
    assert config.mode == "enforce"
    assert config.server.grpc_listen == "127.0.0.1:9001"
    assert config.server.http_listen == "127.0.0.1:9090"
    assert config.server.shutdown_grace == 10.0
    assert list(config.issuers) == [ISSUER]
    issuer = config.issuers[ISSUER]
    assert issuer.algorithms == frozenset({"RS256", "ES256", "EdDSA"})
    assert issuer.jwks_file == DEPLOY / "keys" / "jwks.json"
    assert config.tokens.typ == "at+jwt"
    assert config.tokens.max_lifetime == 3600.0
    assert config.tokens.leeway == 30.0
    assert config.tokens.max_delegation_depth == 2
    assert config.tokens.delegation == "current_actor"
    assert list(config.agents) == ["support-agent", "triage-bot", "retired-agent"]
    support = config.agents["support-agent"]
    assert support.permissions == GrantSet(["tickets:read", "tickets:write"])
    assert (support.delegated, support.autonomous, support.disabled) == (True, False, False)
    triage = config.agents["triage-bot"]
    assert (triage.delegated, triage.autonomous, triage.disabled) == (False, True, False)
    assert config.agents["retired-agent"].disabled is True
    assert config.feed.source == str(DEPLOY / "feed" / "users.json")
    assert config.feed.kind == "file"
    assert config.feed.refresh == 10.0
    assert config.feed.max_staleness == 120.0
    assert config.response.forward_authorization is False
    assert config.response.realm == "extauthz"


def test_example_policy_routes_are_compiled_in_config_order() -> None:
    config = load_config(DEPLOY_CONFIG)
    (tickets,) = config.resources.resources
    assert tickets.name == "tickets"
    assert tickets.audience == "https://tickets.example.test"
    assert config.resources.resource_for_host("tickets.example.test") is tickets
    assert [(r.method, r.path.text, r.permission) for r in tickets.routes] == [
        ("GET", "/tickets/{id}", "tickets:read"),
        ("POST", "/tickets", "tickets:write"),
        ("DELETE", "/tickets/{id}", "tickets:delete"),
        ("POST", "/mcp", None),
    ]
    assert tickets.routes[3].mcp_tools == {
        "get_ticket": "tickets:read",
        "create_ticket": "tickets:write",
    }


def test_optional_sections_take_their_defaults() -> None:
    config = load_config(DATA / "minimal_config.yaml")
    assert config.mode == "enforce"
    assert config.server.grpc_listen == "127.0.0.1:9001"
    assert config.server.http_listen == "127.0.0.1:9090"
    assert config.tokens.typ == "at+jwt"
    assert config.tokens.max_lifetime == 3600.0
    assert config.tokens.leeway == 30.0
    assert config.tokens.max_delegation_depth == 2
    assert config.tokens.delegation == "current_actor"
    agent = config.agents["agent-a"]
    assert agent.permissions == GrantSet([])
    assert (agent.delegated, agent.autonomous, agent.disabled) == (True, False, False)
    assert config.feed.refresh == 10.0
    assert config.feed.max_staleness == 120.0
    assert config.response.forward_authorization is False
    assert config.response.realm == "extauthz"
    # A lower-case method in the config is normalised.
    assert config.resources.resources[0].routes[0].method == "GET"


# --- the error itself ------------------------------------------------------------------


def test_config_error_carries_file_key_and_problem() -> None:
    err = ConfigError("/etc/extauthz.yaml", "tokens.leeway", "must be a duration")
    assert err.file == "/etc/extauthz.yaml"
    assert err.key == "tokens.leeway"
    assert err.problem == "must be a duration"
    assert str(err) == "/etc/extauthz.yaml: tokens.leeway: must be a duration"


def test_config_error_without_a_key_is_file_and_problem() -> None:
    assert str(ConfigError("a.yaml", "", "cannot read")) == "a.yaml: cannot read"


def test_error_names_the_file_it_came_from(tmp_path: Path) -> None:
    err = error_of(tmp_path, lambda d: d["tokens"].update(max_lifetme="1h"))
    assert err.file == str(tmp_path / "config.yaml")
    assert str(err) == f"{tmp_path / 'config.yaml'}: tokens.max_lifetme: unknown key"


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.file == str(missing)
    assert "cannot read" in info.value.problem
    assert "No such file" in info.value.problem


# --- unknown keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda d: d.update(modee="enforce"), "modee"),
        (lambda d: d["server"].update(grpc_port=9001), "server.grpc_port"),
        (lambda d: d["issuers"][0].update(jwks_uri="https://x"), "issuers[0].jwks_uri"),
        (lambda d: d["tokens"].update(max_lifetme="1h"), "tokens.max_lifetme"),
        (lambda d: d["agents"][1].update(permisions=["x"]), "agents[1].permisions"),
        (lambda d: d["resources"][0].update(host=["x"]), "resources[0].host"),
        (lambda d: route(d, 2).update(tool="x"), "resources[0].routes[2].tool"),
        (lambda d: d["feed"].update(refesh="5s"), "feed.refesh"),
        (lambda d: d["response"].update(forward_auth=True), "response.forward_auth"),
    ],
)
def test_unknown_key_is_named_with_its_full_path(tmp_path: Path, edit: Edit, key: str) -> None:
    err = error_of(tmp_path, edit)
    assert err.key == key
    assert err.problem == "unknown key"


def _rename(mapping: dict[str, Any], old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda d: _rename(d, "feed", "feeds"), "feeds"),
        (lambda d: _rename(d["issuers"][0], "jwks_file", "jwks_fil"), "issuers[0].jwks_fil"),
        (
            lambda d: _rename(d["resources"][0], "audience", "audiance"),
            "resources[0].audiance",
        ),
        (
            lambda d: _rename(route(d, 0), "permission", "permision"),
            "resources[0].routes[0].permision",
        ),
        (
            lambda d: _rename(route(d, 3), "mcp_tools", "mcp_tool"),
            "resources[0].routes[3].mcp_tool",
        ),
    ],
    ids=["feed", "jwks_file", "audience", "permission", "mcp_tools"],
)
def test_misspelt_required_key_is_named_as_unknown_not_as_missing(
    tmp_path: Path, edit: Edit, key: str
) -> None:
    err = error_of(tmp_path, edit)
    assert (err.key, err.problem) == (key, "unknown key")


def test_unknown_keys_are_reported_even_when_they_are_not_strings(tmp_path: Path) -> None:
    # YAML turns `1:` and `on:` into an int and a boolean; a misspelt key of any type
    # must be reported as a ConfigError, never crash the loader.
    def edit(d: dict[str, Any]) -> None:
        d["tokens"][1] = "x"
        d["tokens"]["max_lifetme"] = "1h"

    err = error_of(tmp_path, edit)
    assert err.key.startswith("tokens.")
    assert err.problem == "unknown key"


# --- required keys, types ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda d: d.pop("issuers"), "issuers"),
        (lambda d: d.pop("agents"), "agents"),
        (lambda d: d.pop("resources"), "resources"),
        (lambda d: d.pop("feed"), "feed"),
        (lambda d: d["feed"].pop("source"), "feed.source"),
        (lambda d: d["issuers"][0].pop("issuer"), "issuers[0].issuer"),
        (lambda d: d["issuers"][0].pop("jwks_file"), "issuers[0].jwks_file"),
        (lambda d: d["issuers"][0].pop("algorithms"), "issuers[0].algorithms"),
        (lambda d: d["agents"][2].pop("id"), "agents[2].id"),
        (lambda d: d["resources"][0].pop("name"), "resources[0].name"),
        (lambda d: d["resources"][0].pop("hosts"), "resources[0].hosts"),
        (lambda d: d["resources"][0].pop("audience"), "resources[0].audience"),
        (lambda d: d["resources"][0].pop("routes"), "resources[0].routes"),
        (lambda d: route(d, 1).pop("method"), "resources[0].routes[1].method"),
        (lambda d: route(d, 1).pop("path"), "resources[0].routes[1].path"),
    ],
)
def test_missing_required_key_is_named(tmp_path: Path, edit: Edit, key: str) -> None:
    err = error_of(tmp_path, edit)
    assert err.key == key
    assert err.problem.startswith("is required")


@pytest.mark.parametrize(
    ("edit", "key", "problem"),
    [
        (lambda d: d.update(mode=3), "mode", "must be a non-empty string, got int"),
        (lambda d: d.update(mode="audit"), "mode", "must be one of enforce, dry_run"),
        (lambda d: d.update(agents={}), "agents", "must be a list, got dict"),
        (lambda d: d.update(server=[]), "server", "must be a mapping, got list"),
        (lambda d: d.update(tokens=None), "tokens", "must be a mapping, got nothing"),
        (
            lambda d: d["agents"].__setitem__(0, "support-agent"),
            "agents[0]",
            "must be a mapping, got string 'support-agent'",
        ),
        (
            lambda d: d["agents"][0].update(delegated="yes"),
            "agents[0].delegated",
            "must be true or false, got string 'yes'",
        ),
        (
            lambda d: d["agents"][0].update(permissions="tickets:read"),
            "agents[0].permissions",
            "must be a list, got string 'tickets:read'",
        ),
        (
            lambda d: d["agents"][0].update(permissions=["tickets:read", 7]),
            "agents[0].permissions[1]",
            "must be a non-empty string, got int",
        ),
        (
            lambda d: d["response"].update(forward_authorization=1),
            "response.forward_authorization",
            "must be true or false, got int",
        ),
        (
            lambda d: d["tokens"].update(max_delegation_depth=-1),
            "tokens.max_delegation_depth",
            "must be a whole number >= 0",
        ),
        (
            lambda d: d["tokens"].update(max_delegation_depth=True),
            "tokens.max_delegation_depth",
            "must be a whole number >= 0",
        ),
        (
            lambda d: d["tokens"].update(max_delegation_depth="2"),
            "tokens.max_delegation_depth",
            "must be a whole number >= 0",
        ),
        (
            lambda d: d["tokens"].update(delegation="all"),
            "tokens.delegation",
            "must be one of current_actor, intersect",
        ),
        (lambda d: d["resources"][0].update(hosts=[]), "resources[0].hosts", "at least one"),
        (lambda d: d.update(issuers=[]), "issuers", "must list at least one issuer"),
        (
            lambda d: route(d, 0).update(method="FETCH"),
            "resources[0].routes[0].method",
            "must be one of",
        ),
        (
            lambda d: route(d, 0).update(path="tickets/{id}"),
            "resources[0].routes[0].path",
            "must start with '/'",
        ),
        (
            lambda d: route(d, 0).update(path="/tickets/{id"),
            "resources[0].routes[0].path",
            "is not a whole '{name}'",
        ),
        (
            lambda d: route(d, 0).update(path="/tickets/../admin"),
            "resources[0].routes[0].path",
            "dot segments",
        ),
        (
            lambda d: route(d, 0).update(path="/tickets?x=1"),
            "resources[0].routes[0].path",
            "query",
        ),
        (
            lambda d: route(d, 3).update(mcp_tools=["get_ticket"]),
            "resources[0].routes[3].mcp_tools",
            "must be a mapping, got list",
        ),
        (
            lambda d: d["server"].update(grpc_listen="localhost"),
            "server.grpc_listen",
            "must be host:port",
        ),
        (
            lambda d: d["server"].update(grpc_listen="127.0.0.1:70000"),
            "server.grpc_listen",
            "must be host:port",
        ),
        (
            lambda d: d["server"].update(http_listen="127.0.0.1:9001"),
            "server.http_listen",
            "must differ from grpc_listen",
        ),
        (lambda d: d["response"].update(realm='a"b'), "response.realm", "quotes"),
        (lambda d: d["agents"][0].update(id="bad\nagent"), "agents[0].id", "control characters"),
    ],
)
def test_wrong_value_is_named_with_the_problem(
    tmp_path: Path, edit: Edit, key: str, problem: str
) -> None:
    err = error_of(tmp_path, edit)
    assert err.key == key
    assert problem in err.problem


@pytest.mark.parametrize(
    ("text", "problem"),
    [("", "must be a mapping, got nothing"), ("- a\n- b\n", "must be a mapping, got list")],
)
def test_document_that_is_not_a_mapping_is_rejected(
    tmp_path: Path, text: str, problem: str
) -> None:
    err = error_of_text(tmp_path, text)
    assert err.key == "(top level)"
    assert err.problem == problem


def test_both_listens_on_port_zero_are_allowed(tmp_path: Path) -> None:
    def edit(d: dict[str, Any]) -> None:
        d["server"] = {"grpc_listen": "127.0.0.1:0", "http_listen": "127.0.0.1:0"}

    config = load_edited(tmp_path, edit)
    assert config.server.grpc_listen == config.server.http_listen == "127.0.0.1:0"


# --- durations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("10m", 600.0), ("1h", 3600.0), ("500ms", 0.5), ("1.5m", 90.0)],
)
def test_valid_durations_are_read_in_seconds(tmp_path: Path, text: str, seconds: float) -> None:
    config = load_edited(tmp_path, lambda d: d["tokens"].update(max_lifetime=text))
    assert config.tokens.max_lifetime == seconds


@pytest.mark.parametrize("value", [30, "30", "abc", "-1s", "1d", "", "30 s", "1h30m", None])
def test_invalid_durations_are_rejected(tmp_path: Path, value: object) -> None:
    err = error_of(tmp_path, lambda d: d["tokens"].update(max_lifetime=value))
    assert err.key == "tokens.max_lifetime"
    assert err.problem == f"must be a duration like 30s, 10m or 1h, got {value!r}"


def test_leeway_may_be_zero(tmp_path: Path) -> None:
    config = load_edited(tmp_path, lambda d: d["tokens"].update(leeway="0s"))
    assert config.tokens.leeway == 0.0


def test_leeway_over_five_minutes_is_rejected(tmp_path: Path) -> None:
    assert load_edited(tmp_path, lambda d: d["tokens"].update(leeway="5m")).tokens.leeway == 300
    err = error_of(tmp_path, lambda d: d["tokens"].update(leeway="301s"))
    assert err.key == "tokens.leeway"
    assert "at most 5m" in err.problem


@pytest.mark.parametrize(
    ("section", "key"),
    [("tokens", "max_lifetime"), ("feed", "refresh"), ("server", "shutdown_grace")],
)
def test_zero_duration_is_rejected_where_it_makes_no_sense(
    tmp_path: Path, section: str, key: str
) -> None:
    err = error_of(tmp_path, lambda d: d[section].update({key: "0s"}))
    assert err.key == f"{section}.{key}"
    assert err.problem == "must be greater than zero"


def test_shutdown_delay_defaults_to_none_and_reads_a_duration(tmp_path: Path) -> None:
    assert load_config(DEPLOY_CONFIG).server.shutdown_delay == 0.0
    edited = load_edited(tmp_path, lambda d: d["server"].update(shutdown_delay="500ms"))
    assert edited.server.shutdown_delay == 0.5


@pytest.mark.parametrize(("refresh", "max_staleness"), [("2m", "2m"), ("10s", "5s")])
def test_feed_max_staleness_must_exceed_refresh(
    tmp_path: Path, refresh: str, max_staleness: str
) -> None:
    err = error_of(
        tmp_path, lambda d: d["feed"].update(refresh=refresh, max_staleness=max_staleness)
    )
    assert err.key == "feed.max_staleness"
    assert "longer than refresh" in err.problem


# --- algorithms and typ ------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["HS256", "HS512", "none", "rs256", "RS1"])
def test_symmetric_and_unknown_algorithms_are_rejected(tmp_path: Path, alg: str) -> None:
    err = error_of(tmp_path, lambda d: d["issuers"][0].update(algorithms=["RS256", alg]))
    assert err.key == "issuers[0].algorithms[1]"
    assert err.problem.startswith(f"{alg!r} is not allowed; use asymmetric algorithms only")


def test_empty_algorithm_list_is_rejected(tmp_path: Path) -> None:
    err = error_of(tmp_path, lambda d: d["issuers"][0].update(algorithms=[]))
    assert err.key == "issuers[0].algorithms"
    assert "at least one algorithm" in err.problem


def test_every_asymmetric_algorithm_is_accepted(tmp_path: Path) -> None:
    algs = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]
    algs.append("EdDSA")
    config = load_edited(tmp_path, lambda d: d["issuers"][0].update(algorithms=algs))
    assert config.issuers[ISSUER].algorithms == frozenset(algs)


def test_typ_any_disables_the_typ_check(tmp_path: Path) -> None:
    assert load_edited(tmp_path, lambda d: d["tokens"].update(typ="any")).tokens.typ is None


def test_typ_is_compared_as_a_lower_case_media_subtype(tmp_path: Path) -> None:
    config = load_edited(tmp_path, lambda d: d["tokens"].update(typ="application/AT+JWT"))
    assert config.tokens.typ == "at+jwt"


# --- routes and permissions --------------------------------------------------------------


def test_route_with_neither_permission_nor_mcp_tools_is_rejected(tmp_path: Path) -> None:
    err = error_of(tmp_path, lambda d: route(d, 2).pop("permission"))
    assert err.key.startswith("resources[0].routes[2].")
    assert "exactly one of 'permission' or 'mcp_tools'" in err.problem


def test_route_with_both_permission_and_mcp_tools_is_rejected(tmp_path: Path) -> None:
    err = error_of(tmp_path, lambda d: route(d, 2).update(mcp_tools={"t": "tickets:read"}))
    assert err.key in ("resources[0].routes[2].permission", "resources[0].routes[2].mcp_tools")
    assert "exactly one of 'permission' or 'mcp_tools'" in err.problem


@pytest.mark.parametrize("permission", ["tickets:*", "*", "tickets:*:read"])
def test_required_permission_must_be_concrete(tmp_path: Path, permission: str) -> None:
    err = error_of(tmp_path, lambda d: route(d, 0).update(permission=permission))
    assert err.key == "resources[0].routes[0].permission"
    assert "concrete" in err.problem


def test_mcp_tool_permission_must_be_concrete_and_is_named_by_tool(tmp_path: Path) -> None:
    err = error_of(tmp_path, lambda d: route(d, 3)["mcp_tools"].update(get_ticket="tickets:*"))
    assert err.key == "resources[0].routes[3].mcp_tools.get_ticket"
    assert "concrete" in err.problem


def test_mcp_tool_without_a_permission_string_is_rejected(tmp_path: Path) -> None:
    err = error_of(tmp_path, lambda d: route(d, 3)["mcp_tools"].update(get_ticket=None))
    assert err.key == "resources[0].routes[3].mcp_tools.get_ticket"


def test_required_permission_with_a_trailing_newline_is_rejected(tmp_path: Path) -> None:
    # A YAML block scalar (`permission: >` / `|`) keeps a trailing newline: it is not a
    # valid permission and would also end up in the x-extauthz-permission header.
    err = error_of(tmp_path, lambda d: route(d, 0).update(permission="tickets:read\n"))
    assert err.key == "resources[0].routes[0].permission"


@pytest.mark.parametrize("grant", ["tick*", "tickets:re*d", "tickets::read", ""])
def test_agent_grant_with_star_inside_a_segment_or_bad_shape_is_rejected(
    tmp_path: Path, grant: str
) -> None:
    err = error_of(tmp_path, lambda d: d["agents"][0].update(permissions=["tickets:read", grant]))
    assert err.key == "agents[0].permissions[1]"


def test_agent_grants_may_use_whole_segment_wildcards(tmp_path: Path) -> None:
    grants = ["tickets:*", "*", "billing:*:read"]
    config = load_edited(tmp_path, lambda d: d["agents"][0].update(permissions=grants))
    permissions = config.agents["support-agent"].permissions
    assert permissions == GrantSet(grants)
    assert permissions.grants_permission("anything:at:all")


# --- duplicates --------------------------------------------------------------------------


def test_duplicate_agent_is_rejected(tmp_path: Path) -> None:
    err = error_of(tmp_path, lambda d: d["agents"].append({"id": "triage-bot"}))
    assert err.key == "agents[3]"
    assert err.problem == "duplicate entry 'triage-bot'"


def test_duplicate_issuer_is_rejected(tmp_path: Path) -> None:
    err = error_of(tmp_path, lambda d: d["issuers"].append(dict(d["issuers"][0])))
    assert err.key == "issuers[1]"
    assert "duplicate" in err.problem


def other_resource(name: str, hosts: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "hosts": hosts,
        "audience": f"https://{name}.example.test",
        "routes": [{"method": "GET", "path": "/", "permission": f"{name}:read"}],
    }


def test_duplicate_resource_name_is_rejected(tmp_path: Path) -> None:
    err = error_of(
        tmp_path, lambda d: d["resources"].append(other_resource("tickets", ["x.example.test"]))
    )
    assert err.key == "resources[1].name"
    assert "duplicate resource 'tickets'" in err.problem


def test_host_claimed_by_two_resources_is_rejected_case_insensitively(tmp_path: Path) -> None:
    err = error_of(
        tmp_path,
        lambda d: d["resources"].append(
            other_resource("billing", ["billing.example.test", "TICKETS.example.test"])
        ),
    )
    assert err.key == "resources[1].hosts[1]"
    assert "'TICKETS.example.test' is already used by 'tickets'" in err.problem


def test_same_host_with_and_without_port_may_belong_to_two_resources(tmp_path: Path) -> None:
    config = load_edited(
        tmp_path,
        lambda d: d["resources"].append(other_resource("admin", ["tickets.example.test:8443"])),
    )
    assert config.resources.resource_for_host("tickets.example.test:8443").name == "admin"
    assert config.resources.resource_for_host("tickets.example.test:443").name == "tickets"


def test_duplicate_yaml_key_is_rejected(tmp_path: Path) -> None:
    text = DEPLOY_CONFIG.read_text().replace(
        "  max_lifetime: 1h", "  max_lifetime: 1h\n  max_lifetime: 100h", 1
    )
    err = error_of_text(tmp_path, text)
    # PyYAML reports where, not the key path: the line and the key name say it exactly.
    assert err.key == "line 16"
    assert err.problem == "not valid YAML: duplicate key 'max_lifetime'"


# --- paths, YAML, policy version ---------------------------------------------------------


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc" / "extauthz"
    write_yaml(folder / "config.yaml", deploy_config_data())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    config = load_config(Path("..") / "etc" / "extauthz" / "config.yaml")

    jwks_file = config.issuers[ISSUER].jwks_file
    assert jwks_file is not None
    assert jwks_file.resolve() == folder / "keys" / "jwks.json"
    assert config.feed.path.resolve() == folder / "feed" / "users.json"


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    jwks = tmp_path / "abs" / "jwks.json"
    feed = tmp_path / "abs" / "users.json"

    def edit(d: dict[str, Any]) -> None:
        d["issuers"][0]["jwks_file"] = str(jwks)
        d["feed"]["source"] = str(feed)

    config = load_edited(tmp_path / "cfg", edit)
    assert config.issuers[ISSUER].jwks_file == jwks
    assert config.feed.path == feed


def test_invalid_yaml_reports_the_line(tmp_path: Path) -> None:
    source = DATA / "invalid_yaml.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(source)
    assert info.value.file == str(source)
    assert info.value.key == "line 3"
    assert info.value.problem.startswith("not valid YAML: ")
    assert str(info.value).startswith(f"{source}: line 3: not valid YAML")


def test_policy_version_is_the_file_hash_and_changes_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    original = DEPLOY_CONFIG.read_bytes()
    path.write_bytes(original)
    first = load_config(path).policy_version
    assert first == hashlib.sha256(original).hexdigest()[:12]

    path.write_bytes(original + b"# a comment changes the file\n")
    second = load_config(path).policy_version
    assert second != first
    assert len(second) == 12
    assert int(second, 16) >= 0

    path.write_bytes(original)
    assert load_config(path).policy_version == first


def test_mode_dry_run_is_accepted(tmp_path: Path) -> None:
    assert load_edited(tmp_path, lambda d: d.update(mode="dry_run")).mode == "dry_run"


# --- mcp_methods -------------------------------------------------------------------------


def test_mcp_methods_map_other_json_rpc_methods_to_permissions(tmp_path: Path) -> None:
    config = load_edited(
        tmp_path, lambda d: route(d, 3).update(mcp_methods={"resources/read": "tickets:read"})
    )
    mcp_route = config.resources.resources[0].routes[3]
    assert mcp_route.mcp_methods == {"resources/read": "tickets:read"}


def test_mcp_methods_default_to_none_guarded(tmp_path: Path) -> None:
    assert load_edited(tmp_path).resources.resources[0].routes[3].mcp_methods == {}


@pytest.mark.parametrize(
    ("edit", "key", "problem"),
    [
        (
            lambda d: route(d, 0).update(mcp_methods={"resources/read": "tickets:read"}),
            "resources[0].routes[0].mcp_methods",
            "only an MCP route",
        ),
        (
            lambda d: route(d, 3).update(mcp_methods={"tools/call": "tickets:read"}),
            "resources[0].routes[3].mcp_methods.tools/call",
            "per tool",
        ),
        (
            lambda d: route(d, 3).update(mcp_methods={"resources/read": "tickets:*"}),
            "resources[0].routes[3].mcp_methods.resources/read",
            "concrete",
        ),
    ],
    ids=["on-a-plain-route", "tools-call", "wildcard-permission"],
)
def test_invalid_mcp_methods_are_rejected(
    tmp_path: Path, edit: Edit, key: str, problem: str
) -> None:
    err = error_of(tmp_path, edit)
    assert err.key == key
    assert problem in err.problem


# --- agents[].issuer and feed.issuer -----------------------------------------------------

PARTNER = "https://partner.example.test"


def add_partner_issuer(d: dict[str, Any]) -> None:
    d["issuers"].append(
        {"issuer": PARTNER, "jwks_file": "keys/partner.json", "algorithms": ["RS256"]}
    )


def bind_every_agent(d: dict[str, Any], issuer: str = ISSUER) -> None:
    for agent in d["agents"]:
        agent["issuer"] = issuer


def test_example_policy_binds_its_agents_and_feed_to_its_only_issuer() -> None:
    config = load_config(DEPLOY_CONFIG)

    assert {agent.issuer for agent in config.agents.values()} == {ISSUER}
    assert config.feed.issuer == ISSUER


def test_agent_and_feed_issuer_may_name_the_only_issuer(tmp_path: Path) -> None:
    def edit(d: dict[str, Any]) -> None:
        bind_every_agent(d)
        d["feed"]["issuer"] = ISSUER

    config = load_edited(tmp_path, edit)
    assert config.agents["support-agent"].issuer == ISSUER
    assert config.feed.issuer == ISSUER


def test_with_several_issuers_agents_and_feed_are_bound_to_the_one_they_name(
    tmp_path: Path,
) -> None:
    def edit(d: dict[str, Any]) -> None:
        add_partner_issuer(d)
        bind_every_agent(d)
        d["agents"][1]["issuer"] = PARTNER
        d["feed"]["issuer"] = PARTNER

    config = load_edited(tmp_path, edit)
    assert config.agents["support-agent"].issuer == ISSUER
    assert config.agents["triage-bot"].issuer == PARTNER
    assert config.agents["retired-agent"].issuer == ISSUER
    assert config.feed.issuer == PARTNER


def test_agent_issuer_is_required_when_several_issuers_are_configured(tmp_path: Path) -> None:
    err = error_of(tmp_path, add_partner_issuer)
    assert err.key == "agents[0].issuer"
    assert "is required when several issuers are configured" in err.problem


def test_one_agent_without_an_issuer_among_several_issuers_is_named(tmp_path: Path) -> None:
    def edit(d: dict[str, Any]) -> None:
        add_partner_issuer(d)
        bind_every_agent(d)
        del d["agents"][2]["issuer"]

    err = error_of(tmp_path, edit)
    assert err.key == "agents[2].issuer"
    assert "is required when several issuers are configured" in err.problem


def test_feed_issuer_is_required_when_several_issuers_are_configured(tmp_path: Path) -> None:
    def edit(d: dict[str, Any]) -> None:
        add_partner_issuer(d)
        bind_every_agent(d)

    err = error_of(tmp_path, edit)
    assert err.key == "feed.issuer"
    assert "is required when several issuers are configured" in err.problem


@pytest.mark.parametrize("several", [False, True], ids=["one_issuer", "two_issuers"])
@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda d: d["agents"][1].update(issuer="https://evil.example.test"), "agents[1].issuer"),
        (lambda d: d["agents"][1].update(issuer=ISSUER + "/"), "agents[1].issuer"),
        (lambda d: d["feed"].update(issuer="https://evil.example.test"), "feed.issuer"),
    ],
    ids=["agent", "agent_trailing_slash", "feed"],
)
def test_issuer_that_is_not_configured_is_rejected(
    tmp_path: Path, edit: Edit, key: str, several: bool
) -> None:
    def edit_all(d: dict[str, Any]) -> None:
        if several:
            add_partner_issuer(d)
            bind_every_agent(d)
            d["feed"]["issuer"] = ISSUER
        edit(d)

    err = error_of(tmp_path, edit_all)
    assert err.key == key
    assert "is not one of the configured issuers" in err.problem


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda d: d["agents"][0].update(issuer=7), "agents[0].issuer"),
        (lambda d: d["agents"][0].update(issuer=""), "agents[0].issuer"),
        (lambda d: d["feed"].update(issuer=[ISSUER]), "feed.issuer"),
    ],
)
def test_issuer_that_is_not_a_string_is_rejected(tmp_path: Path, edit: Edit, key: str) -> None:
    err = error_of(tmp_path, edit)
    assert err.key == key
    assert "must be a non-empty string" in err.problem


@pytest.mark.parametrize("agent_id", [" triage-bot", "triage-bot ", " triage-bot "])
def test_agent_id_with_surrounding_spaces_is_rejected(tmp_path: Path, agent_id: str) -> None:
    err = error_of(tmp_path, lambda d: d["agents"][1].update(id=agent_id))
    assert err.key == "agents[1].id"
    assert "surrounding spaces" in err.problem


# --- key sources -------------------------------------------------------------------------


def _keys(d: dict[str, Any], **keys: Any) -> None:
    issuer = d["issuers"][0]
    issuer.pop("jwks_file")
    issuer.update(keys)


def test_issuer_keys_may_come_from_a_jwks_url(tmp_path: Path) -> None:
    issuer = next(
        iter(
            load_edited(tmp_path, lambda d: _keys(d, jwks_url="https://idp/jwks")).issuers.values()
        )
    )
    assert issuer.key_source == "url"
    assert issuer.jwks_url == "https://idp/jwks"
    assert issuer.jwks_file is None
    assert (issuer.keys_refresh, issuer.unknown_kid_refetch) == (300.0, 60.0)


def test_issuer_keys_may_come_from_oidc_discovery(tmp_path: Path) -> None:
    def edit(d: dict[str, Any]) -> None:
        _keys(d, discovery=True, keys_refresh="2m", unknown_kid_refetch="10s")

    issuer = next(iter(load_edited(tmp_path, edit).issuers.values()))
    assert issuer.key_source == "discovery"
    assert (issuer.keys_refresh, issuer.unknown_kid_refetch) == (120.0, 10.0)


@pytest.mark.parametrize(
    ("edit", "key", "problem"),
    [
        (lambda d: _keys(d), "issuers[0].jwks_file", "or give jwks_url, or discovery: true"),
        (
            lambda d: d["issuers"][0].update(jwks_url="https://idp/jwks"),
            "issuers[0].jwks_url",
            "give only one of jwks_file, jwks_url, discovery",
        ),
        (lambda d: _keys(d, jwks_url="ftp://idp/jwks"), "issuers[0].jwks_url", "https or http"),
        (lambda d: _keys(d, jwks_url="https:///jwks"), "issuers[0].jwks_url", "with a host"),
        (
            lambda d: _keys(d, jwks_url="http://idp.example.test/jwks"),
            "issuers[0].jwks_url",
            "plain http:// is refused",
        ),
        (
            lambda d: _keys(d, jwks_url="https://u:p@idp/jwks"),
            "issuers[0].jwks_url",
            "must not carry credentials",
        ),
        (
            lambda d: d["issuers"][0].update(keys_refresh="1m"),
            "issuers[0].keys_refresh",
            "only applies to keys fetched",
        ),
        (
            lambda d: _keys(
                d, jwks_url="https://idp/j", keys_refresh_min="10m", keys_refresh_max="5m"
            ),
            "issuers[0].keys_refresh_max",
            "must not be shorter",
        ),
    ],
)
def test_bad_key_source_is_rejected_precisely(
    tmp_path: Path, edit: Edit, key: str, problem: str
) -> None:
    err = error_of(tmp_path, edit)
    assert (err.key, problem in err.problem) == (key, True), err


def test_plain_http_keys_are_allowed_on_loopback_or_when_asked(tmp_path: Path) -> None:
    assert load_edited(tmp_path, lambda d: _keys(d, jwks_url="http://127.0.0.1:1/j")).issuers
    edit: Edit = lambda d: _keys(d, jwks_url="http://idp.internal/j", allow_plain_http=True)  # noqa: E731
    assert load_edited(tmp_path, edit).issuers


# --- feed sources ------------------------------------------------------------------------


def test_feed_source_may_be_an_https_url_with_a_credentials_file(tmp_path: Path) -> None:
    def edit(d: dict[str, Any]) -> None:
        d["feed"].update(
            source="https://perms.example.test/feed.json",
            credentials_file="secrets/feed-token",
            timeout="2s",
            retries=4,
            snapshot_file="state/feed.json",
        )

    feed = load_edited(tmp_path, edit).feed
    assert (feed.kind, feed.source) == ("http", "https://perms.example.test/feed.json")
    assert feed.credentials_file == tmp_path.resolve() / "secrets" / "feed-token"
    assert feed.snapshot_file == tmp_path.resolve() / "state" / "feed.json"
    assert (feed.timeout, feed.retries) == (2.0, 4)


def test_feed_source_may_be_a_grpc_address(tmp_path: Path) -> None:
    def edit(d: dict[str, Any]) -> None:
        d["feed"].update(source="grpc://127.0.0.1:7070", credentials_env="FEED_TOKEN")

    feed = load_edited(tmp_path, edit).feed
    assert (feed.kind, feed.source, feed.credentials_env) == (
        "grpc",
        "grpc://127.0.0.1:7070",
        "FEED_TOKEN",
    )


@pytest.mark.parametrize(
    ("feed", "key", "problem"),
    [
        ({"source": "s3://bucket/feed"}, "feed.source", "must be a file path, an http(s)://"),
        ({"source": "grpc://host"}, "feed.source", "must be grpc://host:port"),
        ({"source": "grpc://host:99999"}, "feed.source", "must be grpc://host:port"),
        ({"source": "grpc://perms.example.test:7070"}, "feed.source", "plain http:// is refused"),
        ({"source": "http://perms.example.test/f"}, "feed.source", "plain http:// is refused"),
        ({"retries": 2}, "feed.retries", "only applies to an http(s):// or grpc://"),
        ({"credentials_env": "X"}, "feed.credentials_env", "only applies"),
        (
            {"source": "https://p/f", "credentials_env": "X", "credentials_file": "f"},
            "feed.credentials_env",
            "give only one",
        ),
        ({"source": "https://p/f", "retries": 11}, "feed.retries", "from 0 to 10"),
        ({"source": "https://p/f", "retries": "3"}, "feed.retries", "from 0 to 10"),
        ({"max_bytes": 10}, "feed.max_bytes", ">= 1024"),
        ({"source": "grpc://127.0.0.1:1", "retries": 1}, "feed.retries", "does not apply"),
        ({"source": "grpc://127.0.0.1:1", "ca_file": "ca"}, "feed.ca_file", "does not apply"),
    ],
)
def test_bad_feed_source_settings_are_rejected_precisely(
    tmp_path: Path, feed: dict[str, Any], key: str, problem: str
) -> None:
    err = error_of(tmp_path, lambda d: d["feed"].update(feed))
    assert (err.key, problem in err.problem) == (key, True), err
