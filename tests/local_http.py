"""A real HTTP server on 127.0.0.1 for feed and JWKS tests, scriptable per path.

Each path answers with a ``Reply`` (status, headers, body) and may misbehave the ways real
servers do: hang before answering, drip the body, or close the connection mid-body. Every
request is recorded (path and headers) so tests can assert what extauthz sent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

Misbehaviour = Literal["none", "hang", "truncate", "drip"]


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    misbehave: Misbehaviour = "none"
    # With "hang": how long to wait before answering at all.
    hang_s: float = 10.0


@dataclass(frozen=True)
class Seen:
    path: str
    headers: dict[str, str]


class LocalHttpServer:
    def __init__(self, port: int = 0) -> None:
        self.replies: dict[str, Reply | Callable[[Seen], Reply]] = {}
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                seen = Seen(self.path, {k.lower(): v for k, v in self.headers.items()})
                with server._lock:
                    server.requests.append(seen)
                    reply = server.replies.get(self.path, Reply(404, b"not found"))
                if callable(reply):
                    reply = reply(seen)
                if reply.misbehave == "hang":
                    server._release.wait(reply.hang_s)
                self.send_response(reply.status)
                headers = {"Content-Length": str(len(reply.body)), **reply.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if reply.misbehave == "truncate":
                    self.wfile.write(reply.body[: len(reply.body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if reply.misbehave == "drip":
                    for i in range(len(reply.body)):
                        self.wfile.write(reply.body[i : i + 1])
                        self.wfile.flush()
                        if server._release.wait(0.05):
                            return
                    return
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        # A fixed ``port`` lets a test bring a server "back" where extauthz expects it.
        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), daemon=True
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def paths_requested(self, path: str) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def local_http_server() -> Iterator[LocalHttpServer]:
    server = LocalHttpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def wait_until(condition: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``condition`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.01)
