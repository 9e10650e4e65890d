"""A naive Python ext_authz: what one would write in an afternoon.

grpc.aio, PyJWT's ``jwt.decode`` on every request (signature, ``exp``, ``aud``, ``iss``),
then a dict lookup of the user's permissions from the feed file, read once at start.
Allowed when the route's permission is in the user's permissions and in the token's
scope; no agent registry, no delegation chain, no revocation, no decision log, no
metrics. It is the throughput baseline of ``benchmarks/bench_envoy.py`` (``naive``)::

    python benchmarks/baselines/naive.py --port 9001 --jwks keys/jwks.json \
        --feed feed/users.json --issuer https://idp.example.test \
        --audience https://tickets.example.test
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
from pathlib import Path
from typing import Any

import grpc
import jwt
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

# (method, path pattern) → permission, as in deploy/extauthz/config.yaml.
ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(r"/tickets/[^/]+"), "tickets:read"),
    ("POST", re.compile(r"/tickets"), "tickets:write"),
    ("DELETE", re.compile(r"/tickets/[^/]+"), "tickets:delete"),
]


class Naive(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(
        self, keys: dict[str, Any], users: dict[str, list[str]], issuer: str, audience: str
    ) -> None:
        self.keys = keys
        self.users = users
        self.issuer = issuer
        self.audience = audience

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: Any
    ) -> external_auth_pb2.CheckResponse:
        http = request.attributes.request.http
        header = http.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            return deny(401)
        token = header[len("Bearer ") :]
        try:
            key = self.keys[str(jwt.get_unverified_header(token).get("kid"))]
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                audience=self.audience,
                issuer=self.issuer,
            )
        except (KeyError, jwt.InvalidTokenError):
            return deny(401)
        path = http.path.split("?", 1)[0]
        permission = next((p for m, r, p in ROUTES if m == http.method and r.fullmatch(path)), None)
        granted = self.users.get(str(claims.get("sub")), [])
        scope = str(claims.get("scope", "")).split()
        if permission is None or permission not in granted or permission not in scope:
            return deny(403)
        return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK))


def deny(status: int) -> external_auth_pb2.CheckResponse:
    code = code_pb2.UNAUTHENTICATED if status == 401 else code_pb2.PERMISSION_DENIED
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=status)
        ),
    )


def load_users(feed: Path) -> dict[str, list[str]]:
    document = json.loads(feed.read_text())
    return {
        name: list(entry.get("permissions", []))
        for name, entry in document["users"].items()
        if not entry.get("disabled", False)
    }


def load_keys(jwks: Path) -> dict[str, Any]:
    keys = jwt.PyJWKSet.from_json(jwks.read_text()).keys
    return {key.key_id: key for key in keys if key.key_id is not None}


async def serve(args: argparse.Namespace) -> None:
    servicer = Naive(load_keys(args.jwks), load_users(args.feed), args.issuer, args.audience)
    server = grpc.aio.server()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"naive: listening on 127.0.0.1:{args.port}", flush=True)
    await stop.wait()
    await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jwks", type=Path, required=True)
    parser.add_argument("--feed", type=Path, required=True)
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--audience", required=True)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
