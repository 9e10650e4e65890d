"""helm/extauthz: lint, render, Kubernetes schemas, values schema, and the rendered objects."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.tools import REPO, RunningExtauthz, run
from extauthz.config import load_config

CHART = REPO / "helm" / "extauthz"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
VALUE_SETS = [None, *CI_VALUES]
VALUE_IDS = ["default", *(p.name.removesuffix("-values.yaml") for p in CI_VALUES)]


def render(helm: Path, *args: str | Path, namespace: str = "extauthz") -> list[dict[str, Any]]:
    out = run([helm, "template", "rel", CHART, "--namespace", namespace, *args])
    return [doc for doc in yaml.safe_load_all(out) if doc]


def values_args(values: Path | None) -> list[str | Path]:
    return [] if values is None else ["--values", values]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    kinds: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name}: {len(found)} rendered"
    return found[0]


def config_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    data = one(docs, "ConfigMap", "rel-extauthz")["data"]
    config: dict[str, Any] = yaml.safe_load(data["config.yaml"])
    return config


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (only,) = pod["containers"]
    result: dict[str, Any] = only
    return result


# ------------------------------------------------------------------- tools on the chart


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_chart_passes_helm_lint_strict(helm: Path, values: Path | None) -> None:
    out = run([helm, "lint", "--strict", CHART, *values_args(values)])
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_rendered_objects_pass_kubernetes_validate_strict(
    helm: Path, kubernetes_validate: Path, values: Path | None
) -> None:
    manifest = run(
        [helm, "template", "rel", CHART, "--namespace", "extauthz", *values_args(values)]
    )
    out = run([kubernetes_validate, "--strict", "--no-warn", "-"], stdin=manifest)
    builtin = [d for d in yaml.safe_load_all(manifest) if d and "coreos" not in d["apiVersion"]]
    assert out.count("passed for resource") == len(builtin), out


def test_kubernetes_validate_rejects_a_misspelt_field(
    helm: Path, kubernetes_validate: Path
) -> None:
    manifest = run([helm, "template", "rel", CHART]).replace(
        "readOnlyRootFilesystem", "readOnlyRootFS"
    )
    result = subprocess.run(
        [str(kubernetes_validate), "--strict", "-"],
        input=manifest,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "readOnlyRootFS" in result.stdout + result.stderr


# ------------------------------------------------------------------- values schema


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "bogus=1"], "(root): Additional property bogus is not allowed"),
        (
            ["--set", "replicaCount=two"],
            "replicaCount: Invalid type. Expected: integer, given: string",
        ),
        (["--set", "server.grpcPort=grpc"], "server.grpcPort: Invalid type. Expected: integer"),
        (["--set", "deploymentMode=daemonset"], "deploymentMode: deploymentMode must be one of"),
        (["--set", "configRollout=restart"], "configRollout: configRollout must be one of"),
        (["--set", "config.mode=audit"], "config.mode: config.mode must be one of"),
        (
            [
                "--set-json",
                'config.issuers=[{"issuer": "https://idp.test", "algorithms": ["RS256"]}]',
            ],
            "config.issuers.0: jwks_file is required",
        ),
        (["--set-json", "config.issuers=[]"], "config.issuers: Array must have at least 1 items"),
        (
            ["--set-json", 'config.agents=[{"id": "a"}]'],
            "config: feed is required",
        ),
        (
            ["--set-json", 'config.agents=[{"permissions": ["tickets:read"]}]'],
            "config.agents.0: id is required",
        ),
        (
            ["--set-json", 'files={"jwks.json": 1}'],
            "files.jwks.json: Invalid type. Expected: string",
        ),
        (
            ["--set", "credentials.mountPath=secrets"],
            "credentials.mountPath: Does not match pattern",
        ),
    ],
    ids=[
        "unknown-top-level-key",
        "wrong-type",
        "port-not-a-number",
        "unknown-deployment-mode",
        "unknown-rollout",
        "unknown-policy-mode",
        "issuer-without-keys",
        "no-issuer",
        "policy-without-feed",
        "agent-without-id",
        "file-not-a-string",
        "relative-secret-path",
    ],
)
def test_schema_rejects_bad_values_with_a_clear_message(
    helm: Path, args: list[str], message: str
) -> None:
    result = subprocess.run(
        [str(helm), "template", "rel", str(CHART), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0, result.stdout[:500]
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


def test_setting_config_server_is_refused_by_name(helm: Path) -> None:
    result = subprocess.run(
        [
            str(helm),
            *("template", "rel", str(CHART), "-f", str(CHART / "ci" / "minimal-values.yaml")),
            *("--set", "config.server.grpc_listen=x:1"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "config.server is set by the chart" in result.stderr


def test_every_value_has_a_comment() -> None:
    """Each key the schema defines has a comment line right above it in values.yaml
    (free-form values such as `config`, `resources` or `files` are documented as a whole)."""
    text = (CHART / "values.yaml").read_text()
    lines = text.splitlines()
    assert lines[0] == "# yaml-language-server: $schema=values.schema.json"
    schema = json.loads((CHART / "values.schema.json").read_text())
    uncommented: list[str] = []

    def walk(node: yaml.Node, schema_node: dict[str, Any], path: str) -> None:
        assert isinstance(node, yaml.MappingNode), path
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line
            if not lines[line - 1].strip().startswith("#"):
                uncommented.append(f"{path}{key} (line {line + 1})")
            child = schema_node["properties"].get(key)
            assert child is not None, f"{path}{key} is not in values.schema.json"
            chart_defined = child.get("additionalProperties") is False
            if chart_defined and isinstance(value_node, yaml.MappingNode):
                walk(value_node, child, f"{path}{key}.")

    walk(yaml.compose(text), schema, "")
    assert uncommented == []


# ------------------------------------------------------------------- rendered objects


def test_default_render_has_a_deployment_service_configmap_and_no_secret(helm: Path) -> None:
    kinds = by_kind(render(helm))
    assert sorted(kinds) == [
        "ConfigMap",
        "Deployment",
        "Pod",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]


def test_everything_on_renders_every_optional_object(helm: Path) -> None:
    docs = render(helm, "--values", CHART / "ci" / "everything-values.yaml")
    kinds = by_kind(docs)
    for kind in (
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
        "ServiceAccount",
    ):
        assert kind in kinds, kind
    assert "Secret" not in kinds
    # The HPA owns the replica count.
    assert "replicas" not in one(docs, "Deployment")["spec"]


def test_container_is_locked_down(helm: Path) -> None:
    docs = render(helm)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    security = container(docs)["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    # The only writable place is an emptyDir.
    mounts = {m["mountPath"]: m for m in container(docs)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = [p for p, m in mounts.items() if not m.get("readOnly")]
    assert writable == ["/tmp"]
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]


def test_probes_ask_grpc_health_on_the_grpc_port(helm: Path) -> None:
    docs = render(helm)
    main = container(docs)
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {"grpc": 9001, "http-metrics": 9090}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert main[probe]["grpc"]["port"] == ports["grpc"], probe
    assert main["readinessProbe"]["grpc"]["service"] == "envoy.service.auth.v3.Authorization"
    config = config_of(docs)
    assert config["server"] == {
        "grpc_listen": "0.0.0.0:9001",
        "http_listen": "0.0.0.0:9090",
        "shutdown_grace": "10s",
    }


def test_server_extra_settings_pass_through_but_never_move_the_listeners(helm: Path) -> None:
    docs = render(
        helm,
        "--set",
        "server.extraSettings.reload_check=5s",
        "--set",
        "server.extraSettings.grpc_listen=127.0.0.1:1",
    )
    assert config_of(docs)["server"] == {
        "grpc_listen": "0.0.0.0:9001",
        "http_listen": "0.0.0.0:9090",
        "shutdown_grace": "10s",
        "reload_check": "5s",
    }


def test_termination_grace_outlasts_prestop_and_drain(helm: Path) -> None:
    docs = render(helm, "--set", "server.shutdownGraceSeconds=25")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    sleep = container(docs)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert config_of(docs)["server"]["shutdown_grace"] == "25s"
    assert pod["terminationGracePeriodSeconds"] > sleep + 25


def test_service_has_named_grpc_and_metrics_ports(helm: Path) -> None:
    service = one(render(helm), "Service")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert sorted(ports) == ["grpc", "http-metrics"]
    assert ports["grpc"]["targetPort"] == "grpc" and ports["grpc"]["appProtocol"] == "grpc"
    assert ports["http-metrics"]["targetPort"] == "http-metrics"


def test_topology_spread_selects_the_release_pods(helm: Path) -> None:
    docs = render(helm)
    spec = one(docs, "Deployment")["spec"]
    selector = spec["selector"]["matchLabels"]
    constraints = spec["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in constraints} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    assert all(c["labelSelector"]["matchLabels"] == selector for c in constraints)


@pytest.mark.parametrize(
    "values",
    [None, CHART / "ci" / "minimal-values.yaml", CHART / "ci" / "everything-values.yaml"],
    ids=["default", "minimal", "everything"],
)
def test_configmap_is_a_valid_extauthz_config(
    helm: Path, values: Path | None, tmp_path: Path
) -> None:
    data = one(render(helm, *values_args(values)), "ConfigMap", "rel-extauthz")["data"]
    for name, content in data.items():
        (tmp_path / name).write_text(content)
    config = load_config(tmp_path / "config.yaml")  # raises ConfigError naming the problem
    assert config.server.grpc_listen == "0.0.0.0:9001"
    if config.feed.kind == "file":
        assert config.feed.source == str(tmp_path / "users.json")


def test_configmap_with_a_bad_policy_fails_the_project_loader(helm: Path, tmp_path: Path) -> None:
    from extauthz.errors import ConfigError

    minimal = CHART / "ci" / "minimal-values.yaml"
    docs = render(helm, "-f", minimal, "--set", "config.tokens.max_lifetme=1h")
    data = one(docs, "ConfigMap")["data"]
    (tmp_path / "config.yaml").write_text(data["config.yaml"])
    with pytest.raises(ConfigError, match="max_lifetme"):
        load_config(tmp_path / "config.yaml")


def test_policy_keys_pass_through_untouched(helm: Path) -> None:
    # Keys the chart does not know (added on main: jwks_url, discovery, credentials_file)
    # reach config.yaml exactly as given.
    everything = CHART / "ci" / "everything-values.yaml"
    given = yaml.safe_load(everything.read_text())["config"]
    rendered = config_of(render(helm, "--values", everything))
    assert {k: v for k, v in rendered.items() if k != "server"} == given
    assert rendered["issuers"][0]["jwks_url"].endswith("/jwks.json")
    assert rendered["feed"]["credentials_file"] == "/etc/extauthz/secrets/feed-token"


def test_checksum_annotation_rolls_pods_on_policy_change(helm: Path) -> None:
    def checksum(*args: str) -> str | None:
        minimal = CHART / "ci" / "minimal-values.yaml"
        template = one(render(helm, "-f", minimal, *args), "Deployment")["spec"]["template"]
        annotations: dict[str, str] = template["metadata"].get("annotations") or {}
        return annotations.get("checksum/config")

    base = checksum()
    assert base is not None and len(base) == 64
    assert checksum() == base
    assert checksum("--set", "config.mode=dry_run") != base
    assert checksum("--set-string", "files.extra\\.json=[]") != base
    assert checksum("--set", "configRollout=reload") is None


def test_credentials_come_from_an_existing_secret_as_read_only_files(helm: Path) -> None:
    docs = render(helm, "--set", "credentials.existingSecret=feed-creds")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == "feed-creds"
    (mount,) = [m for m in container(docs)["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {"name": volume["name"], "mountPath": "/etc/extauthz/secrets", "readOnly": True}
    assert "Secret" not in by_kind(docs)
    assert all("env" not in c or all("value" in e for e in c["env"]) for c in pod["containers"])


def test_network_policy_admits_only_mesh_proxies_to_grpc(helm: Path) -> None:
    docs = render(helm, "--values", CHART / "ci" / "everything-values.yaml")
    policy = one(docs, "NetworkPolicy")["spec"]
    grpc_rule, metrics_rule = policy["ingress"]
    assert grpc_rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    assert grpc_rule["from"] == [
        {
            "namespaceSelector": {},
            "podSelector": {"matchLabels": {"security.istio.io/tlsMode": "istio"}},
        }
    ]
    assert metrics_rule["ports"] == [{"port": "http-metrics", "protocol": "TCP"}]
    assert policy["podSelector"] == one(docs, "Deployment")["spec"]["selector"]


def test_prometheus_rule_carries_exactly_the_deploy_alerts(helm: Path) -> None:
    alerts = REPO / "deploy" / "prometheus" / "alerts.yaml"
    assert (CHART / "files" / "alerts.yaml").read_bytes() == alerts.read_bytes()
    docs = render(helm, "--set", "metrics.prometheusRule.enabled=true")
    assert one(docs, "PrometheusRule")["spec"] == yaml.safe_load(alerts.read_text())


def test_dashboard_configmap_carries_the_deploy_dashboard_for_the_sidecar(helm: Path) -> None:
    dashboard = REPO / "deploy" / "grafana" / "dashboard.json"
    assert (CHART / "files" / "dashboard.json").read_bytes() == dashboard.read_bytes()
    docs = render(helm, "--set", "metrics.dashboard.enabled=true")
    configmap = one(docs, "ConfigMap", "rel-extauthz-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["extauthz.json"]) == json.loads(dashboard.read_text())


def test_sidecar_mode_renders_a_loopback_container_and_no_service(
    helm: Path, kubernetes_validate: Path, tmp_path: Path
) -> None:
    docs = render(helm, "--values", CHART / "ci" / "sidecar-values.yaml")
    assert not {"Deployment", "Service", "PodDisruptionBudget", "Pod"} & set(by_kind(docs))
    assert config_of(docs)["server"]["grpc_listen"] == "127.0.0.1:9001"
    snippet = one(docs, "ConfigMap", "rel-extauthz-sidecar")["data"]
    sidecar = yaml.safe_load(snippet["container.yaml"])
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    assert sidecar["readinessProbe"]["grpc"]["port"] == 9001
    # The snippet is a valid container: put it in a pod next to an application's Envoy.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app", "namespace": "extauthz"},
        "spec": {
            "containers": [
                {"name": "envoy", "image": "envoyproxy/envoy:v1.36-latest"},
                sidecar,
            ],
            "volumes": yaml.safe_load(snippet["volumes.yaml"]),
        },
    }
    out = run([kubernetes_validate, "--strict", "-"], stdin=yaml.safe_dump(pod))
    assert "passed for resource pod/app" in out


def _notes(helm: Path, tmp_path: Path, *args: str) -> str:
    # `helm template` does not render NOTES.txt; render the same text as a ConfigMap value.
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes.txt")
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data:\n  notes: {{ tpl (.Files.Get "notes.txt") . | toJson }}\n'
    )
    out = run(
        [
            helm,
            "template",
            "rel",
            chart,
            "-n",
            "extauthz",
            "--show-only",
            "templates/zz-notes.yaml",
            *args,
        ]
    )
    notes: str = yaml.safe_load(out)["data"]["notes"]
    return notes


def test_notes_print_the_istio_provider_and_a_custom_policy(helm: Path, tmp_path: Path) -> None:
    notes = _notes(helm, tmp_path)
    provider_text = notes.split("1. Register")[1].split("\n", 1)[1].split("2. Send")[0]
    policy_text = notes.split("2. Send")[1].split("\n", 1)[1].split("\nWARNING")[0]
    (provider,) = yaml.safe_load(provider_text)["meshConfig"]["extensionProviders"]
    shipped = yaml.safe_load((REPO / "deploy" / "istio" / "mesh-config.yaml").read_text())
    (example,) = shipped["meshConfig"]["extensionProviders"]
    assert provider["name"] == "rel-extauthz"
    assert provider["envoyExtAuthzGrpc"]["service"] == "rel-extauthz.extauthz.svc.cluster.local"
    # Same settings as deploy/istio/mesh-config.yaml, only the names differ.
    for key in ("port", "timeout", "failOpen", "statusOnError", "includeRequestBodyInCheck"):
        assert provider["envoyExtAuthzGrpc"][key] == example["envoyExtAuthzGrpc"][key], key
    policy = yaml.safe_load(policy_text)
    assert policy["kind"] == "AuthorizationPolicy"
    assert policy["spec"]["action"] == "CUSTOM"
    assert policy["spec"]["provider"]["name"] == provider["name"]
    assert "WARNING: `config` is empty, so the chart's example policy" in notes
    minimal = _notes(helm, tmp_path / "m", "--values", str(CHART / "ci" / "minimal-values.yaml"))
    assert "WARNING" not in minimal


def test_helm_test_pod_checks_grpc_health_of_a_real_extauthz(
    helm: Path, running_extauthz: RunningExtauthz
) -> None:
    pod = one(render(helm), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (check,) = pod["spec"]["containers"]
    assert check["image"] == container(render(helm))["image"]
    script = check["args"][0]
    assert 'target = "rel-extauthz.extauthz.svc:9001"' in script

    def run_against(target: str) -> subprocess.CompletedProcess[str]:
        local = script.replace("rel-extauthz.extauthz.svc:9001", target)
        return subprocess.run(
            [sys.executable, "-c", local], capture_output=True, text=True, timeout=30, check=False
        )

    serving = run_against(f"127.0.0.1:{running_extauthz.grpc_port}")
    assert serving.returncode == 0, serving.stderr
    assert "envoy.service.auth.v3.Authorization: SERVING" in serving.stdout
    # Nothing listening: the test pod fails.
    assert run_against(f"127.0.0.1:{running_extauthz.http_port + 0}").returncode != 0


def test_workers_value_starts_that_many_processes_per_pod(helm: Path) -> None:
    minimal = CHART / "ci" / "minimal-values.yaml"

    def args(*extra: str) -> list[str]:
        container = one(render(helm, "-f", minimal, *extra), "Deployment")["spec"]["template"]
        found: list[str] = container["spec"]["containers"][0]["args"]
        return found

    assert "--workers" not in args()
    assert args("--set", "server.workers=3")[-2:] == ["--workers", "3"]
