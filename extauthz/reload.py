"""Live policy reload: a changed config file (or SIGHUP) becomes the running policy.

The new file is loaded and validated whole, with its JWKS files, off the event loop; an
invalid one is refused with the file, key and problem, and the running policy stays.
Agents, resources, routes, tokens, mode, response, issuers (new ones, algorithms, key
sources) and the feed's issuer and staleness take effect at once. What cannot change in a
running process (listen addresses, the feed source and how it is fetched) keeps its
running value and is reported as needing a restart, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from extauthz.config import Config, load_config
from extauthz.tokens.keys import KeySet, load_jwks_file

# Feed settings that choose and shape the source, which is built once at start.
FEED_RESTART_FIELDS = (
    "source",
    "kind",
    "refresh",
    "timeout",
    "retries",
    "max_bytes",
    "credentials_file",
    "credentials_env",
    "ca_file",
    "snapshot_file",
)


@dataclass(frozen=True, slots=True)
class Reloaded:
    """A validated new policy, ready to swap in once its remote keys are at hand."""

    config: Config
    # Keys read from the new config's JWKS files.
    file_key_sets: Mapping[str, KeySet]
    # Dotted keys whose change needs a restart; their running values were kept.
    restart_required: tuple[str, ...]


def watched_digest(config: Config) -> bytes:
    """A digest of the config file and every JWKS file it names, so that rewriting any
    of them is noticed. A file that cannot be read counts as a change (reload says why)."""
    digest = hashlib.blake2b(digest_size=16)
    for path in (config.path, *_jwks_files(config)):
        try:
            digest.update(path.read_bytes())
        except OSError as err:
            digest.update(f"unreadable {path}: {err.errno}".encode())
        digest.update(b"\0")
    return digest.digest()


def load_reload(running: Config) -> Reloaded:
    """Load ``running.path`` again, with its JWKS files, and keep the running values of
    what cannot change live. Blocking. Raises ConfigError naming file, key and problem."""
    new = load_config(running.path)
    restart = [
        f"server.{field.name}"
        for field in dataclasses.fields(running.server)
        if getattr(running.server, field.name) != getattr(new.server, field.name)
    ]
    if running.decision_log != new.decision_log:
        restart.append("decision_log")
    kept: dict[str, object] = {}
    for name in FEED_RESTART_FIELDS:
        if getattr(running.feed, name) != getattr(new.feed, name):
            restart.append(f"feed.{name}")
            kept[name] = getattr(running.feed, name)
    feed = dataclasses.replace(new.feed, **kept)  # type: ignore[arg-type]
    merged = dataclasses.replace(
        new, server=running.server, feed=feed, decision_log=running.decision_log
    )
    file_keys = {
        i.issuer: load_jwks_file(i.issuer, i.jwks_file)
        for i in merged.issuers.values()
        if i.jwks_file is not None
    }
    return Reloaded(merged, file_keys, tuple(restart))


def _jwks_files(config: Config) -> list[Path]:
    return [i.jwks_file for i in config.issuers.values() if i.jwks_file is not None]
