"""The coverage-guided fuzz target (fuzz/fuzz_check.py) runs a fixed number of inputs in
the suite, in its own process as libFuzzer wants; ``make fuzz SECONDS=600`` runs it longer.

A fixed seed and run count make the run the same every time (the corpus starts from the
target's own seeds in an empty folder); no clock decides the outcome.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

TARGET = ROOT / "fuzz" / "fuzz_check.py"
RUNS = 20_000


@pytest.mark.fuzz
@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="atheris ships wheels for Linux only"
)
def test_fuzz_target_finds_nothing_in_a_bounded_run(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    command = [
        sys.executable,
        str(TARGET),
        f"-runs={RUNS}",
        "-seed=1",
        "-max_len=2048",
        f"-artifact_prefix={tmp_path}/",
        str(corpus),
    ]

    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)

    tail = "\n".join(done.stderr.splitlines()[-40:])
    assert done.returncode == 0, f"the fuzz target found something:\n{tail}"
    assert re.search(rf"^Done {RUNS} runs in ", done.stderr, re.MULTILINE), tail
    assert not list(tmp_path.glob("crash-*"))
    # The target reached past the parsers: its corpus grew beyond the seeds it starts with.
    assert len(list(corpus.iterdir())) > 20, tail
