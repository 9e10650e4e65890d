"""The last accepted feed, kept on local disk so a restart during a feed outage still serves.

The file holds the snapshot and when it was fetched; loaded at start it counts as fetched
then, so ``feed.max_staleness`` still bounds how long it may be used. It is written to a
temporary file and renamed into place, so a crash mid-write leaves the previous one whole,
and it is validated like any feed when read back.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from extauthz.errors import FeedError
from extauthz.feed.snapshot import FeedSnapshot, feed_document, snapshot_from_document
from extauthz.strict_json import loads_strict


def save_snapshot(path: Path, snapshot: FeedSnapshot, fetched_at: float) -> None:
    """Write atomically. Raises OSError."""
    body = json.dumps(
        {"fetched_at": fetched_at, "feed": feed_document(snapshot)}, separators=(",", ":")
    ).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_snapshot(path: Path) -> tuple[FeedSnapshot, float] | None:
    """The saved snapshot and its fetch time; None when there is no file yet.
    Raises FeedError when the file is unreadable or invalid."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise FeedError(f"{path}: cannot read: {err.strerror or err}") from err
    try:
        document = loads_strict(raw, fold_names=False)
    except (ValueError, RecursionError) as err:
        raise FeedError(f"{path}: not valid JSON: {err}") from err
    fetched_at = document.get("fetched_at") if isinstance(document, dict) else None
    if (
        not isinstance(fetched_at, int | float)
        or isinstance(fetched_at, bool)
        or not math.isfinite(fetched_at)
        or "feed" not in document
    ):
        raise FeedError(f"{path}: not a saved feed (needs fetched_at and feed)")
    snapshot = snapshot_from_document(document["feed"], str(path))
    return snapshot, float(fetched_at)
