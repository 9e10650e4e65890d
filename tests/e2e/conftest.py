"""Fixtures for the end-to-end tests: real Envoy, real extauthz process, echo upstream.

One stack is shared by the whole session; tests that break their stack on purpose (stale
feed, extauthz stopped) start their own through ``start_stack``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping

import pytest

from extauthz.demo.stack import ENVOY_ENV_VAR, EnvoyNotFound, Stack, find_envoy

StartStack = Callable[..., Stack]


def _require_envoy() -> None:
    """Skip when no Envoy is installed; fail when $EXTAUTHZ_ENVOY names a bad one (a run
    that sets it, such as CI, means the end-to-end tests must run)."""
    try:
        find_envoy()
    except EnvoyNotFound as err:
        if os.environ.get(ENVOY_ENV_VAR):
            pytest.fail(str(err), pytrace=False)
        pytest.skip(f"end-to-end tests need Envoy: {err}")


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The shared stack, with deploy/extauthz/config.yaml as shipped."""
    _require_envoy()
    with Stack() as running:
        yield running


@pytest.fixture
def start_stack() -> Iterator[StartStack]:
    """``start_stack(overrides={...})`` starts a private stack, stopped after the test."""
    _require_envoy()
    started: list[Stack] = []

    def start(overrides: Mapping[str, object] | None = None) -> Stack:
        running = Stack(overrides=overrides)
        started.append(running)
        return running.start()

    yield start
    for running in started:
        running.stop()
