"""Fixtures for the fault, shutdown and overload tests: a real Envoy, real extauthz
processes, and real local HTTP servers standing in for the IdP and the feed."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from e2e.conftest import _require_envoy
from local_http import LocalHttpServer, local_http_server

from faults.harness import FaultStack

StartFaultStack = Callable[..., FaultStack]


@pytest.fixture
def origin() -> Iterator[LocalHttpServer]:
    """A scriptable HTTP server on 127.0.0.1: the JWKS endpoint or the feed server."""
    with local_http_server() as server:
        yield server


@pytest.fixture
def start_fault_stack() -> Iterator[StartFaultStack]:
    """``start_fault_stack(overrides, wait_extauthz_ready=..., instances=...)`` starts a
    private FaultStack, stopped after the test."""
    _require_envoy()
    started: list[FaultStack] = []

    def start(
        overrides: dict[str, object] | None = None,
        *,
        prepare: Callable[[FaultStack], None] | None = None,
        **options: object,
    ) -> FaultStack:
        """``prepare(stack)`` runs before the start (e.g. to publish the issuer's JWKS)."""
        stack = FaultStack(overrides=overrides, **options)  # type: ignore[arg-type]
        started.append(stack)
        if prepare is not None:
            prepare(stack)
        return stack.start()

    yield start
    for stack in started:
        stack.stop()
