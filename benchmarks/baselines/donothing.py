"""The floor for any Python ext_authz: a grpc.aio Check handler that allows everything.

It reads nothing from the request and answers OK. Whatever a real authorizer costs beyond
this is its own work; this much is the Python gRPC machinery. Used by
``benchmarks/bench_envoy.py`` as the ``donothing`` case::

    python benchmarks/baselines/donothing.py --port 9001
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2, status_pb2


class DoNothing(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: Any
    ) -> external_auth_pb2.CheckResponse:
        # Built per call, as any handler that says something about the request must.
        return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK))


async def serve(port: int) -> None:
    server = grpc.aio.server()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(DoNothing(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"donothing: listening on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
