"""Token attacks from RFC 8725 and known JWT library CVEs, through the whole Check.

Each case is a token an attacker can make without the issuer's private keys (or, for the
duplicate-member and shape cases, one the issuer was tricked into signing), sent through
``CheckHandler.check`` on the example policy. Each must get exactly its reason code, and the
work it causes is bounded by counting, not by timing: a token whose ``alg`` or ``kid`` does
not select a configured key costs no signature verification at all, any other at most one.
After the whole suite the service still allows a valid request.

tests/test_tokens_verify.py covers the verifier's steps one by one; this file is the
catalogue of named attacks, end to end.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from envoy.service.auth.v3 import external_auth_pb2
from helpers import ISSUER
from hostile import (
    ALG_OF_KID,
    NOW,
    ServiceHarness,
    b64decode,
    b64url,
    check_for,
    claims,
    forge,
    forge_raw,
    header,
    part,
    sign,
)
from jwt import algorithms as jwt_algorithms
from local_http import LocalHttpServer, Reply, local_http_server

from extauthz.demo.issuer import LocalIssuer, public_jwk
from extauthz.errors import Reason
from extauthz.feed.snapshot import FeedSnapshot
from extauthz.tokens.keys import KeySet
from extauthz.tokens.verify import MAX_TOKEN_LENGTH

# Order of the P-256 group (FIPS 186-4 D.1.2.3): r and s must be in [1, n-1].
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
# Reasons decided before any key is tried: the token never reaches a signature check.
BEFORE_SIGNATURE = {
    Reason.TOKEN_ALGORITHM_NOT_ALLOWED,
    Reason.KEY_UNKNOWN,
    Reason.TOKEN_WRONG_ISSUER,
    Reason.TOKEN_WRONG_TYPE,
}


# --- what an attacker has ----------------------------------------------------------------


@dataclass(frozen=True)
class Kit:
    """The trusted issuer's private keys (to make the valid parts of tokens), the
    attacker's own keys, a live key server the attacker controls, and its certificate."""

    keys: dict[str, Any]
    attacker_ec: ec.EllipticCurvePrivateKey
    attacker_rsa: rsa.RSAPrivateKey
    attacker_cert_b64: str
    evil: LocalHttpServer

    def public_bytes(self, kid: str, encoding: Encoding, fmt: PublicFormat) -> bytes:
        return bytes(self.keys[kid].public_key().public_bytes(encoding, fmt))

    def signed(self, kid: str = "rsa-1", *, alg: str | None = None, **overrides: Any) -> str:
        """A token signed with the trusted key ``kid``; ``hdr_<name>`` overrides a header
        member, anything else a claim."""
        hdr = {k[4:]: v for k, v in overrides.items() if k.startswith("hdr_")}
        body = {k: v for k, v in overrides.items() if not k.startswith("hdr_")}
        alg = alg or ALG_OF_KID[kid]
        return forge(header(**{"alg": alg, "kid": kid, **hdr}), claims(**body), self.keys[kid])

    def es256(self, signature: bytes, **body: Any) -> str:
        return forge(header(alg="ES256", kid="ec-1"), claims(**body), signature=signature)

    def good_es256_rs(self) -> tuple[int, int]:
        raw = b64decode(self.signed("ec-1").split(".")[2])
        return int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")


