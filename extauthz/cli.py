"""``extauthz serve --config FILE`` | ``extauthz check-config FILE`` |
``extauthz feed-serve --from FILE --listen HOST:PORT`` | ``extauthz --version``."""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from extauthz import __version__
from extauthz.errors import ConfigError, FeedError

EXIT_CONFIG_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="extauthz", description="Envoy external authorization for AI-agent traffic."
    )
    parser.add_argument("--version", action="version", version=f"extauthz {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the ext_authz gRPC service")
    serve_cmd.add_argument("--config", required=True, help="path to the YAML config")
    serve_cmd.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="processes serving the same ports (SO_REUSEPORT), default 1",
    )
    # Set by the supervisor of --workers on the processes it starts.
    serve_cmd.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    check_cmd = commands.add_parser("check-config", help="validate a config and its key files")
    check_cmd.add_argument("config", help="path to the YAML config")
    feed_cmd = commands.add_parser(
        "feed-serve", help="serve a JSON feed file over the streaming feed API (FeedService)"
    )
    feed_cmd.add_argument("--from", dest="feed_file", required=True, help="the JSON feed file")
    feed_cmd.add_argument("--listen", required=True, help="host:port to listen on")
    feed_cmd.add_argument("--heartbeat", type=_duration, default=5.0, help="default 5s")
    feed_cmd.add_argument("--poll", type=_duration, default=1.0, help="file check, default 1s")
    feed_cmd.add_argument("--history", type=int, default=100, help="deltas kept for resuming")
    feed_cmd.add_argument("--token-file", type=Path, help="require this bearer token")
    args = parser.parse_args(argv)

    if args.command == "check-config":
        return _check_config(args.config)
    if args.command == "feed-serve":
        return _feed_serve(args)
    return _serve(args.config, workers=args.workers, worker=args.worker)


def _check_config(path: str) -> int:
    # Imported here so that --version and argument errors stay fast.
    from extauthz.config import load_config
    from extauthz.errors import KeysError
    from extauthz.feed.cache import FeedCache
    from extauthz.feed.file_source import FileFeedSource
    from extauthz.feed.http_source import HttpFeedSource
    from extauthz.server import feed_source_for, load_key_sets
    from extauthz.tokens.remote_keys import RemoteKeys

    try:
        config = load_config(path)
        key_sets = load_key_sets(config)
    except ConfigError as err:
        print(f"extauthz: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    keys = sum(len(k.keys) for k in key_sets.values())
    # Remote keys and the feed are data that may be out of reach from where this runs, or
    # arrive after the config: a problem with them is a warning (serve would start
    # not-ready), not a config error.
    for issuer in config.issuers.values():
        if issuer.key_source == "file":
            continue
        try:
            fetched = RemoteKeys(issuer).fetch()
        except KeysError as err:
            print(f"extauthz: warning: {path}: issuer {issuer.issuer}: {err}", file=sys.stderr)
        else:
            keys += len(fetched.key_set.keys) if fetched.key_set else 0
    source = feed_source_for(config.feed)
    if isinstance(source, FileFeedSource | HttpFeedSource):
        try:
            source.refresh(FeedCache(), 0.0)
        except FeedError as err:
            print(f"extauthz: warning: {path}: feed.source: {err}", file=sys.stderr)
    print(
        f"{path}: ok (policy_version {config.policy_version}, mode {config.mode}, "
        f"{len(config.issuers)} issuer(s), {keys} key(s), {len(config.agents)} agent(s), "
        f"{len(config.resources.resources)} resource(s))"
    )
    return 0


def _serve(path: str, *, workers: int = 1, worker: bool = False) -> int:
    from extauthz.logs import configure_logging
    from extauthz.server import serve

    configure_logging()
    try:
        if workers > 1:
            return _supervise(path, workers)
        asyncio.run(serve(path, worker=worker))
    except ConfigError as err:
        print(f"extauthz: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except OSError as err:
        print(f"extauthz: cannot start: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _supervise(path: str, workers: int) -> int:
    """Check the config once here, so a bad one fails the command, not N workers."""
    from extauthz.config import load_config
    from extauthz.server import load_key_sets
    from extauthz.workers import Supervisor, check_can_share_ports

    config = load_config(path)
    load_key_sets(config)
    check_can_share_ports(config, workers)
    return Supervisor(path, config, workers).run()


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return int(text)


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(text: str) -> float:
    """``500ms``, ``5s``, ``1m``: the config's duration syntax."""
    match = _DURATION.match(text)
    if match is None or float(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"must be a duration like 500ms or 5s, got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _feed_serve(args: argparse.Namespace) -> int:
    from extauthz.feed.publisher import FilePublisher
    from extauthz.logs import configure_logging

    try:
        publisher = FilePublisher(
            Path(args.feed_file),
            poll=args.poll,
            heartbeat=args.heartbeat,
            history=args.history,
            token_file=args.token_file,
        )
    except FeedError as err:
        print(f"extauthz: feed error: {err}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    configure_logging()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # Handlers first, so a SIGTERM that arrives while starting still stops us cleanly.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await publisher.start(args.listen)
        await stop.wait()
        await publisher.stop()

    try:
        asyncio.run(run())
    except OSError as err:
        print(f"extauthz: cannot start: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
