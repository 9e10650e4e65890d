"""Access-token verification, in the fixed order the contract gives.

well-formed → ``iss`` configured → ``alg`` allowed → ``typ`` → key by ``kid`` → signature →
required claims → ``exp`` → ``nbf``/``iat`` → lifetime → ``aud``.

The order makes one token with several faults always get the same reason. Header fields
are attacker input: they select among configured keys and algorithms, never add to them
(RFC 8725 §3.1, §3.10). Signatures are checked with PyJWT's algorithm objects over the
``cryptography`` library. ``now`` is passed in: nothing here reads a clock.
"""

from __future__ import annotations

import binascii
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from jwt.algorithms import Algorithm, get_default_algorithms

from extauthz.config import SUPPORTED_ALGORITHMS, IssuerConfig, TokenPolicy
from extauthz.errors import Reason, ServiceUnavailable, TokenRejected
from extauthz.strict_json import loads_strict
from extauthz.tokens.keys import KeySet

# Real access tokens are a few kB; anything far bigger is garbage or an attack on parsing.
MAX_TOKEN_LENGTH = 16 * 1024
_B64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_B64URL_VALUE = {char: value for value, char in enumerate(_B64URL)}
_TO_STANDARD_ALPHABET = bytes.maketrans(b"-_", b"+/")
# By how many characters a part runs past whole groups of 4 (1 is never valid).
_PADDING = {0: b"", 2: b"==", 3: b"="}
# Header parts, as sent, of tokens whose signature verified, and the header each parses to
# (read only: it is shared by every token sent under it). Written by one thread at a time.
_SIGNED_HEADERS: dict[str, dict[str, Any]] = {}
_MAX_SIGNED_HEADERS = 256
_ALGORITHMS: dict[str, Algorithm] = {
    name: alg for name, alg in get_default_algorithms().items() if name in SUPPORTED_ALGORITHMS
}


@dataclass(frozen=True, slots=True)
class SignedToken:
    """A token whose signature verified against a configured key of its issuer."""

    header: Mapping[str, Any]
    claims: Mapping[str, Any]
    issuer: str


def bearer_token(authorization: str | None) -> str:
    """The token from an ``Authorization: Bearer`` header (RFC 6750 §2.1).

    Raises TokenRejected(token_missing) when there is no bearer credential at all, and
    TokenRejected(token_malformed) for a bearer header that carries no usable token.
    """
    if not authorization:
        raise TokenRejected(Reason.TOKEN_MISSING, "no authorization header")
    scheme, _, rest = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise TokenRejected(Reason.TOKEN_MISSING, "authorization header is not a bearer token")
    token = rest.strip()
    if not token:
        raise TokenRejected(Reason.TOKEN_MALFORMED, "empty bearer token")
    return token


