"""Generate the Python code for the project's protos: ``make proto``.

The output (``extauthz/feed/v1/feed_pb2*.py{,i}``) is committed and never edited by hand;
``tests/test_proto_generated.py`` regenerates it into a temporary folder and fails when
the committed files differ, so the proto and the code cannot drift apart.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
PROTOS = ("extauthz/feed/v1/feed.proto",)


def generate(out_dir: Path) -> None:
    """Write the generated modules under ``out_dir`` (the repo root for the real thing),
    at the import path the proto's folder gives them. Raises RuntimeError if protoc fails."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for proto in PROTOS:
        # Paths relative to the proto root, so that the generated imports read
        # ``from extauthz.feed.v1 import feed_pb2`` wherever the output goes.
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTO_ROOT}",
                f"--python_out={out_dir}",
                f"--pyi_out={out_dir}",
                f"--grpc_python_out={out_dir}",
                proto,
            ]
        )
        if status != 0:
            raise RuntimeError(f"protoc failed on {proto} (exit {status})")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT)
