"""/healthz, /readyz, /metrics over real HTTP (extauthz/http_endpoints.py)."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

import extauthz.http_endpoints
from extauthz.http_endpoints import HttpEndpoints
from extauthz.metrics import Metrics


class Ready:
    def __init__(self) -> None:
        self.value = False

    def __call__(self) -> bool:
        return self.value


@pytest.fixture
def ready() -> Ready:
    return Ready()


@pytest.fixture
async def endpoints(ready: Ready) -> AsyncIterator[HttpEndpoints]:
    registry = CollectorRegistry()
    Metrics(registry)
    server = HttpEndpoints(registry, ready)
    server.port = await server.start("127.0.0.1:0")  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        await server.stop()


def port_of(endpoints: HttpEndpoints) -> int:
    port: int = endpoints.port  # type: ignore[attr-defined]
    return port


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()


async def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    response = await raw_exchange(
        port, f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
    )
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ")[1]), headers, body


def urllib_get(port: int, path: str) -> tuple[int, str, bytes]:
    """A real HTTP client, run in a thread (the server lives on the test's event loop)."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers["Content-Type"], err.read()


async def test_healthz_is_200_while_serving(endpoints: HttpEndpoints) -> None:
    status, ctype, body = await asyncio.to_thread(urllib_get, port_of(endpoints), "/healthz")
    assert (status, ctype, body) == (200, "text/plain", b"ok\n")


async def test_readyz_is_503_until_ready_then_200(endpoints: HttpEndpoints, ready: Ready) -> None:
    port = port_of(endpoints)
    status, _, body = await asyncio.to_thread(urllib_get, port, "/readyz")
    assert status == 503
    assert b"not ready" in body

    ready.value = True
    status, _, body = await asyncio.to_thread(urllib_get, port, "/readyz")
    assert (status, body) == (200, b"ready\n")


async def test_readyz_is_503_while_draining(endpoints: HttpEndpoints, ready: Ready) -> None:
    ready.value = True
    endpoints.draining = True
    status, _, body = await get(port_of(endpoints), "/readyz")
    assert status == 503
    assert body == b"shutting down\n"
    # Liveness is unaffected by draining.
    assert (await get(port_of(endpoints), "/healthz"))[0] == 200


async def test_metrics_are_served_in_prometheus_text_format(endpoints: HttpEndpoints) -> None:
    status, ctype, body = await asyncio.to_thread(urllib_get, port_of(endpoints), "/metrics")
    assert status == 200
    assert ctype.startswith("text/plain; version=")
    text = body.decode()
    assert "# TYPE extauthz_decisions_total counter" in text
    assert 'extauthz_decisions_total{decision="deny",reason="token_expired"} 0.0' in text
    assert "extauthz_feed_age_seconds +Inf" in text


async def test_query_string_is_ignored(endpoints: HttpEndpoints) -> None:
    assert (await get(port_of(endpoints), "/healthz?verbose=1"))[0] == 200


async def test_unknown_path_is_404(endpoints: HttpEndpoints) -> None:
    status, headers, body = await get(port_of(endpoints), "/admin")
    assert status == 404
    assert body == b"not found\n"
    assert headers["content-length"] == str(len(body))
    assert headers["connection"] == "close"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
async def test_non_get_methods_are_405(endpoints: HttpEndpoints, method: str) -> None:
    status, _, body = await get(port_of(endpoints), "/healthz", method)
    assert status == 405
    assert body == b"method not allowed\n"


async def test_head_gets_headers_without_a_body(endpoints: HttpEndpoints) -> None:
    status, headers, body = await get(port_of(endpoints), "/healthz", "HEAD")
    assert status == 200
    assert headers["content-length"] == "3"
    assert body == b""


@pytest.mark.parametrize(
    "request_line",
    [b"garbage", b"GET /healthz", b"GET /healthz HTTP/2.0", b"GET  /healthz HTTP/1.1", b"\x00\xff"],
)
async def test_garbage_request_line_is_400(endpoints: HttpEndpoints, request_line: bytes) -> None:
    response = await raw_exchange(port_of(endpoints), request_line + b"\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert response.endswith(b"\r\n\r\nbad request\n")


async def test_oversized_request_head_is_dropped_and_the_server_keeps_serving(
    endpoints: HttpEndpoints,
) -> None:
    port = port_of(endpoints)
    huge = b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * (64 * 1024) + b"\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        try:
            writer.write(huge)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 5)
        except ConnectionError:
            answer = b""  # reset while we were still sending: dropped all the same
        assert answer == b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert (await get(port, "/healthz"))[0] == 200


async def test_silent_client_does_not_block_other_requests(endpoints: HttpEndpoints) -> None:
    port = port_of(endpoints)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        # The silent connection is open and unanswered; others are served meanwhile.
        assert (await get(port, "/healthz"))[0] == 200
        status, _, _ = await asyncio.to_thread(urllib_get, port, "/metrics")
        assert status == 200
        assert not reader.at_eof()
    finally:
        writer.close()
        await writer.wait_closed()


async def test_silent_client_is_dropped_after_the_read_timeout(
    ready: Ready, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(extauthz.http_endpoints, "_READ_TIMEOUT", 0.2)
    server = HttpEndpoints(CollectorRegistry(), ready)
    port = await server.start("127.0.0.1:0")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\n")  # never finishes the head
            await writer.drain()
            # Closed by the server without an answer, well before our own 5 s guard.
            assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            writer.close()
            await writer.wait_closed()
        assert (await get(port, "/healthz"))[0] == 200
    finally:
        await server.stop()


async def test_stop_closes_the_listener(ready: Ready) -> None:
    server = HttpEndpoints(CollectorRegistry(), ready)
    port = await server.start("127.0.0.1:0")
    assert port > 0
    await server.stop()
    with pytest.raises(OSError):
        await raw_exchange(port, b"GET /healthz HTTP/1.1\r\n\r\n")


async def test_stop_before_start_is_harmless(ready: Ready) -> None:
    await HttpEndpoints(CollectorRegistry(), ready).stop()


def test_respond_table() -> None:
    endpoints = HttpEndpoints(CollectorRegistry(), lambda: True)
    assert endpoints.respond("GET", "/healthz") == (200, "text/plain", b"ok\n")
    assert endpoints.respond("GET", "/readyz")[0] == 200
    assert endpoints.respond("POST", "/nowhere")[0] == 405
    assert endpoints.respond("GET", "/nowhere")[0] == 404