def _self_signed_cert(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.example.test")])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def evil_server() -> Iterator[LocalHttpServer]:
    with local_http_server() as server:
        yield server


@pytest.fixture(scope="module")
def kit(local_issuer: LocalIssuer, evil_server: LocalHttpServer) -> Kit:
    attacker_ec = ec.generate_private_key(ec.SECP256R1())
    attacker_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _self_signed_cert(attacker_ec)
    jwks = {"keys": [public_jwk(attacker_ec, "attacker-1"), public_jwk(attacker_ec, "ec-1")]}
    evil_server.replies["/jwks.json"] = Reply(body=json.dumps(jwks).encode())
    evil_server.replies["/cert.pem"] = Reply(body=cert.public_bytes(Encoding.PEM))
    return Kit(
        keys=dict(local_issuer.keys),
        attacker_ec=attacker_ec,
        attacker_rsa=attacker_rsa,
        attacker_cert_b64=b64url(cert.public_bytes(Encoding.DER)),
        evil=evil_server,
    )


@pytest.fixture
def harness(local_issuer: LocalIssuer, tmp_path: Path) -> ServiceHarness:
    return ServiceHarness(tmp_path, local_issuer)


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every signature verification PyJWT's algorithm objects do, by class name."""
    seen: list[str] = []
    for cls in (
        jwt_algorithms.RSAAlgorithm,
        jwt_algorithms.RSAPSSAlgorithm,
        jwt_algorithms.ECAlgorithm,
        jwt_algorithms.OKPAlgorithm,
        jwt_algorithms.HMACAlgorithm,
        jwt_algorithms.NoneAlgorithm,
    ):
        original = cls.verify

        def counting(
            self: Any, msg: bytes, key: Any, sig: bytes, _o: Any = original, _c: type = cls
        ) -> bool:
            seen.append(_c.__name__)
            return bool(_o(self, msg, key, sig))

        monkeypatch.setattr(cls, "verify", counting)
    return seen


# --- building blocks for the attacks -----------------------------------------------------


def hmac_token(alg: str, secret: bytes, kid: str | None = "rsa-1") -> str:
    """HS256/384/512 over a normal token, keyed with ``secret`` (RFC 8725 §2.1, §3.1)."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    hdr = header(alg=alg, kid=kid)
    signing_input = f"{part(hdr)}.{part(claims())}"
    return forge(hdr, claims(), signature=hmac.new(secret, signing_input.encode(), digest).digest())


def unsigned(alg: object, signature: str, kit: Kit) -> str:
    hdr = {"alg": alg, "typ": "at+jwt", "kid": "rsa-1"}
    signing_input = f"{part(hdr)}.{part(claims(sub='admin', scope='tickets:*'))}"
    sig = {
        "absent": "",
        "garbage": b64url(b"\x01" * 64),
        # A real RS256 signature of this very input: "none" must not fall back to verifying.
        "valid_rs256": b64url(sign(signing_input, "RS256", kit.keys["rsa-1"])),
    }[signature]
    return f"{signing_input}.{sig}"


def kid_token(kit: Kit, kid: object) -> str:
    """Correctly signed with rsa-1, but naming the key ``kid`` (any JSON value)."""
    hdr = {"alg": "RS256", "typ": "at+jwt", "kid": kid}
    return forge(hdr, claims(), kit.keys["rsa-1"])


def attacker_signed(kit: Kit, kid: str | None, **hdr: Any) -> str:
    """Signed with the attacker's own EC key, under a header pointing wherever it likes."""
    head = header(alg="ES256", kid=kid, **hdr)
    return forge(head, claims(sub="admin", scope="tickets:*"), kit.attacker_ec)


def with_part(token: str, index: int, change: Callable[[str], str]) -> str:
    parts = token.split(".")
    parts[index] = change(parts[index])
    return ".".join(parts)


def non_canonical(text: str) -> str:
    """The same bytes spelt with non-zero unused trailing bits (RFC 4648 §3.5)."""
    assert len(text) % 4 in (2, 3), "no unused bits to set"
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(text[-1])
    return text[:-1] + alphabet[last | 1]


def with_unused_bits(token: str, index: int, kit: Kit) -> str:
    """Make part ``index`` non-canonical; pad JSON with a space until it has unused bits."""
    parts = token.split(".")
    if len(parts[index]) % 4 == 0:
        raw = b64decode(parts[index]) + b" "
        parts[index] = b64url(raw)
        if index < 2:  # re-sign the changed header or payload so only the spelling is wrong
            signing_input = f"{parts[0]}.{parts[1]}"
            parts[2] = b64url(sign(signing_input, "RS256", kit.keys["rsa-1"]))
    parts[index] = non_canonical(parts[index])
    return ".".join(parts)


def truncated(text: str) -> str:
    """Cut to a shorter multiple of four characters: still canonical base64url."""
    return text[: (len(text) // 2) // 4 * 4]


def duplicated(kit: Kit, head: str, body: str) -> str:
    return forge_raw(head, body, "RS256", kit.keys["rsa-1"])


HEAD = json.dumps(header())


def body_json(**extra: Any) -> str:
    return json.dumps(claims(**extra))


def append_members(obj_json: str, members: str) -> str:
    """Add raw ``"name": value`` text at the end of a JSON object's text."""
    return obj_json[:-1] + ", " + members + "}"


def nested_act(depth: int) -> dict[str, Any]:
    act: dict[str, Any] = {"sub": "prior-0"}
    for i in range(1, depth - 1):
        act = {"sub": f"prior-{i}", "act": act}
    return {"sub": "support-agent", "act": act}


def deep_act_text(depth: int) -> str:
    """``{"act":{"act":...}}`` ``depth`` levels deep, as raw JSON text."""
    return '{"act":' * depth + "{}" + "}" * depth


def padded_to(kit: Kit, length: int, **extra: Any) -> str:
    """A token signed with ed25519-1 as close to ``length`` characters as a pad claim
    allows (Ed25519: small signatures, so most of the length is the payload)."""
    base = len(kit.signed("ed25519-1", pad="", **extra))
    pad = "x" * max(0, (length - base) * 3 // 4)
    token = kit.signed("ed25519-1", pad=pad, **extra)
    while len(token) > length:
        pad = pad[:-1]
        token = kit.signed("ed25519-1", pad=pad, **extra)
    return token


def id_token_claims(**extra: Any) -> dict[str, Any]:
    """What an OpenID Connect ID token carries: aud is the client, nonce, at_hash..."""
    return {
        **claims(aud="support-agent", azp="support-agent", client_id=None, scope=None),
        "nonce": "n-0S6_WzA2Mj",
        "auth_time": int(NOW) - 60,
        "at_hash": "77QmUPtjPfzWtF2AnpK9RQ",
        **extra,
    }


def ecdsa_der_signature(kit: Kit) -> bytes:
    return bytes(encode_dss_signature(*kit.good_es256_rs()))


# --- the catalogue ------------------------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    name: str
    expect: Reason
    # Either a token (sent as Bearer) or a whole Authorization header value.
    token: Callable[[Kit], str]
    as_header: bool = False
    # Meant to be longer than MAX_TOKEN_LENGTH; every other token must fit, so that its
    # reason is not the length check's by accident.
    oversized: bool = False


def _unsigned_by(alg: str, signature: str, kit: Kit) -> str:
    return unsigned(alg, signature, kit)


def _hmac_with_rsa_public(alg: str, fmt: tuple[Encoding, PublicFormat], kit: Kit) -> str:
    return hmac_token(alg, kit.public_bytes("rsa-1", *fmt))


def _hmac_with_rsa_jwk(alg: str, kit: Kit) -> str:
    return hmac_token(alg, json.dumps(public_jwk(kit.keys["rsa-1"], "rsa-1")).encode())


def _signed_with(claim: str, value: object, kit: Kit) -> str:
    overrides: dict[str, Any] = {claim: value}
    return kit.signed(**overrides)


def _rs(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


A = Attack
NOT_ALLOWED = Reason.TOKEN_ALGORITHM_NOT_ALLOWED
MALFORMED = Reason.TOKEN_MALFORMED
BAD_SIG = Reason.TOKEN_INVALID_SIGNATURE
SPKI = (Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
DER = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
PKCS1 = (Encoding.PEM, PublicFormat.PKCS1)
OPENSSH = (Encoding.OpenSSH, PublicFormat.OpenSSH)

ATTACKS: list[Attack] = [
    # alg: none (RFC 8725 §2.1; CVE-2015-2951 and the many libraries after it)
    *(
        A(f"alg_{alg}_{sig}_signature", NOT_ALLOWED, partial(_unsigned_by, alg, sig))
        for alg in ("none", "None", "NONE", "nOnE")
        for sig in ("absent", "garbage", "valid_rs256")
    ),
    A("alg_empty_string", NOT_ALLOWED, lambda k: unsigned("", "absent", k)),
    A("alg_null", NOT_ALLOWED, lambda k: unsigned(None, "valid_rs256", k)),
    A("alg_lower_case_rs256", NOT_ALLOWED, lambda k: unsigned("rs256", "valid_rs256", k)),
    A("alg_with_trailing_space", NOT_ALLOWED, lambda k: unsigned("RS256 ", "valid_rs256", k)),
    A("alg_a_list", NOT_ALLOWED, lambda k: unsigned(["RS256"], "valid_rs256", k)),
    A("alg_supported_but_not_allowed_ps256", NOT_ALLOWED, lambda k: k.signed(alg="PS256")),
    # HMAC keyed with the issuer's public key (CVE-2015-9235, CVE-2016-10555, CVE-2017-11424,
    # CVE-2022-29217 OpenSSH keys, CVE-2023-48223 PEM with leading whitespace, CVE-2024-33663)
    *(
        A(
            f"{alg}_keyed_with_rsa_public_{form}",
            NOT_ALLOWED,
            partial(_hmac_with_rsa_public, alg, fmt),
        )
        for alg in ("HS256", "HS384", "HS512")
        for form, fmt in (("spki_pem", SPKI), ("pkcs1_pem", PKCS1), ("der", DER))
    ),
    *(
        A(
            f"{alg}_keyed_with_rsa_public_jwk",
            NOT_ALLOWED,
            partial(_hmac_with_rsa_jwk, alg),
        )
        for alg in ("HS256", "HS384", "HS512")
    ),
    A(
        "HS256_keyed_with_pem_with_leading_newline",
        NOT_ALLOWED,
        lambda k: hmac_token("HS256", b"\n" + k.public_bytes("rsa-1", *SPKI)),
    ),
    A(
        "HS256_keyed_with_ec_public_pem",
        NOT_ALLOWED,
        lambda k: hmac_token("HS256", k.public_bytes("ec-1", *SPKI), kid="ec-1"),
    ),
    A(
        "HS256_keyed_with_ec_public_openssh",
        NOT_ALLOWED,
        lambda k: hmac_token("HS256", k.public_bytes("ec-1", *OPENSSH), kid="ec-1"),
    ),
    A(
        "HS256_keyed_with_ed25519_public_openssh",
        NOT_ALLOWED,
        lambda k: hmac_token("HS256", k.public_bytes("ed25519-1", *OPENSSH), kid="ed25519-1"),
    ),
    A("HS256_without_kid", NOT_ALLOWED, lambda k: hmac_token("HS256", b"secret", kid=None)),
    A(
        "HS256_kid_dev_null_empty_secret",
        NOT_ALLOWED,
        lambda k: hmac_token("HS256", b"", kid="../../../../../../dev/null"),
    ),
    # key confusion across key types: the kid names a key that is not for this alg
    A("RS256_kid_of_an_ec_key", NOT_ALLOWED, lambda k: k.signed("rsa-1", hdr_kid="ec-1")),
    A("RS256_kid_of_an_ed25519_key", NOT_ALLOWED, lambda k: k.signed("rsa-1", hdr_kid="ed25519-1")),
    A("ES256_kid_of_an_rsa_key", NOT_ALLOWED, lambda k: k.signed("ec-1", hdr_kid="rsa-1")),
    A("ES256_kid_of_an_ed25519_key", NOT_ALLOWED, lambda k: k.signed("ec-1", hdr_kid="ed25519-1")),
    A("EdDSA_kid_of_an_ec_key", NOT_ALLOWED, lambda k: k.signed("ed25519-1", hdr_kid="ec-1")),
    A("EdDSA_kid_of_an_rsa_key", NOT_ALLOWED, lambda k: k.signed("ed25519-1", hdr_kid="rsa-1")),
    # kid is attacker input: it only ever selects among configured keys (RFC 8725 §3.10)
    A("kid_path_traversal_dev_null", Reason.KEY_UNKNOWN, lambda k: kid_token(k, "../../dev/null")),
    A("kid_absolute_path", Reason.KEY_UNKNOWN, lambda k: kid_token(k, "/etc/passwd")),
    A("kid_file_url", Reason.KEY_UNKNOWN, lambda k: kid_token(k, "file:///dev/null")),
    A("kid_sql_injection", Reason.KEY_UNKNOWN, lambda k: kid_token(k, "' OR '1'='1")),
    A(
        "kid_sql_union",
        Reason.KEY_UNKNOWN,
        lambda k: kid_token(k, "x' UNION SELECT 'rsa-1' -- "),
    ),
    A("kid_10_kb_long", Reason.KEY_UNKNOWN, lambda k: kid_token(k, "a" * 10_240)),
    A(
        "kid_configured_plus_10_kb",
        Reason.KEY_UNKNOWN,
        lambda k: kid_token(k, "rsa-1" + " " * 10_240),
    ),
    A("kid_empty", Reason.KEY_UNKNOWN, lambda k: kid_token(k, "")),
    A("kid_null", Reason.KEY_UNKNOWN, lambda k: kid_token(k, None)),
    A("kid_a_number", Reason.KEY_UNKNOWN, lambda k: kid_token(k, 1)),
    A("kid_true", Reason.KEY_UNKNOWN, lambda k: kid_token(k, True)),
    A("kid_a_list", Reason.KEY_UNKNOWN, lambda k: kid_token(k, ["rsa-1"])),
    A("kid_an_object", Reason.KEY_UNKNOWN, lambda k: kid_token(k, {"kid": "rsa-1"})),
    A("kid_with_nul", Reason.KEY_UNKNOWN, lambda k: kid_token(k, "rsa-1\x00")),
    A("kid_homoglyph", Reason.KEY_UNKNOWN, lambda k: kid_token(k, "rs\u0430-1")),
    # keys named by the token: jku / x5u (SSRF and key injection), embedded jwk and x5c
    # (CVE-2018-0114), all signed with the attacker's own key
    A(
        "jku_to_attacker_jwks_own_kid",
        Reason.KEY_UNKNOWN,
        lambda k: attacker_signed(k, "attacker-1", jku=k.evil.url("/jwks.json")),
    ),
    A(
        "jku_to_attacker_jwks_configured_kid",
        BAD_SIG,
        lambda k: attacker_signed(k, "ec-1", jku=k.evil.url("/jwks.json")),
    ),
    A(
        "jku_without_kid",
        Reason.KEY_UNKNOWN,
        lambda k: attacker_signed(k, None, jku=k.evil.url("/jwks.json")),
    ),
    A(
        "x5u_to_attacker_cert_own_kid",
        Reason.KEY_UNKNOWN,
        lambda k: attacker_signed(k, "attacker-1", x5u=k.evil.url("/cert.pem")),
    ),
    A(
        "x5u_to_attacker_cert_configured_kid",
        BAD_SIG,
        lambda k: attacker_signed(k, "ec-1", x5u=k.evil.url("/cert.pem")),
    ),
    A(
        "embedded_jwk_without_kid",
        Reason.KEY_UNKNOWN,
        lambda k: attacker_signed(k, None, jwk=public_jwk(k.attacker_ec, "attacker-1")),
    ),
    A(
        "embedded_jwk_own_kid",
        Reason.KEY_UNKNOWN,
        lambda k: attacker_signed(k, "attacker-1", jwk=public_jwk(k.attacker_ec, "attacker-1")),
    ),
    A(
        "embedded_jwk_configured_kid",
        BAD_SIG,
        lambda k: attacker_signed(k, "ec-1", jwk=public_jwk(k.attacker_ec, "ec-1")),
    ),
    A(
        "embedded_rsa_jwk_configured_kid",
        BAD_SIG,
        lambda k: forge(
            header(kid="rsa-1", jwk=public_jwk(k.attacker_rsa, "rsa-1")),
            claims(sub="admin"),
            k.attacker_rsa,
        ),
    ),
    A(
        "x5c_self_signed_without_kid",
        Reason.KEY_UNKNOWN,
        lambda k: attacker_signed(k, None, x5c=[k.attacker_cert_b64]),
    ),
    A(
        "x5c_self_signed_configured_kid",
        BAD_SIG,
        lambda k: attacker_signed(k, "ec-1", x5c=[k.attacker_cert_b64]),
    ),
    # critical extensions we do not understand (RFC 7515 §4.1.11), signed or not
    A("crit_exp", MALFORMED, lambda k: k.signed(hdr_crit=["exp"], hdr_exp=int(NOW) + 300)),
    A("crit_b64_false", MALFORMED, lambda k: k.signed(hdr_crit=["b64"], hdr_b64=False)),
    A("crit_unknown_uri", MALFORMED, lambda k: k.signed(hdr_crit=["https://evil.test/ext"])),
    A("crit_empty_list", MALFORMED, lambda k: k.signed(hdr_crit=[])),
    A("crit_a_string", MALFORMED, lambda k: k.signed(hdr_crit="exp")),
    A(
        "crit_on_an_unsigned_token",
        MALFORMED,
        lambda k: f"{part({'alg': 'none', 'crit': ['x'], 'x': 1})}.{part(claims())}.",
    ),
    # invalid ECDSA signatures: CVE-2022-21449 ("psychic signatures") and friends
    A("psychic_signature_all_zero", BAD_SIG, lambda k: k.es256(b"\x00" * 64, sub="admin")),
    A("ecdsa_r_zero", BAD_SIG, lambda k: k.es256(_rs(0, k.good_es256_rs()[1]))),
    A("ecdsa_s_zero", BAD_SIG, lambda k: k.es256(_rs(k.good_es256_rs()[0], 0))),
    A("ecdsa_r_and_s_equal_n", BAD_SIG, lambda k: k.es256(_rs(P256_N, P256_N))),
    A("ecdsa_r_equals_n", BAD_SIG, lambda k: k.es256(_rs(P256_N, k.good_es256_rs()[1]))),
    A("ecdsa_s_equals_n", BAD_SIG, lambda k: k.es256(_rs(k.good_es256_rs()[0], P256_N))),
    A(
        "ecdsa_r_plus_n_beyond_the_group",
        BAD_SIG,
        lambda k: k.es256(_rs(2**256 - 1, k.good_es256_rs()[1])),
    ),
    A("ecdsa_r_and_s_one", BAD_SIG, lambda k: k.es256(_rs(1, 1))),
    A("ecdsa_all_ones", BAD_SIG, lambda k: k.es256(b"\xff" * 64)),
    A(
        "ecdsa_r_and_s_swapped",
        BAD_SIG,
        lambda k: k.es256(_rs(k.good_es256_rs()[1], k.good_es256_rs()[0])),
    ),
    A("ecdsa_one_byte_short", BAD_SIG, lambda k: k.es256(_rs(*k.good_es256_rs())[:63])),
    A("ecdsa_one_byte_long", BAD_SIG, lambda k: k.es256(_rs(*k.good_es256_rs()) + b"\x00")),
    A("ecdsa_p521_length", BAD_SIG, lambda k: k.es256(b"\x00" + _rs(*k.good_es256_rs()) * 2)),
    A("ecdsa_der_encoded", BAD_SIG, lambda k: k.es256(ecdsa_der_signature(k))),
    A(
        "ecdsa_der_encoded_zero",
        BAD_SIG,
        lambda k: k.es256(bytes(encode_dss_signature(0, 0))),
    ),
    A("ecdsa_empty_signature", BAD_SIG, lambda k: k.es256(b"")),
    A(
        "eddsa_all_zero_signature",
        BAD_SIG,
        lambda k: forge(header(alg="EdDSA", kid="ed25519-1"), claims(), signature=b"\x00" * 64),
    ),
    A(
        "rsa_signature_of_one",
        BAD_SIG,
        lambda k: forge(header(), claims(), signature=b"\x00" * 255 + b"\x01"),
    ),
    # base64url spelling: only one canonical, unpadded form of each part (RFC 7515 §2)
    A("header_truncated", MALFORMED, lambda k: with_part(k.signed(), 0, truncated)),
    A("payload_truncated", MALFORMED, lambda k: with_part(k.signed(), 1, truncated)),
    A("signature_truncated", BAD_SIG, lambda k: with_part(k.signed(), 2, truncated)),
    A("signature_cut_to_one_char", MALFORMED, lambda k: with_part(k.signed(), 2, lambda s: s[:1])),
    A("signature_removed", BAD_SIG, lambda k: with_part(k.signed(), 2, lambda s: "")),
    A("signature_and_dot_removed", MALFORMED, lambda k: k.signed().rsplit(".", 1)[0]),
    A("header_padded", MALFORMED, lambda k: with_part(k.signed(), 0, lambda s: s + "=")),
    A("payload_padded", MALFORMED, lambda k: with_part(k.signed(), 1, lambda s: s + "==")),
    A("signature_padded", MALFORMED, lambda k: with_part(k.signed(), 2, lambda s: s + "=")),
    A("header_non_canonical_bits", MALFORMED, lambda k: with_unused_bits(k.signed(), 0, k)),
    A("payload_non_canonical_bits", MALFORMED, lambda k: with_unused_bits(k.signed(), 1, k)),
    A(
        "signature_non_canonical_bits",
        MALFORMED,
        lambda k: with_unused_bits(k.signed("ed25519-1"), 2, k),
    ),
    A(
        "standard_base64_alphabet",
        MALFORMED,
        lambda k: with_part(k.signed(), 2, lambda s: "+/" + s[2:]),
    ),
    A(
        "newline_inside",
        MALFORMED,
        lambda k: with_part(k.signed(), 1, lambda s: s[:8] + "\n" + s[8:]),
    ),
    A("percent_encoded_dot", MALFORMED, lambda k: k.signed().replace(".", "%2E", 1)),
    A("trailing_dot", MALFORMED, lambda k: k.signed() + "."),
    A("jwe_shaped_five_parts", MALFORMED, lambda k: k.signed() + ".AAAA.AAAA"),
    # duplicate or look-alike member names, inside a valid signature (RFC 8725 §3.7)
    A(
        "header_alg_twice",
        MALFORMED,
        lambda k: duplicated(
            k, '{"alg":"none","alg":"RS256","typ":"at+jwt","kid":"rsa-1"}', body_json()
        ),
    ),
    A(
        "header_kid_twice",
        MALFORMED,
        lambda k: duplicated(
            k, '{"alg":"RS256","kid":"evil","kid":"rsa-1","typ":"at+jwt"}', body_json()
        ),
    ),
    A(
        "header_typ_twice",
        MALFORMED,
        lambda k: duplicated(
            k, '{"alg":"RS256","kid":"rsa-1","typ":"JWT","typ":"at+jwt"}', body_json()
        ),
    ),
    A(
        "claims_iss_twice",
        MALFORMED,
        lambda k: duplicated(k, HEAD, '{"iss":"https://evil.example.test",' + body_json()[1:]),
    ),
    A(
        "claims_sub_twice",
        MALFORMED,
        lambda k: duplicated(k, HEAD, append_members(body_json(), '"sub": "bob"')),
    ),
    A(
        "claims_aud_twice",
        MALFORMED,
        lambda k: duplicated(k, HEAD, '{"aud":"https://other.example",' + body_json()[1:]),
    ),
    A(
        "claims_scope_twice_escalating",
        MALFORMED,
        lambda k: duplicated(k, HEAD, append_members(body_json(), '"scope": "tickets:*"')),
    ),
    A(
        "claims_client_id_twice",
        MALFORMED,
        lambda k: duplicated(k, HEAD, append_members(body_json(), '"client_id": "triage-bot"')),
    ),
    A(
        "claims_act_sub_twice",
        MALFORMED,
        lambda k: duplicated(
            k, HEAD, append_members(body_json(), '"act": {"sub": "x", "sub": "support-agent"}')
        ),
    ),
    A(
        "claims_sub_twice_one_escaped",
        MALFORMED,
        lambda k: duplicated(k, HEAD, append_members(body_json(), '"\\u0073ub": "bob"')),
    ),
    A(
        "claims_sub_and_Sub",
        MALFORMED,
        lambda k: duplicated(k, HEAD, append_members(body_json(), '"Sub": "bob"')),
    ),
    A(
        "claims_scope_and_scope_zero_width",
        MALFORMED,
        lambda k: duplicated(k, HEAD, append_members(body_json(), '"scope\\u200b": "tickets:*"')),
    ),
    # payloads that are not a JSON object
    A("payload_array", MALFORMED, lambda k: forge(header(), [claims()], k.keys["rsa-1"])),
    A("payload_string", MALFORMED, lambda k: forge(header(), '"alice"', k.keys["rsa-1"])),
    A("payload_number", MALFORMED, lambda k: forge(header(), "42", k.keys["rsa-1"])),
    A("payload_null", MALFORMED, lambda k: forge(header(), "null", k.keys["rsa-1"])),
    A("payload_true", MALFORMED, lambda k: forge(header(), "true", k.keys["rsa-1"])),
    A("payload_empty_bytes", MALFORMED, lambda k: forge(header(), b"", k.keys["rsa-1"])),
    A(
        "header_array",
        MALFORMED,
        lambda k: f"{part([header()])}.{part(claims())}.{b64url(b'x' * 256)}",
    ),
    # act bombs: deep nesting and huge fan-out (RFC 8693 §4.1)
    A("act_chain_300_deep", Reason.DELEGATION_TOO_DEEP, lambda k: k.signed(act=nested_act(300))),
    A(
        "act_nested_beyond_the_json_recursion_limit",
        MALFORMED,
        lambda k: forge(
            header(), append_members(body_json(), '"act": ' + deep_act_text(1400)), signature=b"x"
        ),
    ),
    A(
        "array_nested_beyond_the_json_recursion_limit",
        MALFORMED,
        lambda k: forge(
            header(), append_members(body_json(), '"x": ' + "[" * 1400 + "]" * 1400), signature=b"x"
        ),
    ),
    A(
        "act_fan_out_list_of_400",
        MALFORMED,
        lambda k: k.signed(act=[{"sub": "support-agent"}] * 400),
    ),
    A(
        "act_fan_out_wide_levels",
        Reason.DELEGATION_TOO_DEEP,
        lambda k: k.signed(
            act={
                "sub": "support-agent",
                "act": {"sub": "a", "act": {"sub": "b"}, **{f"w{i}": {} for i in range(150)}},
                **{f"x{i}": {"sub": "support-agent"} for i in range(150)},
            }
        ),
    ),
    # enormous tokens and claims
    A(
        "signed_token_one_byte_over_the_limit",
        MALFORMED,
        lambda k: padded_to(k, MAX_TOKEN_LENGTH + 8),
        oversized=True,
    ),
    A(
        "authorization_header_of_1_mib",
        MALFORMED,
        lambda k: "Bearer " + "A" * (1 << 20),
        as_header=True,
        oversized=True,
    ),
    A(
        "audience_list_of_500_near_the_limit",
        Reason.TOKEN_WRONG_AUDIENCE,
        lambda k: k.signed("ed25519-1", aud=[f"https://a{i}.test" for i in range(500)]),
    ),
    A(
        "scope_of_1500_entries_near_the_limit",
        Reason.SCOPE_LACKS_PERMISSION,
        lambda k: k.signed("ed25519-1", scope=" ".join(f"t{i}:r" for i in range(1500))),
    ),
    A(
        "exp_with_4000_digits",
        MALFORMED,
        lambda k: duplicated(k, HEAD, body_json(exp=None)[:-1] + ', "exp": ' + "9" * 4000 + "}"),
    ),
    A(
        "exp_with_5000_digits",
        MALFORMED,
        lambda k: forge(
            header(), body_json(exp=None)[:-1] + ', "exp": ' + "9" * 5000 + "}", signature=b"x"
        ),
    ),
    A(
        "exp_nan",
        MALFORMED,
        lambda k: duplicated(k, HEAD, body_json(exp=None)[:-1] + ', "exp": NaN}'),
    ),
    # claims of the wrong type
    *(
        A(f"sub_{name}", MALFORMED, partial(_signed_with, "sub", value))
        for name, value in (
            ("a_number", 1),
            ("a_list", ["alice"]),
            ("an_object", {}),
            ("true", True),
            ("empty", ""),
        )
    ),
    A(
        "sub_null",
        MALFORMED,
        lambda k: duplicated(k, HEAD, append_members(body_json(sub=None), '"sub": null')),
    ),
    *(
        A(f"aud_{name}", MALFORMED, partial(_signed_with, "aud", value))
        for name, value in (
            ("a_number", 1),
            ("an_object", {"aud": "x"}),
            ("list_of_numbers", [1]),
            ("true", True),
        )
    ),
    A("aud_empty_list", Reason.TOKEN_WRONG_AUDIENCE, lambda k: k.signed(aud=[])),
    A(
        "aud_null",
        Reason.TOKEN_WRONG_AUDIENCE,
        lambda k: duplicated(k, HEAD, append_members(body_json(aud=None), '"aud": null')),
    ),
    *(
        A(f"iss_{name}", Reason.TOKEN_WRONG_ISSUER, partial(_signed_with, "iss", value))
        for name, value in (("a_number", 1), ("a_list", [ISSUER]), ("an_object", {"iss": ISSUER}))
    ),
    A("iss_with_trailing_slash", Reason.TOKEN_WRONG_ISSUER, lambda k: k.signed(iss=ISSUER + "/")),
    A("client_id_a_number", MALFORMED, lambda k: k.signed(client_id=7)),
    A("act_sub_a_number", MALFORMED, lambda k: k.signed(act={"sub": 7})),
    A("scope_a_list", MALFORMED, lambda k: k.signed(scope=["tickets:read"])),
    # OpenID Connect ID tokens replayed as access tokens (RFC 9068 §4, RFC 8725 §3.11)
    A(
        "id_token_typ_jwt",
        Reason.TOKEN_WRONG_TYPE,
        lambda k: forge(header(typ="JWT"), id_token_claims(), k.keys["rsa-1"]),
    ),
    A(
        "id_token_without_typ",
        Reason.TOKEN_WRONG_TYPE,
        lambda k: forge(header(typ=None), id_token_claims(), k.keys["rsa-1"]),
    ),
    A(
        "id_token_typ_jwt_with_the_resource_audience",
        Reason.TOKEN_WRONG_TYPE,
        lambda k: forge(header(typ="JWT"), id_token_claims(aud=claims()["aud"]), k.keys["rsa-1"]),
    ),
    A(
        "id_token_claims_with_at_jwt_typ",
        Reason.TOKEN_WRONG_AUDIENCE,
        lambda k: forge(header(), id_token_claims(), k.keys["rsa-1"]),
    ),
]

ATTACK_IDS = [a.name for a in ATTACKS]
assert len(set(ATTACK_IDS)) == len(ATTACK_IDS), "attack names must be unique"


def attack_request(attack: Attack, kit: Kit) -> Any:
    made = attack.token(kit)
    return check_for(authorization=made) if attack.as_header else check_for(made)


# --- the tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("attack", ATTACKS, ids=ATTACK_IDS)
def test_attack_is_denied_with_its_reason_and_bounded_work(
    harness: ServiceHarness, kit: Kit, verifications: list[str], attack: Attack
) -> None:
    request = attack_request(attack, kit)
    token = request.attributes.request.http.headers["authorization"].removeprefix("Bearer ")
    assert (len(token) > MAX_TOKEN_LENGTH) is attack.oversized
    verifications.clear()

    reason = harness.reason(request)

    assert reason is attack.expect
    assert len(verifications) <= 1
    if attack.expect in BEFORE_SIGNATURE:
        assert verifications == [], "no key may be tried for a token that selects none"
    assert "HMACAlgorithm" not in verifications and "NoneAlgorithm" not in verifications
    assert harness.lines == 1


def test_the_whole_suite_in_a_row_leaves_the_service_serving(
    harness: ServiceHarness, kit: Kit, verifications: list[str]
) -> None:
    requests = [attack_request(a, kit) for a in ATTACKS]
    # A valid token first, so anything kept from a verified token is in place when the
    # attacks built from the same keys arrive.
    assert harness.reason(check_for(kit.signed())) is Reason.ALLOWED
    verifications.clear()

    reasons = [harness.reason(r) for r in requests]

    assert reasons == [a.expect for a in ATTACKS]
    assert len(verifications) <= len(ATTACKS)
    assert harness.lines == len(ATTACKS) + 1
    verifications.clear()
    for kid in ALG_OF_KID:
        assert harness.reason(check_for(kit.signed(kid))) is Reason.ALLOWED
    assert len(verifications) == len(ALG_OF_KID), "the counter sees real verifications"


async def test_nothing_is_fetched_from_jku_x5u_or_any_url_a_token_names(
    harness: ServiceHarness, kit: Kit
) -> None:
    asked: list[str] = []

    async def refetch(issuer: str) -> bool:
        asked.append(issuer)
        return False

    harness.handler.refetch_keys = refetch
    pointing = [a for a in ATTACKS if a.name.startswith(("jku_", "x5u_", "embedded_", "x5c_"))]
    assert len(pointing) >= 8

    for attack in pointing:
        encoded = await harness.handler.check_refetching_keys(attack_request(attack, kit))
        response = external_auth_pb2.CheckResponse.FromString(encoded)
        assert response.dynamic_metadata["reason"] == attack.expect.value

    assert kit.evil.requests == [], "the attacker's server was contacted"
    # An unknown kid may make us ask the configured issuer again, never anyone else.
    assert set(asked) <= {ISSUER}


# --- attacks on what a verified token leaves behind -------------------------------------


def test_a_token_allowed_once_is_refused_once_it_has_expired(
    harness: ServiceHarness, kit: Kit
) -> None:
    token = kit.signed()
    assert harness.reason(check_for(token)) is Reason.ALLOWED

    harness.now = NOW + 300 + 31  # past exp and the 30 s leeway

    assert harness.reason(check_for(token)) is Reason.TOKEN_EXPIRED


def test_a_token_allowed_once_is_refused_once_the_feed_revokes_it(
    harness: ServiceHarness, kit: Kit
) -> None:
    token = kit.signed(jti="stolen-1")
    assert harness.reason(check_for(token)) is Reason.ALLOWED
    snapshot = harness.runtime.feed.state.snapshot
    assert snapshot is not None
    revoked = FeedSnapshot("2", snapshot.users, revoked_tokens={"stolen-1": NOW + 300})

    harness.runtime.feed.accept(revoked, NOW)

    assert harness.reason(check_for(token)) is Reason.TOKEN_REVOKED


def test_a_token_allowed_once_is_refused_once_its_key_is_removed(
    harness: ServiceHarness, kit: Kit
) -> None:
    token = kit.signed("ec-1")
    assert harness.reason(check_for(token)) is Reason.ALLOWED
    current = harness.runtime.key_sets[ISSUER]
    remaining = {kid: key for kid, key in current.keys.items() if kid != "ec-1"}

    harness.runtime.publish_keys(KeySet(ISSUER, remaining, current.source))

    assert harness.reason(check_for(token)) is Reason.KEY_UNKNOWN


def test_a_token_allowed_once_with_a_payload_swapped_in_is_refused(
    harness: ServiceHarness, kit: Kit
) -> None:
    token = kit.signed()
    assert harness.reason(check_for(token)) is Reason.ALLOWED
    other = kit.signed(scope="tickets:read tickets:delete")

    spliced = with_part(token, 1, lambda _: other.split(".")[1])

    assert harness.reason(check_for(spliced, method="DELETE")) is BAD_SIG
