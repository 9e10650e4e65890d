"""Keeping fetched keys current (extauthz/key_refresh.py), against a real local JWKS server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_http import LocalHttpServer, Reply, Seen, local_http_server
from prometheus_client import CollectorRegistry

from extauthz.config import IssuerConfig
from extauthz.demo.issuer import LocalIssuer, generate_key
from extauthz.key_refresh import KeyRefresher
from extauthz.metrics import Metrics
from extauthz.tokens.keys import KeySet

ISSUER = "https://idp.example.test"


@pytest.fixture
def server() -> Iterator[LocalHttpServer]:
    with local_http_server() as server:
        yield server


@pytest.fixture
def idp() -> LocalIssuer:
    return LocalIssuer(ISSUER)


def serve_jwks(server: LocalHttpServer, idp: LocalIssuer, **headers: str) -> None:
    server.replies["/jwks"] = Reply(body=json.dumps(idp.jwks()).encode(), headers=headers)


class Published:
    def __init__(self) -> None:
        self.key_sets: list[KeySet] = []

    def __call__(self, key_set: KeySet) -> None:
        self.key_sets.append(key_set)

    @property
    def kids(self) -> list[str]:
        return sorted(self.key_sets[-1].keys) if self.key_sets else []


def refresher(
    server: LocalHttpServer, published: Published, **settings: float
) -> tuple[KeyRefresher, Metrics]:
    issuer = IssuerConfig(
        ISSUER,
        frozenset({"RS256"}),
        jwks_url=server.url("/jwks"),
        fetch_timeout=1.0,
        **settings,  # type: ignore[arg-type]
    )
    metrics = Metrics(CollectorRegistry())
    return KeyRefresher([issuer], published, metrics), metrics


def count(metrics: Metrics, outcome: str) -> float | None:
    labels = {"issuer": ISSUER, "outcome": outcome}
    return metrics.registry.get_sample_value("extauthz_keys_refresh_total", labels)


async def test_first_fetch_publishes_the_keys_and_counts_a_success(
    server: LocalHttpServer, idp: LocalIssuer
) -> None:
    serve_jwks(server, idp)
    published = Published()
    keys, metrics = refresher(server, published)
    age = metrics.registry.get_sample_value("extauthz_keys_age_seconds", {"issuer": ISSUER})
    assert age == math.inf
    await keys.fetch_all()
    assert published.kids == ["ec-1", "ed25519-1", "rsa-1"]
    assert count(metrics, "success") == 1.0
    age = metrics.registry.get_sample_value("extauthz_keys_age_seconds", {"issuer": ISSUER})
    assert age is not None and age < 5


async def test_a_failed_fetch_keeps_the_last_keys_and_counts_an_error(
    server: LocalHttpServer, idp: LocalIssuer
) -> None:
    serve_jwks(server, idp)
    published = Published()
    keys, metrics = refresher(server, published, unknown_kid_refetch=0.0)
    await keys.fetch_all()
    server.replies["/jwks"] = Reply(body=b"garbage")
    assert await keys.refetch(ISSUER) is False
    assert len(published.key_sets) == 1
    assert count(metrics, "error") == 1.0


async def test_an_unknown_kid_refetch_finds_a_rotated_in_key(
    server: LocalHttpServer, idp: LocalIssuer
) -> None:
    serve_jwks(server, idp)
    published = Published()
    keys, _ = refresher(server, published)
    await keys.fetch_all()
    idp.keys["rsa-2"] = generate_key("rsa")
    serve_jwks(server, idp)
    assert await keys.refetch(ISSUER) is True
    assert "rsa-2" in published.kids


async def test_a_slow_periodic_fetch_does_not_undo_a_rotation_a_refetch_found(
    server: LocalHttpServer, idp: LocalIssuer
) -> None:
    serve_jwks(server, idp)
    published = Published()
    keys, _ = refresher(server, published, keys_refresh=0.3, keys_refresh_min=0.3)
    await keys.fetch_all()
    old_body = json.dumps(idp.jwks()).encode()
    answers: list[str] = []

    def jwks(seen: Seen) -> Reply:
        # The periodic refresh asks first and gets the keys before the rotation, slowly.
        if not answers:
            answers.append("old, slow")
            return Reply(body=old_body, misbehave="hang", hang_s=0.8)
        answers.append("new")
        return Reply(body=json.dumps(idp.jwks()).encode())

    server.replies["/jwks"] = jwks
    refreshing = asyncio.create_task(keys.run())
    try:
        while not answers:
            await asyncio.sleep(0.02)
        idp.keys["rsa-2"] = generate_key("rsa")  # rotated in while that fetch hangs
        assert await keys.refetch(ISSUER) is True
        since_refetch = len(published.key_sets) - 1
        assert "rsa-2" in published.kids
        await asyncio.sleep(1.2)  # the slow fetch answers, and the periodic one after it
    finally:
        refreshing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refreshing
    assert answers[0] == "old, slow" and len(answers) >= 3
    # No key set published after the refetch's lacks the rotated-in key.
    assert all("rsa-2" in ks.keys for ks in published.key_sets[since_refetch:])


async def test_a_flood_of_unknown_kids_costs_the_idp_one_request_per_interval(
    server: LocalHttpServer, idp: LocalIssuer
) -> None:
    serve_jwks(server, idp)
    published = Published()
    keys, _ = refresher(server, published, unknown_kid_refetch=60.0)
    await keys.fetch_all()
    before = len(server.paths_requested("/jwks"))
    results = await asyncio.gather(*(keys.refetch(ISSUER) for _ in range(200)))
    results += [await keys.refetch(ISSUER) for _ in range(50)]
    assert len(server.paths_requested("/jwks")) - before == 1
    assert not any(results)  # the keys did not change, so nothing to decide again


async def test_requests_during_a_refetch_share_it(
    server: LocalHttpServer, idp: LocalIssuer
) -> None:
    serve_jwks(server, idp)
    published = Published()
    keys, _ = refresher(server, published)
    await keys.fetch_all()
    idp.keys["rsa-2"] = generate_key("rsa")
    serve_jwks(server, idp)
    results = await asyncio.gather(*(keys.refetch(ISSUER) for _ in range(20)))
    assert results == [True] * 20
    assert len(server.paths_requested("/jwks")) == 2


async def test_the_periodic_refresh_follows_max_age_within_bounds(
    server: LocalHttpServer, idp: LocalIssuer
) -> None:
    serve_jwks(server, idp, **{"Cache-Control": "max-age=0"})
    published = Published()
    keys, metrics = refresher(server, published, keys_refresh_min=0.05, keys_refresh_max=0.1)
    task = asyncio.create_task(keys.run())
    try:
        for _ in range(200):
            if len(server.paths_requested("/jwks")) >= 4:
                break
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(server.paths_requested("/jwks")) >= 4
    assert count(metrics, "not_modified") is not None
    assert (count(metrics, "not_modified") or 0) >= 2


async def test_an_issuer_with_keys_from_a_file_is_never_fetched(tmp_path: Path) -> None:
    file_issuer = IssuerConfig(ISSUER, frozenset({"RS256"}), jwks_file=tmp_path / "jwks.json")
    keys = KeyRefresher([file_issuer], Published(), Metrics(CollectorRegistry()))
    assert keys.issuers == ()
    assert await keys.refetch(ISSUER) is False
