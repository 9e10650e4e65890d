"""Fetching an issuer's signing keys: from ``jwks_url``, or through OpenID Connect discovery.

Discovery reads ``{issuer}/.well-known/openid-configuration`` and takes its ``jwks_uri``;
the document's own ``issuer`` must equal the configured one exactly (OpenID Connect
Discovery 1.0 §4.3), so a document served for another issuer cannot point us at its keys.
The JWKS is fetched with ``If-None-Match``; its ``Cache-Control: max-age`` is returned for
the caller to clamp into its refresh interval. Blocking: run in a worker thread.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from extauthz.config import IssuerConfig
from extauthz.errors import ConfigError, KeysError
from extauthz.http_fetch import Fetched, FetchFailed, HttpFetcher
from extauthz.tokens.keys import KeySet, parse_jwks

# A JWKS is a few kB; a discovery document not much more.
MAX_DOCUMENT_BYTES = 1024 * 1024
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-cache|no-store)\s*(?:,|$)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class KeysFetched:
    # None when the keys are unchanged (a 304, or the same document again).
    key_set: KeySet | None
    # What the response allows us to cache it for, in seconds; None when it does not say.
    max_age: float | None


class RemoteKeys:
    """One issuer's remote keys. Remembers the last document's ETag and content."""

    def __init__(self, issuer: IssuerConfig) -> None:
        self.issuer = issuer
        self._fetcher = HttpFetcher(
            timeout=issuer.fetch_timeout, max_bytes=MAX_DOCUMENT_BYTES, ca_file=issuer.ca_file
        )
        self._etag: str | None = None
        self._last_body: bytes | None = None
        self.jwks_url: str | None = issuer.jwks_url

    def fetch(self) -> KeysFetched:
        """Fetch the keys. Raises KeysError naming the URL and problem."""
        url = self._discover() if self.issuer.discovery else self.jwks_url
        assert url is not None  # config guarantees jwks_url or discovery
        headers = {"Accept": "application/jwk-set+json, application/json"}
        if self._etag is not None and url == self.jwks_url:
            headers["If-None-Match"] = self._etag
        fetched = self._get(url, headers)
        self.jwks_url = url
        max_age = _max_age(fetched.headers.get("Cache-Control"))
        if fetched.status == 304 or fetched.body == self._last_body:
            return KeysFetched(None, max_age)
        try:
            document = json.loads(fetched.body)
            keys = parse_jwks(document, url)
        except ValueError as err:
            raise KeysError(f"{url}: not valid JSON: {err}") from err
        except ConfigError as err:
            raise KeysError(str(err)) from err
        if not keys:
            raise KeysError(f"{url}: holds no usable signing key")
        self._etag, self._last_body = fetched.headers.get("ETag"), fetched.body
        return KeysFetched(KeySet(self.issuer.issuer, keys, url), max_age)

    def _discover(self) -> str:
        url = self.issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"
        fetched = self._get(url, {"Accept": "application/json"})
        try:
            document = json.loads(fetched.body)
        except ValueError as err:
            raise KeysError(f"{url}: not valid JSON: {err}") from err
        if not isinstance(document, dict):
            raise KeysError(f"{url}: must be a JSON object")
        if document.get("issuer") != self.issuer.issuer:
            raise KeysError(
                f"{url}: issuer {document.get('issuer')!r} is not {self.issuer.issuer!r}"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or urlsplit(jwks_uri).scheme not in ("https", "http"):
            raise KeysError(f"{url}: jwks_uri must be an http(s) URL, got {jwks_uri!r}")
        issuer_scheme = urlsplit(self.issuer.issuer).scheme
        if urlsplit(jwks_uri).scheme == "http" and issuer_scheme == "https":
            # Keys over plain HTTP for an HTTPS issuer could be swapped in transit.
            raise KeysError(f"{url}: jwks_uri {jwks_uri!r} is plain http for an https issuer")
        return jwks_uri

    def _get(self, url: str, headers: dict[str, str]) -> Fetched:
        try:
            fetched = self._fetcher.get(url, headers)
        except FetchFailed as err:
            raise KeysError(str(err)) from err
        if fetched.status == 304 and self._last_body is None:
            raise KeysError(f"{url}: 304 with no keys to keep")
        return fetched


def _max_age(cache_control: str | None) -> float | None:
    if not cache_control:
        return None
    if _NO_CACHE.search(cache_control):
        return 0.0
    match = _MAX_AGE.search(cache_control)
    return float(match.group(1)) if match else None
