"""Fetching issuer keys from a JWKS URL or OIDC discovery, from a real local HTTP server."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from local_http import LocalHttpServer, Reply, local_http_server

from extauthz.config import IssuerConfig
from extauthz.demo.issuer import LocalIssuer
from extauthz.errors import KeysError
from extauthz.tokens.remote_keys import RemoteKeys, _max_age


@pytest.fixture
def server() -> Iterator[LocalHttpServer]:
    with local_http_server() as server:
        yield server


@pytest.fixture(scope="module")
def idp() -> LocalIssuer:
    return LocalIssuer()


def jwks_body(idp: LocalIssuer) -> bytes:
    return json.dumps(idp.jwks()).encode()


def url_issuer(server: LocalHttpServer, **kw: object) -> IssuerConfig:
    return IssuerConfig(
        "https://idp.example.test",
        frozenset({"RS256"}),
        jwks_url=server.url("/jwks"),
        fetch_timeout=kw.pop("fetch_timeout", 2.0),  # type: ignore[arg-type]
    )


def discovery_issuer(server: LocalHttpServer) -> IssuerConfig:
    return IssuerConfig(server.url(""), frozenset({"RS256"}), discovery=True, fetch_timeout=2.0)


def test_keys_are_fetched_from_the_jwks_url(server: LocalHttpServer, idp: LocalIssuer) -> None:
    server.replies["/jwks"] = Reply(body=jwks_body(idp), headers={"Cache-Control": "max-age=90"})
    fetched = RemoteKeys(url_issuer(server)).fetch()
    assert fetched.key_set is not None
    assert sorted(fetched.key_set.keys) == ["ec-1", "ed25519-1", "rsa-1"]
    assert fetched.key_set.issuer == "https://idp.example.test"
    assert fetched.max_age == 90.0


def test_unchanged_keys_are_confirmed_by_etag_or_by_content(
    server: LocalHttpServer, idp: LocalIssuer
) -> None:
    def reply(seen: object) -> Reply:
        if getattr(seen, "headers", {}).get("if-none-match") == '"k1"':
            return Reply(304)
        return Reply(body=jwks_body(idp), headers={"ETag": '"k1"'})

    server.replies["/jwks"] = reply
    remote = RemoteKeys(url_issuer(server))
    assert remote.fetch().key_set is not None
    assert remote.fetch().key_set is None  # 304
    server.replies["/jwks"] = Reply(body=jwks_body(idp))  # no ETag support, same body
    assert remote.fetch().key_set is None


def test_discovery_reads_jwks_uri_from_the_issuer_metadata(
    server: LocalHttpServer, idp: LocalIssuer
) -> None:
    issuer = discovery_issuer(server)
    server.replies["/.well-known/openid-configuration"] = Reply(
        body=json.dumps({"issuer": issuer.issuer, "jwks_uri": server.url("/keys/v2")}).encode()
    )
    server.replies["/keys/v2"] = Reply(body=jwks_body(idp))
    fetched = RemoteKeys(issuer).fetch()
    assert fetched.key_set is not None and fetched.key_set.source == server.url("/keys/v2")


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"issuer": "https://other.example.test", "jwks_uri": "/x"}, "is not"),
        ({"jwks_uri": "/x"}, "issuer None is not"),
        ("[]", "must be a JSON object"),
        ("{", "not valid JSON"),
    ],
)
def test_discovery_refuses_metadata_for_another_issuer_or_garbage(
    server: LocalHttpServer, metadata: object, message: str
) -> None:
    issuer = discovery_issuer(server)
    body = metadata if isinstance(metadata, str) else json.dumps(metadata)
    server.replies["/.well-known/openid-configuration"] = Reply(body=body.encode())
    with pytest.raises(KeysError, match=message):
        RemoteKeys(issuer).fetch()


def test_discovery_refuses_a_jwks_uri_that_is_not_http(server: LocalHttpServer) -> None:
    issuer = discovery_issuer(server)
    server.replies["/.well-known/openid-configuration"] = Reply(
        body=json.dumps({"issuer": issuer.issuer, "jwks_uri": "file:///etc/keys"}).encode()
    )
    with pytest.raises(KeysError, match="jwks_uri must be an http"):
        RemoteKeys(issuer).fetch()


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (Reply(500), "HTTP 500"),
        (Reply(body=b"<html>"), "not valid JSON"),
        (Reply(body=b'{"keys": []}'), "holds no usable signing key"),
        (Reply(body=b'{"nokeys": 1}'), "must be an object with a 'keys' list"),
        (
            Reply(body=b'{"keys": [{"kty": "RSA", "kid": "x", "n": "AQAB", "e": "AQAB"}]}'),
            "keys\\[0\\]: not a valid RSA key",
        ),
        (Reply(body=b'{"keys": []}', misbehave="truncate"), "cut short"),
    ],
    ids=["server_error", "garbage", "empty", "not_jwks", "bad_key", "truncated"],
)
def test_bad_answers_raise_keys_error(server: LocalHttpServer, reply: Reply, message: str) -> None:
    server.replies["/jwks"] = reply
    with pytest.raises(KeysError, match=message):
        RemoteKeys(url_issuer(server)).fetch()


def test_private_key_material_in_a_fetched_jwks_is_refused(server: LocalHttpServer) -> None:
    jwk = {"kty": "EC", "kid": "p", "crv": "P-256", "x": "a", "y": "b", "d": "secret"}
    server.replies["/jwks"] = Reply(body=json.dumps({"keys": [jwk]}).encode())
    with pytest.raises(KeysError, match="private key material"):
        RemoteKeys(url_issuer(server)).fetch()


def test_a_hanging_key_server_times_out(server: LocalHttpServer) -> None:
    server.replies["/jwks"] = Reply(misbehave="hang")
    with pytest.raises(KeysError, match="timed out"):
        RemoteKeys(url_issuer(server, fetch_timeout=0.3)).fetch()


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("public, max-age=300", 300.0),
        ('max-age="60"', 60.0),
        ("MAX-AGE=5, must-revalidate", 5.0),
        ("no-cache", 0.0),
        ("private, no-store", 0.0),
        ("s-maxage=100", None),
        ("max-age=abc", None),
    ],
)
def test_cache_control_max_age_is_read(header: str | None, seconds: float | None) -> None:
    assert _max_age(header) == seconds