def verify_signature(
    token: str,
    issuers: Mapping[str, IssuerConfig],
    key_sets: Mapping[str, KeySet],
    policy: TokenPolicy,
) -> SignedToken:
    """Check everything up to and including the signature.

    Raises TokenRejected with the reason for the first failing step, or
    ServiceUnavailable(keys_unavailable) when the issuer has no keys loaded.
    """
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenRejected(Reason.TOKEN_MALFORMED, f"token longer than {MAX_TOKEN_LENGTH} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenRejected(Reason.TOKEN_MALFORMED, "not three dot-separated parts")
    # An issuer signs all its tokens under a handful of headers: one seen in a token that
    # verified is parsed already (both ways).
    known_header = _SIGNED_HEADERS.get(parts[0])
    header_raw = b"" if known_header is not None else _b64decode(parts[0], "header")
    claims_raw = _b64decode(parts[1], "payload")
    # Until the signature verifies, anyone can send this: parse at C speed only (orjson,
    # which accepts no document that the strict parser would, and refuses NaN, lone
    # surrogates and a byte-order mark besides). The strict parse (a Python hook per
    # object) runs on signed content alone, below.
    header = (
        known_header
        if known_header is not None
        else _json_object(header_raw, "header", strict=False)
    )
    claims = _json_object(claims_raw, "payload", strict=False)
    signature = _b64decode(parts[2], "signature")
    if "crit" in header:
        # We understand no JWS extensions, so any critical one must fail (RFC 7515 §4.1.11).
        raise TokenRejected(Reason.TOKEN_MALFORMED, "unsupported critical header")

    issuer = claims.get("iss")
    issuer_config = issuers.get(issuer) if isinstance(issuer, str) else None
    if issuer_config is None:
        raise TokenRejected(Reason.TOKEN_WRONG_ISSUER, "issuer is not configured")

    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in issuer_config.algorithms:
        raise TokenRejected(Reason.TOKEN_ALGORITHM_NOT_ALLOWED, f"alg {alg!r} not allowed")

    if policy.typ is not None:
        typ = header.get("typ")
        media_type = typ.lower().removeprefix("application/") if isinstance(typ, str) else None
        if media_type != policy.typ:
            raise TokenRejected(Reason.TOKEN_WRONG_TYPE, f"typ {typ!r} is not {policy.typ}")

    key_set = key_sets.get(issuer_config.issuer)
    if key_set is None or not key_set.keys:
        raise ServiceUnavailable(
            Reason.KEYS_UNAVAILABLE,
            "no keys loaded for the issuer",
            refetch_keys_of=issuer_config.issuer,
        )
    kid = header.get("kid")
    key = key_set.keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise TokenRejected(
            Reason.KEY_UNKNOWN,
            "kid does not name a configured key",
            # Only a kid that could be a new key is worth asking the issuer about.
            refetch_keys_of=issuer_config.issuer if isinstance(kid, str) and kid else None,
        )
    if not key.fits(alg):
        raise TokenRejected(Reason.TOKEN_ALGORITHM_NOT_ALLOWED, f"key {kid!r} is not for {alg}")

    signing_input = token[: len(parts[0]) + 1 + len(parts[1])].encode("ascii")
    if not signature or not _verify(_ALGORITHMS[alg], signing_input, key.key, signature):
        raise TokenRejected(Reason.TOKEN_INVALID_SIGNATURE, "signature does not verify")
    if known_header is None:
        _json_object(header_raw, "header", strict=True)
    _json_object(claims_raw, "payload", strict=True)
    if known_header is None:
        # Only a header that a configured key signed gets here, so the entries are few.
        if len(_SIGNED_HEADERS) >= _MAX_SIGNED_HEADERS:
            _SIGNED_HEADERS.clear()
        _SIGNED_HEADERS[parts[0]] = header
    return SignedToken(header, claims, issuer_config.issuer)


class ClaimTimes(NamedTuple):
    """A token's times, from a ``validate_claims`` it passed for ``audience``."""

    audience: str | None
    exp: float
    nbf: float | None
    iat: float


def validate_claims(
    claims: Mapping[str, Any], policy: TokenPolicy, audience: str | None, now: float
) -> ClaimTimes:
    """Check time claims, lifetime and audience of a signature-verified token.

    ``audience`` None skips the audience step (no resource matched the host, so the
    request is denied as route_unknown later anyway). Raises TokenRejected. Returns the
    token's times, which is all ``validate_claim_times`` needs to check it again.
    """
    for name in ("exp", "iat", "sub"):
        if name not in claims:
            raise TokenRejected(Reason.TOKEN_CLAIM_MISSING, f"no {name!r} claim")
    exp, iat = _number(claims, "exp"), _number(claims, "iat")
    if not isinstance(claims["sub"], str) or not claims["sub"]:
        raise TokenRejected(Reason.TOKEN_MALFORMED, "'sub' must be a non-empty string")
    _check_expiry(exp, policy, now)
    nbf = _number(claims, "nbf") if "nbf" in claims else None
    _check_started(nbf, iat, policy, now)
    if exp - iat > policy.max_lifetime:
        raise TokenRejected(Reason.TOKEN_LIFETIME_TOO_LONG, "exp - iat exceeds max_lifetime")
    if audience is not None and not _has_audience(claims.get("aud"), audience):
        raise TokenRejected(Reason.TOKEN_WRONG_AUDIENCE, "token is not for this resource")
    if "cnf" in claims:
        # A sender-constrained token (DPoP, RFC 9449; mTLS, RFC 8705) presented as a plain
        # bearer token is exactly what a thief would send: refuse it until we verify proofs.
        raise TokenRejected(Reason.TOKEN_BINDING_UNSUPPORTED, "token is bound to a key (cnf)")
    return ClaimTimes(audience, exp, nbf, iat)


def validate_claim_times(times: ClaimTimes, policy: TokenPolicy, now: float) -> None:
    """``validate_claims`` again, for a token that passed it under this policy and for
    ``times.audience``. Claims never change and its other steps passed, so only the steps
    that read the clock are left, in the same order with the same reasons."""
    _check_expiry(times.exp, policy, now)
    _check_started(times.nbf, times.iat, policy, now)


def _check_expiry(exp: float, policy: TokenPolicy, now: float) -> None:
    if now >= exp + policy.leeway:
        raise TokenRejected(Reason.TOKEN_EXPIRED, "token has expired")


def _check_started(nbf: float | None, iat: float, policy: TokenPolicy, now: float) -> None:
    if nbf is not None and now + policy.leeway < nbf:
        raise TokenRejected(Reason.TOKEN_NOT_YET_VALID, "nbf is in the future")
    if now + policy.leeway < iat:
        raise TokenRejected(Reason.TOKEN_NOT_YET_VALID, "iat is in the future")


def _verify(algorithm: Algorithm, message: bytes, key: Any, signature: bytes) -> bool:
    try:
        return bool(algorithm.verify(message, key, signature))
    except (ValueError, TypeError):
        return False


def _b64decode(part: str, what: str) -> bytes:
    raw = part.encode("ascii", "replace")
    # base64url without padding only (RFC 7515 §2); Python's decoder alone is too lenient.
    # translate() deletes every alphabet byte at C speed; anything left is not base64url.
    if raw.translate(None, _B64URL) or len(raw) % 4 == 1:
        raise TokenRejected(Reason.TOKEN_MALFORMED, f"{what} is not base64url")
    # Only the canonical spelling: unused trailing bits would give one token several forms.
    # They are the low bits of the last character: 4 of them when 2 characters are left
    # over from whole groups of 4, 2 when 3 are (RFC 4648 §3.5).
    left_over = len(raw) % 4
    if left_over and _B64URL_VALUE[raw[-1]] & (0x0F if left_over == 2 else 0x03):
        raise TokenRejected(Reason.TOKEN_MALFORMED, f"{what} is not canonical base64url")
    try:
        # What urlsafe_b64decode does, without its layers: only alphabet bytes are left.
        return binascii.a2b_base64(raw.translate(_TO_STANDARD_ALPHABET) + _PADDING[left_over])
    except (binascii.Error, ValueError) as err:
        raise TokenRejected(Reason.TOKEN_MALFORMED, f"{what} is not base64url") from err


def _json_object(raw: bytes, what: str, *, strict: bool) -> dict[str, Any]:
    try:
        value = loads_strict(raw) if strict else orjson.loads(raw)
    except (ValueError, RecursionError) as err:
        raise TokenRejected(Reason.TOKEN_MALFORMED, f"{what} is not valid JSON") from err
    if not isinstance(value, dict):
        raise TokenRejected(Reason.TOKEN_MALFORMED, f"{what} is not a JSON object")
    return value


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRejected(Reason.TOKEN_MALFORMED, f"{name!r} must be a number")
    try:
        number = float(value)  # a huge JSON integer overflows here
    except OverflowError as err:
        raise TokenRejected(Reason.TOKEN_MALFORMED, f"{name!r} is out of range") from err
    if not math.isfinite(number):
        raise TokenRejected(Reason.TOKEN_MALFORMED, f"{name!r} must be finite")
    return number


def _has_audience(aud: object, audience: str) -> bool:
    if isinstance(aud, str):
        return aud == audience
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return audience in aud
    if aud is None:
        return False
    raise TokenRejected(Reason.TOKEN_MALFORMED, "'aud' must be a string or a list of strings")
