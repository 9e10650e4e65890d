"""``/healthz``, ``/readyz`` and ``/metrics`` on one small HTTP/1.1 listener.

Deliberately minimal: GET or HEAD, one request per connection, bounded header size and
read time, so a slow or hostile scraper cannot hold the port.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from http import HTTPStatus

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

_MAX_HEAD = 16 * 1024
_READ_TIMEOUT = 5.0


class HttpEndpoints:
    def __init__(
        self, registry: CollectorRegistry, ready: Callable[[], bool], *, reuse_port: bool = False
    ) -> None:
        self.registry = registry
        self.ready = ready
        self.reuse_port = reuse_port
        self.draining = False
        self._server: asyncio.Server | None = None

    async def start(self, listen: str) -> int:
        """Listen on ``host:port``; returns the bound port (useful with port 0)."""
        host, _, port = listen.rpartition(":")
        self._server = await asyncio.start_server(
            self._handle,
            host.strip("[]"),
            int(port),
            limit=_MAX_HEAD,
            reuse_port=self.reuse_port or None,
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for one request."""
        path = path.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            if self.draining:
                return 503, "text/plain", b"shutting down\n"
            if self.ready():
                return 200, "text/plain", b"ready\n"
            return 503, "text/plain", b"not ready: waiting for keys and a first feed\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        return 404, "text/plain", b"not found\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                status, ctype, body = 400, "text/plain", b"bad request\n"
                method = "GET"
            else:
                method = parts[0]
                status, ctype, body = self.respond(method, parts[1])
            reason = HTTPStatus(status).phrase
            writer.write(
                (
                    f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                ).encode("latin-1")
                + (b"" if method == "HEAD" else body)
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # the client went away or misbehaved; nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
