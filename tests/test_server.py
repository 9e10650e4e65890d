"""The server lifecycle (extauthz/server.py) over real sockets: gRPC Check, health, /readyz."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import AUDIENCE, bearer, check_request, make_deployment, write_feed
from local_http import Reply, local_http_server
from prometheus_client import CollectorRegistry

from extauthz.config import Config, load_config
from extauthz.decision_log import DecisionLog
from extauthz.demo.issuer import LocalIssuer
from extauthz.server import AUTHORIZATION_SERVICE, Server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FEED_USERS = {"alice": {"permissions": ["tickets:read", "tickets:write"]}}


@pytest.fixture(scope="module")
def issuer() -> LocalIssuer:
    return LocalIssuer()


def deployed(
    dest: Path,
    issuer: LocalIssuer | None,
    *,
    server: dict[str, Any] | None = None,
    feed: dict[str, Any] | None = None,
    edit: Callable[[dict[str, Any]], None] | None = None,
) -> Config:
    """The example policy on free ports with a quickly polled feed, plus ``server`` and
    ``feed`` settings and any other ``edit``."""

    def apply(d: dict[str, Any]) -> None:
        d["server"] = {"grpc_listen": "127.0.0.1:0", "http_listen": "127.0.0.1:0", **(server or {})}
        d["feed"] = {
            "source": "feed/users.json",
            "refresh": "50ms",
            "max_staleness": "30s",
            **(feed or {}),
        }
        if edit is not None:
            edit(d)

    return load_config(make_deployment(dest, issuer, apply))


def server_config(dest: Path, issuer: LocalIssuer) -> Config:
    return deployed(dest, issuer, server={"shutdown_grace": "1s"})


@pytest.fixture
def config(tmp_path: Path, issuer: LocalIssuer) -> Config:
    return server_config(tmp_path / "extauthz", issuer)


@pytest.fixture
async def server(config: Config) -> AsyncIterator[Server]:
    server = Server(config, CollectorRegistry())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def channel(server: Server) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield channel


def delegated_token(issuer: LocalIssuer, scope: str = "tickets:read") -> str:
    return issuer.token(sub="alice", audience=AUDIENCE, scope=scope, client_id="support-agent")


async def grpc_check(
    channel: grpc.aio.Channel, request: external_auth_pb2.CheckRequest
) -> external_auth_pb2.CheckResponse:
    stub = external_auth_pb2_grpc.AuthorizationStub(channel)
    response: external_auth_pb2.CheckResponse = await stub.Check(request, timeout=5)
    return response


async def health(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    status: int = response.status
    return status


async def http_status(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    return int(response.split(b" ", 2)[1])


async def eventually(predicate: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def sample(server: Server, name: str, labels: dict[str, str] | None = None) -> float | None:
    return server.metrics.registry.get_sample_value(name, labels or {})


def replace_file(path: Path, content: bytes) -> None:
    """Write ``content`` under ``path`` so that a poller certainly sees the change."""
    staged = path.with_name(path.name + ".new")
    staged.write_bytes(content)
    os.replace(staged, path)


# --- serving -----------------------------------------------------------------------------


async def test_grpc_check_allows_and_denies_over_a_real_channel(
    config: Config, issuer: LocalIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    # Built inside the test so that its decision log is bound to the captured stdout.
    server = Server(config, CollectorRegistry())
    await server.start()
    try:
        assert server.grpc_port > 0
        assert server.http_port > 0
        token = delegated_token(issuer)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            allowed = await grpc_check(channel, check_request(headers=bearer(token)))
            denied = await grpc_check(
                channel, check_request(method="DELETE", headers=bearer(token))
            )
            missing = await grpc_check(channel, check_request())
    finally:
        await server.stop()

    assert allowed.status.code == code_pb2.OK
    assert allowed.WhichOneof("http_response") == "ok_response"
    assert denied.status.code == code_pb2.PERMISSION_DENIED
    assert denied.denied_response.status.code == 403
    assert missing.status.code == code_pb2.UNAUTHENTICATED
    assert missing.denied_response.status.code == 401

    # Decision lines go to stdout, one per check.
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [line["reason"] for line in lines] == [
        "allowed",
        "agent_lacks_permission",
        "token_missing",
    ]
    assert lines[0]["decision_id"] == dict(allowed.dynamic_metadata)["decision_id"]
    allowed_total = {"decision": "allow", "reason": "allowed"}
    assert sample(server, "extauthz_decisions_total", allowed_total) == 1.0


async def test_health_and_readyz_report_serving_once_keys_and_feed_are_loaded(
    server: Server, channel: grpc.aio.Channel
) -> None:
    assert await health(channel) == SERVING
    assert await health(channel, AUTHORIZATION_SERVICE) == SERVING
    assert await http_status(server.http_port, "/readyz") == 200
    assert await http_status(server.http_port, "/healthz") == 200
    assert sample(server, "extauthz_feed_users") == 3.0
    assert sample(server, "extauthz_feed_refresh_total", {"outcome": "success"}) == 1.0
    keys = {"issuer": "https://idp.example.test"}
    assert sample(server, "extauthz_issuer_keys", keys) == 3.0
    info = {"policy_version": server.config.policy_version, "mode": "enforce"}
    assert sample(server, "extauthz_config_info", info) == 1.0
    age = sample(server, "extauthz_feed_age_seconds")
    assert age is not None
    assert 0.0 <= age < 5.0


async def test_feed_loop_confirms_an_unchanged_feed(server: Server) -> None:
    async def confirmed() -> bool:
        value = sample(server, "extauthz_feed_refresh_total", {"outcome": "not_modified"})
        return value is not None and value >= 2

    await eventually(confirmed)
    assert sample(server, "extauthz_feed_refresh_total", {"outcome": "error"}) == 0.0


# --- no feed yet -------------------------------------------------------------------------


async def test_without_a_feed_the_server_is_not_serving_until_one_arrives(
    config: Config, issuer: LocalIssuer
) -> None:
    feed = config.feed.path
    feed.unlink()
    server = Server(config, CollectorRegistry())
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            assert await health(channel) == NOT_SERVING
            assert await health(channel, AUTHORIZATION_SERVICE) == NOT_SERVING
            assert await http_status(server.http_port, "/readyz") == 503
            assert await http_status(server.http_port, "/healthz") == 200
            assert sample(server, "extauthz_feed_age_seconds") == math.inf
            assert sample(server, "extauthz_feed_refresh_total", {"outcome": "error"}) >= 1.0
            # Checks are still answered: a delegated call is refused as stale, not dropped.
            denied = await grpc_check(
                channel, check_request(headers=bearer(delegated_token(issuer)))
            )
            assert denied.denied_response.status.code == 503

            write_feed(feed, "5", FEED_USERS)

            async def serving() -> bool:
                return await health(channel) == SERVING

            await eventually(serving)
            assert await health(channel, AUTHORIZATION_SERVICE) == SERVING
            assert await http_status(server.http_port, "/readyz") == 200
            allowed = await grpc_check(
                channel, check_request(headers=bearer(delegated_token(issuer)))
            )
            assert allowed.status.code == code_pb2.OK
            age = sample(server, "extauthz_feed_age_seconds")
            assert age is not None
            assert age < 5.0
    finally:
        await server.stop()


# --- a bad feed later --------------------------------------------------------------------


async def test_garbage_feed_keeps_the_last_good_snapshot_and_counts_an_error(
    server: Server, channel: grpc.aio.Channel, issuer: LocalIssuer
) -> None:
    good = server.runtime.feed.state.snapshot
    assert good is not None
    assert good.version == "1"

    replace_file(server.config.feed.path, b'{"version": "2", "users": {"alice": ')

    async def rejected() -> bool:
        value = sample(server, "extauthz_feed_refresh_total", {"outcome": "error"})
        return value is not None and value >= 1

    await eventually(rejected)
    assert server.runtime.feed.state.snapshot is good
    assert await health(channel) == SERVING
    assert await http_status(server.http_port, "/readyz") == 200

    stream = io.StringIO()
    server.handler.decision_log = DecisionLog(stream)
    allowed = await grpc_check(channel, check_request(headers=bearer(delegated_token(issuer))))
    assert allowed.status.code == code_pb2.OK
    assert json.loads(stream.getvalue())["feed_version"] == "1"


async def test_revocation_in_a_changed_feed_is_picked_up_live(
    server: Server, channel: grpc.aio.Channel, issuer: LocalIssuer
) -> None:
    token = delegated_token(issuer, "tickets:read tickets:write")
    request = check_request(method="POST", path="/tickets", headers=bearer(token))
    assert (await grpc_check(channel, request)).status.code == code_pb2.OK

    staged = write_feed(
        server.config.feed.path.with_name("staged.json"),
        "2",
        {"alice": {"permissions": ["tickets:read"]}, "bob": {"permissions": []}},
    )
    os.replace(staged, server.config.feed.path)

    async def loaded() -> bool:
        snapshot = server.runtime.feed.state.snapshot
        return snapshot is not None and snapshot.version == "2"

    await eventually(loaded)
    assert sample(server, "extauthz_feed_users") == 2.0
    denied = await grpc_check(channel, request)
    assert denied.status.code == code_pb2.PERMISSION_DENIED
    assert json.loads(denied.denied_response.body)["reason"] == "user_lacks_permission"


# --- stopping ----------------------------------------------------------------------------


async def test_stop_drains_and_returns(config: Config) -> None:
    server = Server(config, CollectorRegistry())
    await server.start()
    grpc_port, http_port = server.grpc_port, server.http_port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        assert await health(channel) == SERVING

        started = time.monotonic()
        await asyncio.wait_for(server.stop(), 5)
        assert time.monotonic() - started < 3.0

        assert server.http.draining is True
        assert all(task.done() for task in server._tasks)
        with pytest.raises(grpc.aio.AioRpcError):
            await health(channel)
    with pytest.raises(OSError):
        await http_status(http_port, "/readyz")


async def test_busy_grpc_port_fails_start(tmp_path: Path, issuer: LocalIssuer) -> None:
    config = server_config(tmp_path / "a", issuer)
    first = Server(config, CollectorRegistry())
    await first.start()
    try:
        busy = f"127.0.0.1:{first.grpc_port}"

        def edit(d: dict[str, Any]) -> None:
            d["server"] = {"grpc_listen": busy, "http_listen": "127.0.0.1:0"}

        second = Server(load_config(make_deployment(tmp_path / "b", issuer, edit)))
        # grpc raises RuntimeError("Failed to bind ...") itself; the server's own
        # "cannot listen" OSError is for a bind that reports port 0.
        with pytest.raises((OSError, RuntimeError), match=r"(?i)bind|cannot listen"):
            await second.start()
        await second.stop()
    finally:
        await first.stop()


# --- an HTTP feed and the last-good snapshot ----------------------------------------------


def http_feed_config(
    dest: Path, issuer: LocalIssuer, url: str, snapshot: Path | None, staleness: str = "30s"
) -> Config:
    feed: dict[str, Any] = {"source": url, "max_staleness": staleness, "timeout": "1s"}
    feed["retries"] = 0
    if snapshot is not None:
        feed["snapshot_file"] = str(snapshot)
    return deployed(dest, issuer, feed=feed)


def feed_json(version: str, users: dict[str, Any]) -> bytes:
    return json.dumps({"version": version, "users": users}).encode()


async def test_http_feed_is_fetched_and_saved_as_the_last_good_snapshot(
    tmp_path: Path, issuer: LocalIssuer
) -> None:
    with local_http_server() as feed_server:
        feed_server.replies["/feed"] = Reply(body=feed_json("7", FEED_USERS), headers={"ETag": "a"})
        saved = tmp_path / "state" / "feed.json"
        config = http_feed_config(tmp_path / "x", issuer, feed_server.url("/feed"), saved)
        server = Server(config, CollectorRegistry())
        await server.start()
        try:
            assert server.runtime.ready
            state = server.runtime.feed.state
            assert state.snapshot is not None and state.snapshot.version == "7"

            async def written() -> bool:
                return saved.exists()

            await eventually(written)

            async def confirmed_by_304() -> bool:
                value = sample(server, "extauthz_feed_refresh_total", {"outcome": "not_modified"})
                return value is not None and value >= 1

            feed_server.replies["/feed"] = Reply(304, headers={"ETag": "a"})
            await eventually(confirmed_by_304)
        finally:
            await server.stop()
    document = json.loads(saved.read_bytes())
    assert document["feed"]["version"] == "7"
    assert document["feed"]["users"]["alice"]["permissions"] == ["tickets:read", "tickets:write"]


async def test_restart_during_a_feed_outage_serves_the_saved_snapshot(
    tmp_path: Path, issuer: LocalIssuer
) -> None:
    saved = tmp_path / "feed.json"
    with local_http_server() as feed_server:
        feed_server.replies["/feed"] = Reply(body=feed_json("7", FEED_USERS))
        config = http_feed_config(tmp_path / "x", issuer, feed_server.url("/feed"), saved)
        first = Server(config, CollectorRegistry())
        await first.start()

        async def written() -> bool:
            return saved.exists()

        await eventually(written)
        await first.stop()
        url = feed_server.url("/feed")
    # The feed server is gone now: a new process must come up ready from the saved file.
    server = Server(http_feed_config(tmp_path / "y", issuer, url, saved), CollectorRegistry())
    await server.start()
    try:
        assert server.runtime.ready
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            allowed = await grpc_check(
                channel, check_request(headers=bearer(delegated_token(issuer)))
            )
        assert allowed.status.code == code_pb2.OK
        assert sample(server, "extauthz_feed_refresh_total", {"outcome": "error"}) == 1.0
    finally:
        await server.stop()


async def test_a_saved_snapshot_older_than_max_staleness_does_not_allow_delegated_calls(
    tmp_path: Path, issuer: LocalIssuer
) -> None:
    saved = tmp_path / "feed.json"
    saved.write_text(
        json.dumps(
            {"fetched_at": time.time() - 3600, "feed": {"version": "7", "users": FEED_USERS}}
        )
    )
    url = "http://127.0.0.1:1/feed"  # nothing listens there
    server = Server(http_feed_config(tmp_path / "y", issuer, url, saved), CollectorRegistry())
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            denied = await grpc_check(
                channel, check_request(headers=bearer(delegated_token(issuer)))
            )
        assert denied.denied_response.status.code == 503
        age = sample(server, "extauthz_feed_age_seconds")
        assert age is not None and age > 3000
    finally:
        await server.stop()


async def test_a_corrupt_saved_snapshot_is_ignored_and_the_source_is_used(
    tmp_path: Path, issuer: LocalIssuer
) -> None:
    saved = tmp_path / "feed.json"
    saved.write_text('{"fetched_at": 1, "feed": {"version": "7", "users": [')
    with local_http_server() as feed_server:
        feed_server.replies["/feed"] = Reply(body=feed_json("8", FEED_USERS))
        config = http_feed_config(tmp_path / "x", issuer, feed_server.url("/feed"), saved)
        server = Server(config, CollectorRegistry())
        await server.start()
        try:
            state = server.runtime.feed.state
            assert state.snapshot is not None and state.snapshot.version == "8"
        finally:
            await server.stop()


async def test_feed_revocations_and_disabled_agents_are_exported_as_gauges(
    tmp_path: Path, issuer: LocalIssuer
) -> None:
    document = {
        "version": "9",
        "users": FEED_USERS,
        "agents": {"support-agent": {"disabled": True}},
        "revoked_tokens": {"a": time.time() + 600, "b": time.time() + 600, "old": 1000},
    }
    with local_http_server() as feed_server:
        feed_server.replies["/feed"] = Reply(body=json.dumps(document).encode())
        config = http_feed_config(tmp_path / "x", issuer, feed_server.url("/feed"), None)
        server = Server(config, CollectorRegistry())
        await server.start()
        try:
            assert sample(server, "extauthz_feed_revoked_tokens") == 2.0
            assert sample(server, "extauthz_feed_disabled_agents") == 1.0
        finally:
            await server.stop()


# --- keys from a JWKS URL -------------------------------------------------------------------


def jwks_url_config(dest: Path, issuer: LocalIssuer, url: str) -> Config:
    def keys_by_url(d: dict[str, Any]) -> None:
        entry = d["issuers"][0]
        entry.pop("jwks_file")
        entry.update(jwks_url=url, fetch_timeout="1s", unknown_kid_refetch="10s")

    return deployed(dest, None, edit=keys_by_url)


async def test_keys_down_at_start_means_not_ready_until_they_come(
    tmp_path: Path, issuer: LocalIssuer
) -> None:
    with local_http_server() as idp:
        idp.replies["/jwks"] = Reply(503)
        server = Server(jwks_url_config(tmp_path, issuer, idp.url("/jwks")), CollectorRegistry())
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
                assert await health(channel) == NOT_SERVING
                unavailable = await grpc_check(
                    channel, check_request(headers=bearer(delegated_token(issuer)))
                )
                assert unavailable.denied_response.status.code == 503
                idp.replies["/jwks"] = Reply(body=json.dumps(issuer.jwks()).encode())

                async def serving() -> bool:
                    return await health(channel) == SERVING

                await eventually(serving)
                allowed = await grpc_check(
                    channel, check_request(headers=bearer(delegated_token(issuer)))
                )
                assert allowed.status.code == code_pb2.OK
        finally:
            await server.stop()


async def test_a_token_signed_with_a_rotated_in_key_is_allowed_on_its_first_request(
    tmp_path: Path,
) -> None:
    idp_keys = LocalIssuer()
    with local_http_server() as idp:
        idp.replies["/jwks"] = Reply(body=json.dumps(idp_keys.jwks()).encode())
        server = Server(jwks_url_config(tmp_path, idp_keys, idp.url("/jwks")), CollectorRegistry())
        await server.start()
        try:
            assert server.runtime.ready
            # The IdP rotates: a new key is published and used at once, the old one retired.
            idp_keys.keys["rsa-2"] = idp_keys.keys.pop("rsa-1")
            idp.replies["/jwks"] = Reply(body=json.dumps(idp_keys.jwks()).encode())
            token = idp_keys.token(
                sub="alice",
                audience=AUDIENCE,
                scope="tickets:read",
                client_id="support-agent",
                kid="rsa-2",
            )
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
                allowed = await grpc_check(channel, check_request(headers=bearer(token)))
                made_up = idp_keys.token(
                    sub="alice",
                    audience=AUDIENCE,
                    client_id="support-agent",
                    kid="rsa-2",
                    header={"kid": "made-up"},
                )
                denied = await grpc_check(channel, check_request(headers=bearer(made_up)))
            assert allowed.status.code == code_pb2.OK
            assert denied.denied_response.status.code == 401
            # One fetch at start, one for rsa-2; the made-up kid is inside the rate limit.
            assert len(idp.paths_requested("/jwks")) == 2
            labels = {"issuer": "https://idp.example.test", "outcome": "success"}
            assert sample(server, "extauthz_keys_refresh_total", labels) == 2.0
        finally:
            await server.stop()


# --- live policy reload -----------------------------------------------------------------------


def reloading_config(dest: Path, issuer: LocalIssuer) -> Config:
    return deployed(dest, issuer, server={"reload_check": "20ms"})


def edit_config(config: Config, edit: Callable[[dict[str, Any]], None]) -> None:
    data = yaml.safe_load(config.path.read_text())
    edit(data)
    replace_file(config.path, yaml.safe_dump(data).encode())


def reloads(server: Server, outcome: str) -> float:
    return sample(server, "extauthz_config_reload_total", {"outcome": outcome}) or 0.0


async def test_disabling_an_agent_in_the_config_takes_effect_without_a_restart(
    tmp_path: Path, issuer: LocalIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    server = Server(reloading_config(tmp_path, issuer), CollectorRegistry())
    await server.start()
    try:
        before = server.config.policy_version
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            token = delegated_token(issuer)
            assert (
                await grpc_check(channel, check_request(headers=bearer(token)))
            ).status.code == 0

            def disable(d: dict[str, Any]) -> None:
                d["agents"][0]["disabled"] = True

            edit_config(server.config, disable)

            async def reloaded() -> bool:
                return reloads(server, "success") == 1.0

            await eventually(reloaded)
            denied = await grpc_check(channel, check_request(headers=bearer(token)))
        assert denied.denied_response.status.code == 401
        after = server.config.policy_version
        assert after != before
        info = {"policy_version": after, "mode": "enforce"}
        assert sample(server, "extauthz_config_info", info) == 1.0
        assert sample(server, "extauthz_config_restart_required") == 0.0
    finally:
        await server.stop()
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(x["reason"], x["policy_version"]) for x in lines] == [
        ("allowed", before),
        ("agent_disabled", after),
    ]


async def test_an_invalid_config_is_rejected_and_the_running_policy_keeps_serving(
    tmp_path: Path, issuer: LocalIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    server = Server(reloading_config(tmp_path, issuer), CollectorRegistry())
    await server.start()
    try:
        before = server.config
        edit_config(server.config, lambda d: d["agents"][0].update(permisions=["x"]))

        async def rejected() -> bool:
            return reloads(server, "error") == 1.0

        await eventually(rejected)
        assert server.config is before
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            ok = await grpc_check(channel, check_request(headers=bearer(delegated_token(issuer))))
        assert ok.status.code == 0
        # Not retried while the file stays as it is.
        await asyncio.sleep(0.1)
        assert reloads(server, "error") == 1.0
    finally:
        await server.stop()
    errors = [r for r in caplog.records if r.msg == "config rejected; keeping the running policy"]
    assert errors and "agents[0].permisions: unknown key" in errors[0].__dict__["error"]
    assert str(before.path) in errors[0].__dict__["error"]


async def test_settings_that_need_a_restart_keep_their_running_values_and_are_reported(
    tmp_path: Path, issuer: LocalIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    server = Server(reloading_config(tmp_path, issuer), CollectorRegistry())
    await server.start()
    try:

        def change(d: dict[str, Any]) -> None:
            d["server"]["grpc_listen"] = "127.0.0.1:1"
            d["feed"]["refresh"] = "1s"
            d["mode"] = "dry_run"

        edit_config(server.config, change)

        async def reloaded() -> bool:
            return reloads(server, "success") == 1.0

        await eventually(reloaded)
        assert server.config.mode == "dry_run"  # live
        assert server.config.server.grpc_listen == "127.0.0.1:0"  # kept
        assert server.config.feed.refresh == 0.05  # kept
        assert sample(server, "extauthz_config_restart_required") == 1.0
    finally:
        await server.stop()
    warnings = [r for r in caplog.records if r.msg.startswith("config changes need a restart")]
    assert warnings[0].__dict__["keys"] == ["server.grpc_listen", "feed.refresh"]


async def test_a_rewritten_jwks_file_is_picked_up_by_reload(tmp_path: Path) -> None:
    idp = LocalIssuer()
    server = Server(reloading_config(tmp_path, idp), CollectorRegistry())
    await server.start()
    try:
        idp.keys["rsa-2"] = idp.keys.pop("rsa-1")
        jwks_file = server.config.issuers["https://idp.example.test"].jwks_file
        assert jwks_file is not None
        replace_file(jwks_file, json.dumps(idp.jwks()).encode())

        async def reloaded() -> bool:
            return reloads(server, "success") == 1.0

        await eventually(reloaded)
        token = idp.token(
            sub="alice",
            audience=AUDIENCE,
            scope="tickets:read",
            client_id="support-agent",
            kid="rsa-2",
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            assert (
                await grpc_check(channel, check_request(headers=bearer(token)))
            ).status.code == 0
    finally:
        await server.stop()


async def test_a_reload_adding_an_issuer_whose_keys_cannot_be_fetched_is_rejected(
    tmp_path: Path, issuer: LocalIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    server = Server(reloading_config(tmp_path, issuer), CollectorRegistry())
    await server.start()
    try:

        def add_issuer(d: dict[str, Any]) -> None:
            d["issuers"].append(
                {
                    "issuer": "https://other.example.test",
                    "jwks_url": "http://127.0.0.1:1/jwks",
                    "algorithms": ["RS256"],
                    "fetch_timeout": "1s",
                }
            )
            for agent in d["agents"]:
                agent["issuer"] = "https://idp.example.test"
            d["feed"]["issuer"] = "https://idp.example.test"

        edit_config(server.config, add_issuer)

        async def rejected() -> bool:
            return reloads(server, "error") == 1.0

        await eventually(rejected)
        assert list(server.config.issuers) == ["https://idp.example.test"]
        assert server.runtime.ready
    finally:
        await server.stop()
    errors = [r for r in caplog.records if r.msg == "config rejected; keeping the running policy"]
    assert "issuer 'https://other.example.test'" in errors[0].__dict__["error"]


async def test_reload_can_add_an_issuer_with_fetched_keys(
    tmp_path: Path, issuer: LocalIssuer
) -> None:
    other = LocalIssuer("https://other.example.test")
    with local_http_server() as idp:
        idp.replies["/jwks"] = Reply(body=json.dumps(other.jwks()).encode())
        server = Server(reloading_config(tmp_path, issuer), CollectorRegistry())
        await server.start()
        try:

            def add_issuer(d: dict[str, Any]) -> None:
                d["issuers"].append(
                    {"issuer": other.issuer, "jwks_url": idp.url("/jwks"), "algorithms": ["RS256"]}
                )
                for agent in d["agents"]:
                    agent["issuer"] = "https://idp.example.test"
                d["agents"].append(
                    {
                        "id": "other-bot",
                        "issuer": other.issuer,
                        "permissions": ["tickets:read"],
                        "autonomous": True,
                        "delegated": False,
                    }
                )
                d["feed"]["issuer"] = "https://idp.example.test"

            edit_config(server.config, add_issuer)

            async def reloaded() -> bool:
                return reloads(server, "success") == 1.0

            await eventually(reloaded)
            token = other.token(
                sub="other-bot", client_id="other-bot", audience=AUDIENCE, scope="tickets:read"
            )
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
                allowed = await grpc_check(channel, check_request(headers=bearer(token)))
            assert allowed.status.code == 0
            labels = {"issuer": other.issuer}
            assert sample(server, "extauthz_issuer_keys", labels) == 3.0
        finally:
            await server.stop()


async def test_a_configmap_style_symlink_swap_is_reloaded(
    tmp_path: Path, issuer: LocalIssuer
) -> None:
    # Kubernetes updates a mounted ConfigMap by pointing the ..data symlink at a new folder.
    base = reloading_config(tmp_path / "src", issuer)
    mount = tmp_path / "mount"
    first = mount / "..2026_12_02_v1"
    first.mkdir(parents=True)
    (first / "config.yaml").write_bytes(base.path.read_bytes())
    (mount / "..data").symlink_to(first.name)
    (mount / "config.yaml").symlink_to("..data/config.yaml")
    for folder in ("keys", "feed"):
        (mount / folder).symlink_to(base.path.parent / folder)
    server = Server(load_config(mount / "config.yaml"), CollectorRegistry())
    await server.start()
    try:
        second = mount / "..2026_12_02_v2"
        second.mkdir()
        data = yaml.safe_load(base.path.read_text())
        data["mode"] = "dry_run"
        (second / "config.yaml").write_text(yaml.safe_dump(data))
        (mount / "..data_tmp").symlink_to(second.name)
        os.replace(mount / "..data_tmp", mount / "..data")

        async def reloaded() -> bool:
            return reloads(server, "success") == 1.0

        await eventually(reloaded)
        assert server.config.mode == "dry_run"
    finally:
        await server.stop()


# --- a streamed feed -----------------------------------------------------------------------------


async def test_a_streamed_feed_makes_the_server_ready_and_a_change_denies_at_once(
    tmp_path: Path, issuer: LocalIssuer
) -> None:
    from extauthz.feed.publisher import FilePublisher

    feed_file = write_feed(tmp_path / "published.json", "1", FEED_USERS)
    publisher = FilePublisher(feed_file, poll=60.0, heartbeat=0.1)
    port = await publisher.start("127.0.0.1:0")
    try:

        def edit(d: dict[str, Any]) -> None:
            d["server"] = {"grpc_listen": "127.0.0.1:0", "http_listen": "127.0.0.1:0"}
            d["feed"] = {
                "source": f"grpc://127.0.0.1:{port}",
                "refresh": "1s",
                "max_staleness": "30s",
            }

        server = Server(
            load_config(make_deployment(tmp_path / "x", issuer, edit)), CollectorRegistry()
        )
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:

                async def serving() -> bool:
                    return await health(channel) == SERVING

                await eventually(serving)
                token = delegated_token(issuer)
                allowed = await grpc_check(channel, check_request(headers=bearer(token)))
                assert allowed.status.code == code_pb2.OK
                write_feed(feed_file, "2", {"alice": {"permissions": [], "disabled": True}})
                await publisher.check_file()

                async def denied() -> bool:
                    answer = await grpc_check(channel, check_request(headers=bearer(token)))
                    return answer.denied_response.status.code == 401

                await eventually(denied)
            state = server.runtime.feed.state
            assert state.snapshot is not None and state.snapshot.version == "2"
            assert sample(server, "extauthz_feed_refresh_total", {"outcome": "success"}) == 2.0
        finally:
            await server.stop()
    finally:
        await publisher.stop(grace=0.1)


# --- overload ---------------------------------------------------------------------------------


def overload_config(dest: Path, issuer: LocalIssuer, **server: Any) -> Config:
    return deployed(dest, issuer, server=server)


async def test_a_check_with_too_little_deadline_left_is_shed_at_once(
    tmp_path: Path, issuer: LocalIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    server = Server(overload_config(tmp_path, issuer, min_time_left="200ms"), CollectorRegistry())
    await server.start()
    try:
        request = check_request(headers=bearer(delegated_token(issuer)))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            shed = await stub.Check(request, timeout=0.1)  # arrives with < 200 ms left
            decided = await stub.Check(request, timeout=5)
        assert shed.denied_response.status.code == 503
        assert dict(shed.dynamic_metadata)["reason"] == "overloaded"
        assert decided.status.code == code_pb2.OK
        labels = {"decision": "deny", "reason": "overloaded"}
        assert sample(server, "extauthz_decisions_total", labels) == 1.0
    finally:
        await server.stop()
    reasons = [json.loads(x)["reason"] for x in capsys.readouterr().out.splitlines()]
    assert reasons == ["overloaded", "allowed"]


async def test_checks_beyond_max_inflight_are_refused_not_queued(tmp_path: Path) -> None:
    idp_keys = LocalIssuer()
    with local_http_server() as idp:
        idp.replies["/jwks"] = Reply(body=json.dumps(idp_keys.jwks()).encode())
        config = jwks_url_config(tmp_path, idp_keys, idp.url("/jwks"))
        config = dataclasses.replace(
            config, server=dataclasses.replace(config.server, max_inflight=1)
        )
        server = Server(config, CollectorRegistry())
        await server.start()
        try:
            # A made-up kid while the IdP hangs: the check waits for the refetch, in flight.
            idp.replies["/jwks"] = Reply(misbehave="hang", hang_s=2.0)
            slow = idp_keys.token(
                sub="alice",
                audience=AUDIENCE,
                client_id="support-agent",
                header={"kid": "made-up"},
            )
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
                stub = external_auth_pb2_grpc.AuthorizationStub(channel)
                waiting = asyncio.ensure_future(
                    stub.Check(check_request(headers=bearer(slow)), timeout=5)
                )

                async def refetching() -> bool:  # the first check now waits on the IdP
                    return sample(server, "extauthz_checks_waiting_for_keys") == 1.0

                await eventually(refetching)
                assert len(idp.paths_requested("/jwks")) == 2
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.Check(check_request(headers=bearer(slow)), timeout=5)
                assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                first = await waiting
            assert first.denied_response.status.code == 401  # key_unknown after the wait
            assert sample(server, "extauthz_checks_waiting_for_keys") == 0.0
        finally:
            await server.stop()
