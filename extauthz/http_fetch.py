"""Blocking HTTP(S) GETs for the things extauthz reads from elsewhere: feeds, JWKS, OIDC
discovery documents. Callers run them in worker threads, never on the event loop.

Bounded in every direction: a timeout per socket operation and a deadline for the whole
body (a server that drips one byte a second cannot hold a fetch open), a size limit
checked as bytes arrive, no redirects, no proxies taken from the environment.
"""

from __future__ import annotations

import http.client
import os
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

from extauthz import __version__
from extauthz.errors import ExtauthzError

BODY_CHUNK = 1024 * 1024
# Answers that another attempt may not get: the server is overloaded or restarting.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class FetchFailed(ExtauthzError):
    """A GET did not produce a usable answer. ``retryable`` when a later attempt may."""

    def __init__(self, problem: str, *, retryable: bool) -> None:
        self.retryable = retryable
        super().__init__(problem)


@dataclass(frozen=True, slots=True)
class Fetched:
    """A 200 with its body, or a 304 (``body`` empty)."""

    status: int
    headers: Message
    body: bytes


class HttpFetcher:
    def __init__(self, *, timeout: float, max_bytes: int, ca_file: Path | None = None) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),
            urllib.request.HTTPSHandler(context=context),
            _NoRedirect(),
        )

    def get(self, url: str, headers: dict[str, str] | None = None) -> Fetched:
        """GET ``url``. Returns a 200 or 304; raises FetchFailed naming the URL and problem."""
        request = urllib.request.Request(
            url,
            headers={"User-Agent": f"extauthz/{__version__}", **(headers or {})},
            method="GET",
        )
        deadline = time.monotonic() + self.timeout
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                body = self._read_body(response, deadline, url)
                return Fetched(response.status, response.headers, body)
        except urllib.error.HTTPError as err:
            err.close()
            if err.code == 304:
                return Fetched(304, err.headers, b"")
            raise FetchFailed(
                f"{url}: HTTP {err.code}", retryable=err.code in RETRY_STATUSES
            ) from err
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            reason = err.reason if isinstance(err, urllib.error.URLError) else err
            raise FetchFailed(f"{url}: {_describe(reason)}", retryable=True) from err

    def _read_body(self, response: Any, deadline: float, url: str) -> bytes:
        if response.status != 200:
            raise FetchFailed(f"{url}: HTTP {response.status}, expected 200", retryable=False)
        declared = response.headers.get("Content-Length")
        expected = int(declared) if declared is not None and declared.isdigit() else None
        if expected is not None and expected > self.max_bytes:
            raise FetchFailed(
                f"{url}: {expected} bytes is over the limit of {self.max_bytes}", retryable=False
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            if time.monotonic() > deadline:
                raise FetchFailed(f"{url}: body not received within the timeout", retryable=True)
            try:
                # read1: whatever has arrived, so the deadline is checked between arrivals.
                chunk = response.read1(min(BODY_CHUNK, self.max_bytes + 1 - size))
            except http.client.IncompleteRead as err:
                raise FetchFailed(
                    f"{url}: body cut short ({size + len(err.partial)} bytes received)",
                    retryable=True,
                ) from err
            if not chunk:
                break
            size += len(chunk)
            if size > self.max_bytes:
                raise FetchFailed(
                    f"{url}: body is over the limit of {self.max_bytes} bytes", retryable=False
                )
            chunks.append(chunk)
        if expected is not None and size != expected:
            raise FetchFailed(f"{url}: body cut short ({size} of {expected} bytes)", retryable=True)
        return b"".join(chunks)


def bearer_credential(file: Path | None, env: str | None) -> dict[str, str]:
    """The ``Authorization`` header for a credential kept in a file (re-read each time, so
    a rotated Secret is picked up) or an environment variable; empty when neither is set.
    Raises FetchFailed (not retryable) when the configured credential cannot be read."""
    if file is not None:
        try:
            secret = file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise FetchFailed(
                f"cannot read credentials_file {file}: {err}", retryable=False
            ) from err
        where = f"credentials_file {file}"
    elif env is not None:
        secret = os.environ.get(env, "").strip()
        where = f"environment variable {env}"
    else:
        return {}
    if not secret or not secret.isprintable():
        raise FetchFailed(f"{where} is empty or holds control characters", retryable=False)
    return {"Authorization": f"Bearer {secret}"}


def _describe(reason: object) -> str:
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, ssl.SSLError):
        return f"TLS error: {reason.reason or reason}"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Sources are configured exactly: a redirect is answered as the error it is here."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None
