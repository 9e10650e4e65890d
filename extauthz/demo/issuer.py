"""A throwaway local token issuer for the demo and the tests.

It makes fresh key pairs in memory (RSA, EC P-256, Ed25519), publishes their public halves
as a JWKS file, and mints RFC 9068 access tokens with PyJWT. Keys are never written to disk
except the public JWKS. Not for production: a real deployment trusts a real IdP.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

_ALG_OF_KIND = {"rsa": "RS256", "ec": "ES256", "ed25519": "EdDSA"}


def generate_key(kind: str) -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key kind {kind!r}")


def public_jwk(key: PrivateKey, kid: str) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    return {**jwk, "kid": kid, "use": "sig"}


class LocalIssuer:
    """An issuer with one key of each kind, kids ``rsa-1``, ``ec-1``, ``ed25519-1``."""

    def __init__(self, issuer: str = "https://idp.example.test") -> None:
        self.issuer = issuer
        self.keys: dict[str, PrivateKey] = {
            f"{kind}-1": generate_key(kind) for kind in ("rsa", "ec", "ed25519")
        }

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(key, kid) for kid, key in self.keys.items()]}

    def write_jwks(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.jwks(), indent=2) + "\n")
        return path

    def token(
        self,
        *,
        sub: str,
        audience: str | list[str],
        scope: str | None = None,
        client_id: str | None = None,
        act: Mapping[str, Any] | None = None,
        kid: str = "rsa-1",
        lifetime: float = 300,
        now: float | None = None,
        header: Mapping[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """Mint an access token; ``claims`` set or (with value None) remove any claim."""
        issued = time.time() if now is None else now
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": audience,
            "iat": int(issued),
            "exp": int(issued + lifetime),
            "jti": uuid.uuid4().hex,
        }
        if scope is not None:
            payload["scope"] = scope
        if client_id is not None:
            payload["client_id"] = client_id
        if act is not None:
            payload["act"] = dict(act)
        for name, value in claims.items():
            if value is None:
                payload.pop(name, None)
            else:
                payload[name] = value
        alg = _ALG_OF_KIND[kid.rsplit("-", 1)[0]]
        headers = {"typ": "at+jwt", "kid": kid, **(header or {})}
        return jwt.encode(payload, self.keys[kid], algorithm=alg, headers=headers)
