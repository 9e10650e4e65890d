"""The command line (extauthz/cli.py): check-config, --version, serve."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import make_deployment

from extauthz import __version__
from extauthz.cli import EXIT_CONFIG_ERROR, main
from extauthz.config import load_config
from extauthz.demo.issuer import LocalIssuer


@pytest.fixture(scope="module")
def issuer() -> LocalIssuer:
    return LocalIssuer()


@pytest.fixture(scope="module")
def good_config(issuer: LocalIssuer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_deployment(tmp_path_factory.mktemp("good"), issuer)


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "extauthz", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok_line(path: Path) -> str:
    config = load_config(path)
    return (
        f"{path}: ok (policy_version {config.policy_version}, mode enforce, 1 issuer(s), "
        "3 key(s), 3 agent(s), 1 resource(s))\n"
    )


# --- as a process ------------------------------------------------------------------------


def test_version_is_printed_by_the_module_entry_point() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout == f"extauthz {__version__}\n"


def test_check_config_of_a_valid_config_exits_0_with_an_ok_line(good_config: Path) -> None:
    result = run_cli("check-config", str(good_config))
    assert result.returncode == 0
    assert result.stdout == ok_line(good_config)
    assert result.stderr == ""


def test_check_config_of_an_invalid_config_exits_2_naming_file_key_and_problem(
    tmp_path: Path, issuer: LocalIssuer
) -> None:
    path = make_deployment(tmp_path, issuer, lambda d: d["tokens"].update(max_lifetme="1h"))
    result = run_cli("check-config", str(path))
    assert result.returncode == EXIT_CONFIG_ERROR == 2
    assert result.stdout == ""
    assert result.stderr == f"extauthz: config error: {path}: tokens.max_lifetme: unknown key\n"


def test_serve_with_an_invalid_config_exits_2_naming_the_problem(tmp_path: Path) -> None:
    path = make_deployment(tmp_path, None)  # no JWKS written
    result = run_cli("serve", "--config", str(path))
    assert result.returncode == 2
    assert f"extauthz: config error: {tmp_path / 'keys' / 'jwks.json'}: cannot read JWKS" in (
        result.stderr
    )


def test_serve_runs_until_sigterm_and_exits_0(tmp_path: Path, issuer: LocalIssuer) -> None:
    def edit(d: dict[str, Any]) -> None:
        d["server"] = {
            "grpc_listen": "127.0.0.1:0",
            "http_listen": "127.0.0.1:0",
            "shutdown_grace": "1s",
        }

    path = make_deployment(tmp_path, issuer, edit)
    process = subprocess.Popen(
        [sys.executable, "-m", "extauthz", "serve", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        logs = []
        for line in process.stderr:
            logs.append(json.loads(line))
            if logs[-1]["msg"] == "serving":
                break
        serving = logs[-1]
        assert serving["msg"] == "serving"
        assert serving["ready"] is True
        assert serving["grpc_port"] > 0
        assert serving["policy_version"] == load_config(path).policy_version
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert out == ""  # no checks were made, so no decision lines
    messages = [json.loads(line)["msg"] for line in err.splitlines()]
    assert messages[-2:] == ["shutting down", "stopped"]


# --- in process --------------------------------------------------------------------------


def test_main_version_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"extauthz {__version__}\n"


def test_main_check_config_ok(good_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(good_config)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ok_line(good_config)
    assert captured.err == ""


@pytest.mark.parametrize(
    ("edit", "key", "problem"),
    [
        (lambda d: d["agents"][1].update(permisions=[]), "agents[1].permisions", "unknown key"),
        (
            lambda d: d["issuers"][0].update(algorithms=["HS256"]),
            "issuers[0].algorithms[0]",
            "'HS256' is not allowed; use asymmetric algorithms only",
        ),
        (
            lambda d: d["tokens"].update(leeway="30"),
            "tokens.leeway",
            "must be a duration like 30s, 10m or 1h, got '30'",
        ),
    ],
)
def test_main_check_config_error_exits_2_naming_file_key_problem(
    tmp_path: Path,
    issuer: LocalIssuer,
    capsys: pytest.CaptureFixture[str],
    edit: Any,
    key: str,
    problem: str,
) -> None:
    path = make_deployment(tmp_path, issuer, edit)
    assert main(["check-config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"extauthz: config error: {path}: {key}: {problem}")


def test_check_config_fails_naming_a_missing_jwks_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_deployment(tmp_path, None)
    assert main(["check-config", str(path)]) == 2
    jwks = tmp_path / "keys" / "jwks.json"
    assert capsys.readouterr().err == (
        f"extauthz: config error: {jwks}: cannot read JWKS: No such file or directory\n"
    )


@pytest.mark.parametrize(
    ("content", "where"),
    [
        ("not json", "not valid JSON"),
        ('{"keys": {}}', "keys: a JWKS document must be an object with a 'keys' list"),
        ('{"keys": []}', "keys: holds no usable signing key"),
        ('{"keys": [{"kty": "EC", "crv": "P-256"}]}', "keys[0].kid: every signing key needs"),
    ],
)
def test_check_config_fails_naming_an_invalid_jwks_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, where: str
) -> None:
    path = make_deployment(tmp_path, None)
    jwks = tmp_path / "keys" / "jwks.json"
    jwks.parent.mkdir(parents=True, exist_ok=True)
    jwks.write_text(content)
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"extauthz: config error: {jwks}: {where}")


def test_check_config_refuses_a_jwks_with_private_key_material(
    tmp_path: Path, issuer: LocalIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_deployment(tmp_path, issuer)
    jwks = tmp_path / "keys" / "jwks.json"
    document = json.loads(jwks.read_text())
    document["keys"][0]["d"] = "c2VjcmV0"
    jwks.write_text(json.dumps(document))
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"extauthz: config error: {jwks}: keys[0]: holds private key material")


def test_check_config_of_a_missing_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.yaml"
    assert main(["check-config", str(missing)]) == 2
    assert capsys.readouterr().err.startswith(f"extauthz: config error: {missing}: cannot read")


def test_check_config_of_invalid_yaml_names_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("mode: enforce\nissuers: [\n")
    assert main(["check-config", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"extauthz: config error: {path}: line 3: ")


def test_check_config_with_relative_path_resolves_keys_against_the_config_folder(
    good_config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(good_config.parent.parent)
    relative = Path(good_config.parent.name) / good_config.name
    assert main(["check-config", str(relative)]) == 0
    assert capsys.readouterr().out.startswith(f"{relative}: ok (")


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["check-config"], ["serve"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage: extauthz" in capsys.readouterr().err


def test_check_config_warns_about_an_unreadable_feed_but_passes(
    tmp_path: Path, issuer: LocalIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    # The feed is data that may arrive after the config: a warning, not a config error.
    config = make_deployment(tmp_path / "extauthz", issuer)
    (config.parent / "feed" / "users.json").write_text("{not json")

    assert main(["check-config", str(config)]) == 0
    captured = capsys.readouterr()
    assert "ok (policy_version" in captured.out
    assert "warning:" in captured.err
    assert "feed.source" in captured.err


def test_sighup_reloads_the_config_of_a_running_serve(tmp_path: Path, issuer: LocalIssuer) -> None:
    def edit(d: dict[str, Any]) -> None:
        d["server"] = {
            "grpc_listen": "127.0.0.1:0",
            "http_listen": "127.0.0.1:0",
            "shutdown_grace": "1s",
            "reload_check": "0s",  # no watching: only the signal can reload
        }

    path = make_deployment(tmp_path, issuer, edit)
    process = subprocess.Popen(
        [sys.executable, "-m", "extauthz", "serve", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if json.loads(line)["msg"] == "serving":
                break
        path.write_text(path.read_text().replace("mode: enforce", "mode: dry_run"))
        process.send_signal(signal.SIGHUP)
        reloaded = None
        for line in process.stderr:
            record = json.loads(line)
            if record["msg"] == "config reloaded":
                reloaded = record
                break
        assert reloaded is not None
        assert reloaded["trigger"] == "sighup"
        assert reloaded["mode"] == "dry_run"
        assert reloaded["policy_version"] == load_config(path).policy_version
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0


def test_a_stdout_nobody_reads_gets_checks_refused_not_the_service_stuck(
    tmp_path: Path, issuer: LocalIssuer
) -> None:
    import grpc
    from envoy.service.auth.v3 import external_auth_pb2_grpc
    from helpers import AUDIENCE, bearer, check_request

    def edit(d: dict[str, Any]) -> None:
        d["server"] = {"grpc_listen": "127.0.0.1:0", "http_listen": "127.0.0.1:0"}
        d["decision_log"] = {"max_pending": 5}

    path = make_deployment(tmp_path, issuer, edit)
    process = subprocess.Popen(
        [sys.executable, "-m", "extauthz", "serve", "--config", str(path)],
        stdout=subprocess.PIPE,  # never read until the end: a stalled log collector
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stderr is not None and process.stdout is not None
        for line in process.stderr:
            serving = json.loads(line)
            if serving["msg"] == "serving":
                break
        token = issuer.token(
            sub="alice", audience=AUDIENCE, scope="tickets:read", client_id="support-agent"
        )
        request = check_request(headers=bearer(token))
        with grpc.insecure_channel(f"127.0.0.1:{serving['grpc_port']}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            statuses = []
            for _ in range(400):  # ~700 bytes a line: far more than a pipe buffer holds
                answer = stub.Check(request, timeout=5)
                statuses.append(answer.denied_response.status.code if answer.status.code else 200)
                if statuses[-1] == 503:
                    break
            assert statuses[-1] == 503  # refused, promptly, rather than hanging
            assert statuses[0] == 200
            # Once stdout drains again, checks are allowed again.
            drained = threading.Thread(target=process.stdout.read, daemon=True)
            drained.start()
            deadline = time.monotonic() + 10
            while stub.Check(request, timeout=5).status.code != 0:
                assert time.monotonic() < deadline, "never recovered"
                time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
        drained.join(timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
    assert process.returncode == 0
