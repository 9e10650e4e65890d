"""The committed code generated from proto/ is exactly what `make proto` makes today."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from helpers import ROOT


def _generate(out_dir: Path) -> None:
    # proto/generate.py is a script, not part of the package: load it by path.
    spec = importlib.util.spec_from_file_location("generate", ROOT / "proto" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(out_dir)


def test_generated_feed_code_is_in_sync_with_the_proto(tmp_path: Path) -> None:
    _generate(tmp_path)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert [str(p) for p in generated] == [
        "extauthz/feed/v1/feed_pb2.py",
        "extauthz/feed/v1/feed_pb2.pyi",
        "extauthz/feed/v1/feed_pb2_grpc.py",
    ]
    for relative in generated:
        fresh = (tmp_path / relative).read_bytes()
        committed = (ROOT / relative).read_bytes()
        assert fresh == committed, f"{relative} is out of date: run `make proto` and commit"
