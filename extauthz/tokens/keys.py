"""Issuer signing keys: JWKS documents parsed into verification keys, chosen by ``kid`` only.

Keys come from configuration, never from a token: ``jku``, ``x5u``, ``jwk`` and ``x5c``
headers are ignored by construction, because nothing here reads them (RFC 8725 §3.10).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidKeyError

from extauthz.errors import ConfigError

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)

# Which key each algorithm may be verified with (RFC 7518 §3, RFC 8037 §3.1).
_CURVE_OF_ALG = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


@dataclass(frozen=True, slots=True)
class VerificationKey:
    kid: str
    key: PublicKey
    # The JWK's own "alg", when it pins one; a token must then use exactly that.
    alg: str | None = None

    def fits(self, alg: str) -> bool:
        """Whether a token signed with ``alg`` may be verified with this key."""
        if self.alg is not None and self.alg != alg:
            return False
        if alg.startswith(("RS", "PS")):
            return isinstance(self.key, rsa.RSAPublicKey) and self.key.key_size >= 2048
        if alg in _CURVE_OF_ALG:
            return (
                isinstance(self.key, ec.EllipticCurvePublicKey)
                and self.key.curve.name == _CURVE_OF_ALG[alg]
            )
        if alg == "EdDSA":
            return isinstance(self.key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
        return False


@dataclass(frozen=True, slots=True)
class KeySet:
    """The keys one issuer signs with, by ``kid``."""

    issuer: str
    keys: Mapping[str, VerificationKey]
    source: str = ""


def parse_jwks(document: object, source: str) -> dict[str, VerificationKey]:
    """Parse a JWKS document into verification keys.

    Keys not meant for signatures (``use`` other than ``sig``) and symmetric keys are
    skipped. Raises ConfigError naming ``source`` and the offending key.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ConfigError(source, "keys", "a JWKS document must be an object with a 'keys' list")
    result: dict[str, VerificationKey] = {}
    for i, jwk in enumerate(document["keys"]):
        where = f"keys[{i}]"
        if not isinstance(jwk, dict):
            raise ConfigError(source, where, "must be a JSON object")
        if jwk.get("use", "sig") != "sig" or jwk.get("kty") == "oct":
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ConfigError(source, f"{where}.kid", "every signing key needs a 'kid'")
        if kid in result:
            raise ConfigError(source, f"{where}.kid", f"duplicate kid {kid!r}")
        if any(member in jwk for member in _PRIVATE_MEMBERS):
            raise ConfigError(source, where, "holds private key material; publish public keys")
        alg = jwk.get("alg")
        if alg is not None and not isinstance(alg, str):
            raise ConfigError(source, f"{where}.alg", "must be a string")
        result[kid] = VerificationKey(kid, _public_key(jwk, source, where), alg)
    return result


def _public_key(jwk: dict[str, Any], source: str, where: str) -> PublicKey:
    kty = jwk.get("kty")
    try:
        if kty == "RSA":
            key: object = RSAAlgorithm.from_jwk(jwk)
        elif kty == "EC":
            key = ECAlgorithm.from_jwk(jwk)
        elif kty == "OKP":
            key = OKPAlgorithm.from_jwk(jwk)
        else:
            raise ConfigError(source, f"{where}.kty", f"unsupported key type {kty!r}")
    except (InvalidKeyError, ValueError, TypeError, KeyError) as err:
        raise ConfigError(source, where, f"not a valid {kty} key: {err}") from err
    if not isinstance(
        key,
        rsa.RSAPublicKey
        | ec.EllipticCurvePublicKey
        | ed25519.Ed25519PublicKey
        | ed448.Ed448PublicKey,
    ):
        raise ConfigError(source, where, "is not a public key")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise ConfigError(source, where, f"RSA key of {key.key_size} bits; at least 2048 needed")
    return key


def load_jwks_file(issuer: str, path: Path) -> KeySet:
    """Read a JWKS file for ``issuer``. Raises ConfigError naming the file and the key."""
    try:
        document = json.loads(path.read_bytes())
    except OSError as err:
        raise ConfigError(str(path), "", f"cannot read JWKS: {err.strerror or err}") from err
    except ValueError as err:
        raise ConfigError(str(path), "", f"not valid JSON: {err}") from err
    keys = parse_jwks(document, str(path))
    if not keys:
        raise ConfigError(str(path), "keys", "holds no usable signing key")
    return KeySet(issuer, keys, str(path))
