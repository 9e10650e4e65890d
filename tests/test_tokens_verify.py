"""Access-token verification against real keys, the RFC 8725 pitfalls and the check order.

Hostile tokens are built by hand: header and payload are base64url-encoded here and signed
with PyJWT's algorithm objects (or not at all), so nothing in the signing library can
"helpfully" refuse to make them.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import get_default_algorithms

import extauthz.tokens.verify as verify_module
from extauthz.config import Config, TokenPolicy
from extauthz.demo.issuer import LocalIssuer, public_jwk
from extauthz.errors import ConfigError, Denied, Reason, ServiceUnavailable, TokenRejected
from extauthz.tokens.keys import KeySet, parse_jwks
from extauthz.tokens.verify import (
    MAX_TOKEN_LENGTH,
    SignedToken,
    _b64decode,
    bearer_token,
    validate_claim_times,
    validate_claims,
    verify_signature,
)

ISS = "https://idp.example.test"
PARTNER = "https://partner.example.test"  # allows ES256 only
NO_KEYS = "https://nokeys.example.test"  # configured, but its key set is empty
EVIL = "https://evil.example.test"  # not configured
AUD = "https://tickets.example.test"
NOW = 1_800_000_000
ALGORITHMS = get_default_algorithms()
# The main issuer's allow-list: RS512, PS384, PS512 and ES512 are supported but not allowed.
ISS_ALGORITHMS = ["RS256", "RS384", "PS256", "ES256", "ES384", "EdDSA"]
ALG_OF_KID = {
    "rsa-1": "RS256",
    "ec-1": "ES256",
    "ed25519-1": "EdDSA",
    "p384-1": "ES384",
    "p521-1": "ES512",
    "ed448-1": "EdDSA",
    "rsa-small": "RS256",
    "rsa-pinned": "PS256",
    "attacker-ec": "ES256",
}


# --- building tokens by hand -------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def part(value: object) -> str:
    """A JSON value, or raw JSON text (str), or raw bytes → one base64url token part."""
    if isinstance(value, bytes):
        return b64url(value)
    if isinstance(value, str):
        return b64url(value.encode())
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def header(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"alg": "RS256", "typ": "at+jwt", "kid": "rsa-1"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def payload(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISS,
        "sub": "alice",
        "aud": AUD,
        "iat": NOW,
        "exp": NOW + 300,
        "jti": "jti-1",
        "client_id": "helpdesk-bot",
        "scope": "tickets:read",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def forge(hdr: object, body: object, key: Any = None, *, signature: bytes | None = None) -> str:
    """Encode header and payload; sign with ``key`` using the header's alg unless a raw
    ``signature`` is given."""
    signing_input = f"{part(hdr)}.{part(body)}"
    if signature is None:
        assert isinstance(hdr, dict)
        signature = ALGORITHMS[hdr["alg"]].sign(signing_input.encode(), key)
    return f"{signing_input}.{b64url(signature)}"


def decode_part(text: str) -> dict[str, Any]:
    value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    assert isinstance(value, dict)
    return value


def tamper(token: str, **claims: Any) -> str:
    """Change payload claims and keep the original signature."""
    head, body, signature = token.split(".")
    changed = {**decode_part(body), **claims}
    return f"{head}.{part(changed)}.{signature}"


def hs256(token_input: str, secret: bytes) -> bytes:
    return hmac.new(secret, token_input.encode(), hashlib.sha256).digest()


# --- keys, config and the verifier -------------------------------------------------------


@pytest.fixture(scope="module")
def extra_keys() -> dict[str, Any]:
    """Keys beyond the LocalIssuer's: other curves, Ed448, an attacker's."""
    return {
        "p384-1": ec.generate_private_key(ec.SECP384R1()),
        "p521-1": ec.generate_private_key(ec.SECP521R1()),
        "ed448-1": ed448.Ed448PrivateKey.generate(),
        "attacker-ec": ec.generate_private_key(ec.SECP256R1()),
    }


@pytest.fixture(scope="module")
def signing_keys(local_issuer: LocalIssuer, extra_keys: dict[str, Any]) -> dict[str, Any]:
    return {**local_issuer.keys, **extra_keys, "rsa-pinned": local_issuer.keys["rsa-1"]}


@pytest.fixture(scope="module")
def configured_jwks(local_issuer: LocalIssuer, extra_keys: dict[str, Any]) -> dict[str, Any]:
    """The trusted JWKS: the LocalIssuer's keys, the extra ones (not the attacker's), and
    the RSA key once more under kid ``rsa-pinned`` with ``alg: PS256``."""
    keys = list(local_issuer.jwks()["keys"])
    keys += [public_jwk(k, kid) for kid, k in extra_keys.items() if kid != "attacker-ec"]
    keys.append({**public_jwk(local_issuer.keys["rsa-1"], "rsa-pinned"), "alg": "PS256"})
    return {"keys": keys}


def config_data(**tokens: Any) -> dict[str, Any]:
    return {
        "issuers": [
            {"issuer": ISS, "algorithms": ISS_ALGORITHMS, "jwks_file": "keys/idp.json"},
            {"issuer": PARTNER, "algorithms": ["ES256"], "jwks_file": "keys/partner.json"},
            {"issuer": NO_KEYS, "algorithms": ["RS256"], "jwks_file": "keys/none.json"},
        ],
        "tokens": tokens,
        "agents": [],
        "resources": [],
        "feed": {"source": "users.json", "issuer": ISS},
    }


@dataclass(frozen=True)
class Verifier:
    config: Config
    key_sets: dict[str, KeySet]

    def verify(self, token: str) -> SignedToken:
        return verify_signature(token, self.config.issuers, self.key_sets, self.config.tokens)

    def reason(self, token: str, *, now: float = NOW, audience: str | None = AUD) -> Reason:
        """The reason the two verification steps give, ALLOWED when both pass."""
        try:
            signed = self.verify(token)
            validate_claims(signed.claims, self.config.tokens, audience, now)
        except Denied as denied:
            return denied.reason
        return Reason.ALLOWED


@pytest.fixture
def verifier_for(
    make_config: Callable[..., Config], configured_jwks: dict[str, Any]
) -> Callable[..., Verifier]:
    """``verifier_for(**tokens_section)``: a Verifier whose config has that ``tokens:``."""

    def build(**tokens: Any) -> Verifier:
        keys = parse_jwks(configured_jwks, "keys/idp.json")
        key_sets = {
            ISS: KeySet(ISS, keys),
            PARTNER: KeySet(PARTNER, keys),
            NO_KEYS: KeySet(NO_KEYS, {}),
        }
        return Verifier(make_config(config_data(**tokens)), key_sets)

    return build


@pytest.fixture
def verifier(verifier_for: Callable[..., Verifier]) -> Verifier:
    return verifier_for()


Mint = Callable[..., str]


@pytest.fixture
def mint(signing_keys: dict[str, Any]) -> Mint:
    """``mint(kid, alg=..., hdr={...}, **claims)``: a token signed with the key named ``kid``.

    ``hdr`` entries override the header (None removes one); claims override the payload.
    """

    def build(
        kid: str = "rsa-1", *, alg: str | None = None, hdr: dict[str, Any] | None = None, **claims
    ) -> str:
        algorithm = alg or ALG_OF_KID[kid]
        head = header(**{"alg": algorithm, "kid": kid, **(hdr or {})})
        return forge(head, payload(**claims), signing_keys[kid])

    return build


# --- valid tokens from real keys ---------------------------------------------------------


@pytest.mark.parametrize("kid", ["rsa-1", "ec-1", "ed25519-1"])
def test_accepts_a_token_the_local_issuer_signs_with_each_key_type(
    verifier: Verifier, local_issuer: LocalIssuer, kid: str
) -> None:
    token = local_issuer.token(
        sub="alice", audience=AUD, client_id="helpdesk-bot", kid=kid, now=NOW
    )

    assert verifier.reason(token) is Reason.ALLOWED


@pytest.mark.parametrize(
    ("kid", "alg"),
    [
        pytest.param("rsa-1", "RS384", id="RS384"),
        pytest.param("rsa-1", "PS256", id="PS256"),
        pytest.param("p384-1", "ES384", id="ES384"),
        pytest.param("ed448-1", "EdDSA", id="EdDSA_ed448"),
        pytest.param("rsa-pinned", "PS256", id="PS256_with_a_key_pinned_to_PS256"),
    ],
)
def test_accepts_other_algorithms_the_issuer_allows(
    verifier: Verifier, mint: Mint, kid: str, alg: str
) -> None:
    assert verifier.reason(mint(kid, alg=alg)) is Reason.ALLOWED


def test_returns_the_verified_header_claims_and_configured_issuer(
    verifier: Verifier, mint: Mint
) -> None:
    signed = verifier.verify(mint("ec-1", sub="bob"))

    assert signed.issuer == ISS
    assert signed.claims["sub"] == "bob"
    assert signed.header["kid"] == "ec-1"
    assert signed.header["alg"] == "ES256"


# --- algorithms (RFC 8725 §3.1) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("kid", "alg"),
    [
        pytest.param("rsa-1", "RS512", id="RS512"),
        pytest.param("rsa-1", "PS384", id="PS384"),
        pytest.param("rsa-1", "PS512", id="PS512"),
        pytest.param("p521-1", "ES512", id="ES512_even_with_a_P521_key_configured"),
    ],
)
def test_denies_a_supported_algorithm_the_issuer_does_not_allow(
    verifier: Verifier, mint: Mint, kid: str, alg: str
) -> None:
    assert verifier.reason(mint(kid, alg=alg)) is Reason.TOKEN_ALGORITHM_NOT_ALLOWED


def test_algorithm_allow_list_is_per_issuer(verifier: Verifier, mint: Mint) -> None:
    assert verifier.reason(mint("ec-1", iss=PARTNER)) is Reason.ALLOWED
    assert verifier.reason(mint("rsa-1", iss=PARTNER)) is Reason.TOKEN_ALGORITHM_NOT_ALLOWED


@pytest.mark.parametrize(
    ("alg", "signature"),
    [
        pytest.param("none", b"", id="none_unsigned"),
        pytest.param("none", b"\x01" * 32, id="none_with_a_signature"),
        pytest.param("None", b"", id="None_capitalised"),
        pytest.param("NONE", b"", id="NONE_upper_case"),
        pytest.param(None, b"", id="no_alg_at_all"),
        pytest.param(["RS256"], b"", id="alg_is_a_list"),
    ],
)
def test_denies_unsigned_tokens(verifier: Verifier, alg: object, signature: bytes) -> None:
    token = forge(header(alg=alg), payload(), signature=signature)

    assert verifier.reason(token) is Reason.TOKEN_ALGORITHM_NOT_ALLOWED


def _public_pem(key: Any) -> bytes:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize(
    "secret_of",
    [
        pytest.param(lambda keys: _public_pem(keys["rsa-1"]), id="rsa_public_pem"),
        pytest.param(
            lambda keys: keys["rsa-1"].public_key().public_bytes(Encoding.PEM, PublicFormat.PKCS1),
            id="rsa_public_pkcs1_pem",
        ),
        pytest.param(
            lambda keys: (
                keys["rsa-1"]
                .public_key()
                .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
            ),
            id="rsa_public_der",
        ),
        pytest.param(
            lambda keys: json.dumps(public_jwk(keys["rsa-1"], "rsa-1")).encode(),
            id="rsa_public_jwk_json",
        ),
        pytest.param(lambda keys: _public_pem(keys["ec-1"]), id="ec_public_pem"),
    ],
)
def test_denies_hs256_signed_with_the_public_key_as_hmac_secret(
    verifier: Verifier, signing_keys: dict[str, Any], secret_of: Callable[..., bytes]
) -> None:
    """The classic key-confusion attack: the public key is public, so anyone can HMAC."""
    head, body = header(alg="HS256", kid="rsa-1"), payload()
    signing_input = f"{part(head)}.{part(body)}"
    token = forge(head, body, signature=hs256(signing_input, secret_of(signing_keys)))

    assert verifier.reason(token) is Reason.TOKEN_ALGORITHM_NOT_ALLOWED


def test_config_refuses_an_hmac_algorithm_for_an_issuer(make_config: Callable[..., Config]) -> None:
    data = config_data()
    data["issuers"][0]["algorithms"] = ["RS256", "HS256"]

    with pytest.raises(ConfigError) as caught:
        make_config(data)

    assert caught.value.key == "issuers[0].algorithms[1]"


@pytest.mark.parametrize(
    ("alg", "kid", "signed_with"),
    [
        pytest.param("ES256", "rsa-1", "ec-1", id="ES256_with_an_RSA_kid"),
        pytest.param("RS256", "ec-1", "rsa-1", id="RS256_with_an_EC_kid"),
        pytest.param("EdDSA", "rsa-1", "ed25519-1", id="EdDSA_with_an_RSA_kid"),
        pytest.param("RS256", "ed25519-1", "rsa-1", id="RS256_with_an_Ed25519_kid"),
        pytest.param("ES384", "ec-1", "p384-1", id="ES384_with_a_P256_kid"),
        pytest.param("ES256", "p384-1", "ec-1", id="ES256_with_a_P384_kid"),
        pytest.param("RS256", "rsa-pinned", "rsa-1", id="RS256_with_a_key_pinned_to_PS256"),
    ],
)
def test_denies_a_kid_whose_key_does_not_fit_the_alg(
    verifier: Verifier, signing_keys: dict[str, Any], alg: str, kid: str, signed_with: str
) -> None:
    token = forge(header(alg=alg, kid=kid), payload(), signing_keys[signed_with])

    assert verifier.reason(token) is Reason.TOKEN_ALGORITHM_NOT_ALLOWED


# --- explicit typing (RFC 9068 §4, RFC 8725 §3.11) ---------------------------------------


@pytest.mark.parametrize(
    "typ",
    [
        pytest.param("JWT", id="JWT"),
        pytest.param(None, id="missing"),
        pytest.param("application/jwt", id="application_jwt"),
        pytest.param("dpop+jwt", id="dpop_jwt"),
        pytest.param("", id="empty"),
        pytest.param(["at+jwt"], id="a_list"),
    ],
)
def test_denies_a_token_that_is_not_typed_as_an_access_token(
    verifier: Verifier, mint: Mint, typ: object
) -> None:
    assert verifier.reason(mint(hdr={"typ": typ})) is Reason.TOKEN_WRONG_TYPE


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT", "Application/At+JWT"])
def test_accepts_at_jwt_with_or_without_the_application_prefix(
    verifier: Verifier, mint: Mint, typ: str
) -> None:
    assert verifier.reason(mint(hdr={"typ": typ})) is Reason.ALLOWED


@pytest.mark.parametrize("typ", ["JWT", None, "application/at+jwt"])
def test_typ_any_switches_the_type_check_off(
    verifier_for: Callable[..., Verifier], mint: Mint, typ: str | None
) -> None:
    assert verifier_for(typ="any").reason(mint(hdr={"typ": typ})) is Reason.ALLOWED


# --- key selection: kid only, never a key from the token (RFC 8725 §3.10) ----------------


@pytest.mark.parametrize(
    "kid",
    [
        pytest.param("rsa-2", id="unknown"),
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param(1, id="a_number"),
        pytest.param(["rsa-1"], id="a_list"),
        pytest.param("RSA-1", id="different_case"),
    ],
)
def test_denies_a_kid_that_names_no_configured_key(
    verifier: Verifier, signing_keys: dict[str, Any], kid: object
) -> None:
    token = forge(header(kid=kid), payload(), signing_keys["rsa-1"])

    assert verifier.reason(token) is Reason.KEY_UNKNOWN


@pytest.fixture(scope="module")
def attacker_cert_b64(extra_keys: dict[str, Any]) -> str:
    key = extra_keys["attacker-ec"]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.example.test")])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return base64.b64encode(cert.public_bytes(Encoding.DER)).decode()


@pytest.mark.parametrize(
    ("extra_header", "expected"),
    [
        pytest.param({"kid": None, "jwk": "ATTACKER_JWK"}, Reason.KEY_UNKNOWN, id="jwk_no_kid"),
        pytest.param(
            {"kid": "attacker-ec", "jwk": "ATTACKER_JWK"}, Reason.KEY_UNKNOWN, id="jwk_own_kid"
        ),
        pytest.param(
            {"kid": "ec-1", "jwk": "ATTACKER_JWK"},
            Reason.TOKEN_INVALID_SIGNATURE,
            id="jwk_with_a_configured_kid",
        ),
        pytest.param(
            {"kid": None, "jku": "https://evil.example.test/jwks.json"},
            Reason.KEY_UNKNOWN,
            id="jku_no_kid",
        ),
        pytest.param(
            {"kid": "ec-1", "jku": "https://evil.example.test/jwks.json"},
            Reason.TOKEN_INVALID_SIGNATURE,
            id="jku_with_a_configured_kid",
        ),
        pytest.param(
            {"kid": "attacker-ec", "x5u": "https://evil.example.test/cert.pem"},
            Reason.KEY_UNKNOWN,
            id="x5u_own_kid",
        ),
        pytest.param({"kid": None, "x5c": "ATTACKER_X5C"}, Reason.KEY_UNKNOWN, id="x5c_no_kid"),
        pytest.param(
            {"kid": "ec-1", "x5c": "ATTACKER_X5C"},
            Reason.TOKEN_INVALID_SIGNATURE,
            id="x5c_with_a_configured_kid",
        ),
    ],
)
def test_never_takes_the_verification_key_from_the_token_header(
    verifier: Verifier,
    signing_keys: dict[str, Any],
    attacker_cert_b64: str,
    extra_header: dict[str, Any],
    expected: Reason,
) -> None:
    attacker = signing_keys["attacker-ec"]
    attacker_jwk = public_jwk(attacker, "attacker-ec")
    substitutes = {"ATTACKER_JWK": attacker_jwk, "ATTACKER_X5C": [attacker_cert_b64]}
    hdr = header(alg="ES256", **{k: substitutes.get(v, v) for k, v in extra_header.items()})

    reason = verifier.reason(forge(hdr, payload(), attacker))

    assert reason is expected


# --- no keys for the issuer --------------------------------------------------------------


def test_issuer_with_an_empty_key_set_is_service_unavailable(
    verifier: Verifier, mint: Mint
) -> None:
    with pytest.raises(ServiceUnavailable) as caught:
        verifier.verify(mint(iss=NO_KEYS))

    assert caught.value.reason is Reason.KEYS_UNAVAILABLE
    assert caught.value.outcome.status == 503


def test_issuer_with_no_key_set_loaded_is_service_unavailable(
    verifier: Verifier, mint: Mint
) -> None:
    del verifier.key_sets[PARTNER]

    with pytest.raises(ServiceUnavailable) as caught:
        verifier.verify(mint("ec-1", iss=PARTNER))

    assert caught.value.reason is Reason.KEYS_UNAVAILABLE


# --- signatures --------------------------------------------------------------------------


def _flip_last_signature_byte(token: str) -> str:
    head, body, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[-1] ^= 0x01
    return f"{head}.{body}.{b64url(bytes(raw))}"


def _drop_signature(token: str) -> str:
    return token.rsplit(".", 1)[0] + "."


def _truncate_signature(token: str) -> str:
    # Whole bytes off the end: a wrong signature, still canonically encoded.
    head, body, sig = token.split(".")
    raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    return f"{head}.{body}.{b64url(raw[:-6])}"


def _tamper_sub(token: str) -> str:
    return tamper(token, sub="admin")


def _tamper_header(token: str) -> str:
    head, body, sig = token.split(".")
    return f"{part({**decode_part(head), 'x': 1})}.{body}.{sig}"


@pytest.mark.parametrize("kid", ["rsa-1", "ec-1", "ed25519-1"])
@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(_tamper_sub, id="payload_tampered"),
        pytest.param(_tamper_header, id="header_tampered"),
        pytest.param(_drop_signature, id="empty_signature"),
        pytest.param(_truncate_signature, id="truncated_signature"),
        pytest.param(_flip_last_signature_byte, id="flipped_signature_bit"),
    ],
)
def test_denies_a_corrupted_signature(
    verifier: Verifier, mint: Mint, kid: str, corrupt: Callable[[str], str]
) -> None:
    assert verifier.reason(corrupt(mint(kid))) is Reason.TOKEN_INVALID_SIGNATURE


@pytest.mark.parametrize("kid", ["rsa-1", "ec-1", "ed25519-1"])
def test_denies_a_signature_from_another_key_with_the_same_kid(
    verifier: Verifier, impostor_issuer: LocalIssuer, kid: str
) -> None:
    token = impostor_issuer.token(sub="alice", audience=AUD, client_id="bot", kid=kid, now=NOW)

    assert verifier.reason(token) is Reason.TOKEN_INVALID_SIGNATURE


def test_denies_a_signature_moved_from_another_token(verifier: Verifier, mint: Mint) -> None:
    mine = mint(sub="alice")
    theirs = mint(sub="admin")

    moved = theirs.rsplit(".", 1)[0] + "." + mine.rsplit(".", 1)[1]

    assert verifier.reason(moved) is Reason.TOKEN_INVALID_SIGNATURE


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(b"\x00" * 64, id="r_and_s_zero"),
        pytest.param(b"\x00" * 32 + b"\x01" * 32, id="r_zero"),
        pytest.param(b"\x00" * 63 + b"\x01", id="r_zero_s_one"),
    ],
)
def test_denies_degenerate_ecdsa_signatures(verifier: Verifier, signature: bytes) -> None:
    token = forge(header(alg="ES256", kid="ec-1"), payload(), signature=signature)

    assert verifier.reason(token) is Reason.TOKEN_INVALID_SIGNATURE


def test_denies_an_ecdsa_signature_in_der_instead_of_jose_form(
    verifier: Verifier, mint: Mint
) -> None:
    head, body, sig = mint("ec-1").split(".")
    raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))

    assert verifier.reason(f"{head}.{body}.{b64url(der)}") is Reason.TOKEN_INVALID_SIGNATURE


# --- well-formedness ---------------------------------------------------------------------

GOOD_HEAD = part(header())
GOOD_BODY = part(payload())
GOOD_SIG = b64url(b"\x01" * 256)
JSON_STRING = part('"alice"')
NOT_UTF8 = part(b"\xff\xfe{}")


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("", id="empty"),
        pytest.param("not-a-jwt", id="one_part"),
        pytest.param(f"{GOOD_HEAD}.{GOOD_BODY}", id="two_parts"),
        pytest.param(f"{GOOD_HEAD}.{GOOD_BODY}.{GOOD_SIG}.{GOOD_SIG}", id="four_parts"),
        pytest.param(f"{GOOD_HEAD}..{GOOD_SIG}", id="empty_payload"),
        pytest.param(f".{GOOD_BODY}.{GOOD_SIG}", id="empty_header"),
        pytest.param(f"{GOOD_HEAD}=.{GOOD_BODY}.{GOOD_SIG}", id="padded_base64"),
        pytest.param(f"{GOOD_HEAD}.{GOOD_BODY}.{GOOD_SIG}+/", id="standard_base64_chars"),
        pytest.param(f"{GOOD_HEAD}.{GOOD_BODY}A.{GOOD_SIG}", id="impossible_base64_length"),
        pytest.param(f"{GOOD_HEAD}.{GOOD_BODY}.{GOOD_SIG}é", id="non_ascii"),
        pytest.param(f"{GOOD_HEAD} .{GOOD_BODY}.{GOOD_SIG}", id="whitespace_inside"),
        pytest.param(f"{part('not json')}.{GOOD_BODY}.{GOOD_SIG}", id="header_not_json"),
        pytest.param(f"{part([header()])}.{GOOD_BODY}.{GOOD_SIG}", id="header_json_array"),
        pytest.param(f"{GOOD_HEAD}.{JSON_STRING}.{GOOD_SIG}", id="payload_json_string"),
        pytest.param(f"{GOOD_HEAD}.{part('null')}.{GOOD_SIG}", id="payload_json_null"),
        pytest.param(f"{GOOD_HEAD}.{part('42')}.{GOOD_SIG}", id="payload_json_number"),
        pytest.param(f"{GOOD_HEAD}.{NOT_UTF8}.{GOOD_SIG}", id="payload_not_utf8"),
        pytest.param(f"{GOOD_HEAD}.{part('[' * 3000)}.{GOOD_SIG}", id="payload_deeply_nested"),
    ],
)
def test_denies_a_structurally_malformed_token(verifier: Verifier, token: str) -> None:
    assert verifier.reason(token) is Reason.TOKEN_MALFORMED


@pytest.mark.parametrize(
    "crit",
    [
        pytest.param({"crit": ["exp"], "exp": NOW + 300}, id="crit_exp"),
        pytest.param({"crit": ["b64"], "b64": True}, id="crit_b64"),
        pytest.param({"crit": []}, id="crit_empty"),
    ],
)
def test_denies_a_validly_signed_token_with_a_critical_header(
    verifier: Verifier, mint: Mint, crit: dict[str, Any]
) -> None:
    assert verifier.reason(mint(hdr=crit)) is Reason.TOKEN_MALFORMED


def _signed_raw(signing_keys: dict[str, Any], head_json: str, body_json: str) -> str:
    signing_input = f"{part(head_json)}.{part(body_json)}"
    signature = ALGORITHMS["RS256"].sign(signing_input.encode(), signing_keys["rsa-1"])
    return f"{signing_input}.{b64url(signature)}"


HEAD_JSON = json.dumps(header())
BODY_JSON = json.dumps(payload())


@pytest.mark.parametrize(
    ("head_json", "body_json"),
    [
        pytest.param(
            '{"alg":"none","alg":"RS256","typ":"at+jwt","kid":"rsa-1"}',
            BODY_JSON,
            id="header_alg_twice",
        ),
        pytest.param(
            HEAD_JSON, BODY_JSON[:-1] + ', "sub": "admin"}', id="payload_sub_twice_last_admin"
        ),
        pytest.param(
            HEAD_JSON, BODY_JSON[:-1] + ', "aud": "https://other.example"}', id="payload_aud_twice"
        ),
        pytest.param(
            HEAD_JSON,
            BODY_JSON[:-1] + ', "act": {"sub": "bot", "sub": "admin-bot"}}',
            id="nested_act_sub_twice",
        ),
    ],
)
def test_denies_a_validly_signed_token_with_duplicate_member_names(
    verifier: Verifier, signing_keys: dict[str, Any], head_json: str, body_json: str
) -> None:
    token = _signed_raw(signing_keys, head_json, body_json)

    assert verifier.reason(token) is Reason.TOKEN_MALFORMED


@pytest.mark.parametrize(
    "member",
    [
        pytest.param('"note": NaN', id="nan"),
        pytest.param('"note": Infinity', id="infinity"),
        pytest.param('"note": 1e400', id="number_beyond_double"),
        pytest.param('"note": "\\ud800"', id="lone_surrogate_escape"),
    ],
)
def test_denies_a_validly_signed_token_whose_json_is_not_interoperable(
    verifier: Verifier, signing_keys: dict[str, Any], member: str
) -> None:
    # Not JSON (RFC 8259 has no NaN), or JSON that parsers read differently (RFC 7493 §2.1,
    # §2.2): refused, even in a claim nothing here reads.
    token = _signed_raw(signing_keys, HEAD_JSON, BODY_JSON[:-1] + f", {member}}}")

    assert verifier.reason(token) is Reason.TOKEN_MALFORMED


def test_a_validly_signed_token_with_a_huge_integer_claim_is_fine(
    verifier: Verifier, signing_keys: dict[str, Any]
) -> None:
    token = _signed_raw(signing_keys, HEAD_JSON, BODY_JSON[:-1] + ', "note": 1' + "0" * 40 + "}")

    assert verifier.reason(token) is Reason.ALLOWED


def _token_of_length(mint: Mint, length: int) -> str:
    """A validly signed Ed25519 token close to ``length`` characters (never longer)."""
    base = len(mint("ed25519-1", pad=""))
    pad = "x" * ((length - base) * 3 // 4)
    token = mint("ed25519-1", pad=pad)
    while len(token) > length:
        pad = pad[:-1]
        token = mint("ed25519-1", pad=pad)
    return token


def test_denies_a_validly_signed_token_longer_than_16_kib(verifier: Verifier, mint: Mint) -> None:
    token = mint("ed25519-1", pad="x" * MAX_TOKEN_LENGTH)

    assert len(token) > 16 * 1024
    assert verifier.reason(token) is Reason.TOKEN_MALFORMED


def test_accepts_a_validly_signed_token_just_under_16_kib(verifier: Verifier, mint: Mint) -> None:
    token = _token_of_length(mint, 16 * 1024)

    assert 16 * 1024 - 4 <= len(token) <= 16 * 1024
    assert verifier.reason(token) is Reason.ALLOWED


def test_16_kib_limit_is_checked_before_anything_else(verifier: Verifier) -> None:
    assert verifier.reason("x" * (16 * 1024 + 1)) is Reason.TOKEN_MALFORMED


# --- required claims and their types -----------------------------------------------------


@pytest.mark.parametrize("claim", ["exp", "iat", "sub"])
def test_denies_a_token_missing_a_required_claim(
    verifier: Verifier, mint: Mint, claim: str
) -> None:
    assert verifier.reason(mint(**{claim: None})) is Reason.TOKEN_CLAIM_MISSING


def test_a_token_without_nbf_jti_or_scope_is_fine(verifier: Verifier, mint: Mint) -> None:
    assert verifier.reason(mint(jti=None, scope=None)) is Reason.ALLOWED


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"exp": str(NOW + 300)}, id="exp_a_string"),
        pytest.param({"exp": True}, id="exp_a_boolean"),
        pytest.param({"exp": [NOW + 300]}, id="exp_a_list"),
        pytest.param({"exp": float("inf")}, id="exp_infinity"),
        pytest.param({"exp": float("nan")}, id="exp_nan"),
        pytest.param({"iat": "now"}, id="iat_a_string"),
        pytest.param({"nbf": "soon"}, id="nbf_a_string"),
        pytest.param({"nbf": {"t": NOW}}, id="nbf_an_object"),
        pytest.param({"sub": 42}, id="sub_a_number"),
        pytest.param({"sub": ""}, id="sub_empty"),
        pytest.param({"sub": ["alice"]}, id="sub_a_list"),
    ],
)
def test_denies_claims_of_the_wrong_type_as_malformed(
    verifier: Verifier, mint: Mint, claims: dict[str, Any]
) -> None:
    assert verifier.reason(mint(**claims)) is Reason.TOKEN_MALFORMED


def test_denies_a_null_exp_as_malformed_not_missing(verifier: Verifier, signing_keys: Any) -> None:
    body = json.dumps({**payload(), "exp": None})

    token = _signed_raw(signing_keys, HEAD_JSON, body)

    assert verifier.reason(token) is Reason.TOKEN_MALFORMED


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
def test_denies_a_time_claim_too_large_for_a_float_as_malformed(
    verifier: Verifier, mint: Mint, claim: str
) -> None:
    """A JSON integer with 400 digits parses as a Python int that no float can hold."""
    assert verifier.reason(mint(**{claim: 10**400})) is Reason.TOKEN_MALFORMED


@pytest.mark.parametrize(
    "aud",
    [pytest.param(42, id="a_number"), pytest.param({"aud": AUD}, id="an_object")],
)
def test_denies_an_aud_that_is_neither_string_nor_list_as_malformed(
    verifier: Verifier, mint: Mint, aud: object
) -> None:
    assert verifier.reason(mint(aud=aud)) is Reason.TOKEN_MALFORMED


# --- time: exp, nbf, iat, leeway, lifetime -----------------------------------------------


@pytest.mark.parametrize(
    ("exp_offset", "expected"),
    [
        pytest.param(300, Reason.ALLOWED, id="valid_for_5_more_minutes"),
        pytest.param(1, Reason.ALLOWED, id="expires_in_a_second"),
        pytest.param(0, Reason.ALLOWED, id="expires_now_within_leeway"),
        pytest.param(-29, Reason.ALLOWED, id="expired_29s_ago_within_30s_leeway"),
        pytest.param(-30, Reason.TOKEN_EXPIRED, id="expired_30s_ago_at_the_leeway"),
        pytest.param(-31, Reason.TOKEN_EXPIRED, id="expired_31s_ago"),
        pytest.param(-86400, Reason.TOKEN_EXPIRED, id="expired_yesterday"),
    ],
)
def test_expiry_honours_the_leeway(
    verifier: Verifier, mint: Mint, exp_offset: int, expected: Reason
) -> None:
    exp = NOW + exp_offset
    assert verifier.reason(mint(exp=exp, iat=exp - 600)) is expected


def test_zero_leeway_expires_a_token_at_exp(
    verifier_for: Callable[..., Verifier], mint: Mint
) -> None:
    strict = verifier_for(leeway="0s")

    assert strict.reason(mint(iat=NOW - 60, exp=NOW + 1)) is Reason.ALLOWED
    assert strict.reason(mint(iat=NOW - 60, exp=NOW)) is Reason.TOKEN_EXPIRED


@pytest.mark.parametrize(
    ("nbf_offset", "expected"),
    [
        pytest.param(-60, Reason.ALLOWED, id="valid_since_a_minute"),
        pytest.param(30, Reason.ALLOWED, id="valid_in_30s_within_leeway"),
        pytest.param(31, Reason.TOKEN_NOT_YET_VALID, id="valid_in_31s"),
        pytest.param(3600, Reason.TOKEN_NOT_YET_VALID, id="valid_in_an_hour"),
    ],
)
def test_nbf_honours_the_leeway(
    verifier: Verifier, mint: Mint, nbf_offset: int, expected: Reason
) -> None:
    assert verifier.reason(mint(nbf=NOW + nbf_offset)) is expected


@pytest.mark.parametrize(
    ("iat_offset", "expected"),
    [
        pytest.param(30, Reason.ALLOWED, id="issued_30s_ahead_within_leeway"),
        pytest.param(31, Reason.TOKEN_NOT_YET_VALID, id="issued_31s_in_the_future"),
    ],
)
def test_iat_in_the_future_beyond_leeway_is_not_yet_valid(
    verifier: Verifier, mint: Mint, iat_offset: int, expected: Reason
) -> None:
    iat = NOW + iat_offset
    assert verifier.reason(mint(iat=iat, exp=iat + 300)) is expected


def test_a_wider_leeway_is_honoured_both_ways(
    verifier_for: Callable[..., Verifier], mint: Mint
) -> None:
    lenient = verifier_for(leeway="2m")

    assert lenient.reason(mint(iat=NOW - 400, exp=NOW - 100)) is Reason.ALLOWED
    assert lenient.reason(mint(nbf=NOW + 100)) is Reason.ALLOWED
    assert lenient.reason(mint(nbf=NOW + 121)) is Reason.TOKEN_NOT_YET_VALID
    assert lenient.reason(mint(iat=NOW - 400, exp=NOW - 120)) is Reason.TOKEN_EXPIRED


@pytest.mark.parametrize(
    ("lifetime", "expected"),
    [
        pytest.param(3600, Reason.ALLOWED, id="exactly_max_lifetime"),
        pytest.param(3601, Reason.TOKEN_LIFETIME_TOO_LONG, id="one_second_over"),
        pytest.param(86400 * 365, Reason.TOKEN_LIFETIME_TOO_LONG, id="a_year"),
    ],
)
def test_lifetime_is_limited_by_default_to_an_hour(
    verifier: Verifier, mint: Mint, lifetime: int, expected: Reason
) -> None:
    assert verifier.reason(mint(iat=NOW - 10, exp=NOW - 10 + lifetime)) is expected


def test_max_lifetime_is_configurable(verifier_for: Callable[..., Verifier], mint: Mint) -> None:
    short = verifier_for(max_lifetime="10m")

    assert short.reason(mint(iat=NOW, exp=NOW + 600)) is Reason.ALLOWED
    assert short.reason(mint(iat=NOW, exp=NOW + 601)) is Reason.TOKEN_LIFETIME_TOO_LONG


# --- audience ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("aud", "expected"),
    [
        pytest.param(AUD, Reason.ALLOWED, id="string_equal"),
        pytest.param([AUD], Reason.ALLOWED, id="list_of_one"),
        pytest.param(["https://other.example.test", AUD], Reason.ALLOWED, id="list_containing"),
        pytest.param("https://other.example.test", Reason.TOKEN_WRONG_AUDIENCE, id="other"),
        pytest.param(AUD + "/", Reason.TOKEN_WRONG_AUDIENCE, id="trailing_slash"),
        pytest.param(AUD.upper(), Reason.TOKEN_WRONG_AUDIENCE, id="different_case"),
        pytest.param(
            ["https://other.example.test"], Reason.TOKEN_WRONG_AUDIENCE, id="list_lacking"
        ),
        pytest.param([], Reason.TOKEN_WRONG_AUDIENCE, id="empty_list"),
        pytest.param(None, Reason.TOKEN_WRONG_AUDIENCE, id="missing"),
    ],
)
def test_audience_must_contain_the_resources_audience(
    verifier: Verifier, mint: Mint, aud: object, expected: Reason
) -> None:
    assert verifier.reason(mint(aud=aud)) is expected


def test_no_resource_audience_skips_the_audience_step(verifier: Verifier, mint: Mint) -> None:
    assert verifier.reason(mint(aud="https://other.example.test"), audience=None) is (
        Reason.ALLOWED
    )


# --- issuer ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "iss",
    [
        pytest.param(EVIL, id="unknown"),
        pytest.param(ISS + "/", id="trailing_slash"),
        pytest.param(ISS.upper(), id="different_case"),
        pytest.param(None, id="missing"),
        pytest.param(42, id="a_number"),
        pytest.param([ISS], id="a_list"),
    ],
)
def test_denies_an_issuer_that_is_not_configured_exactly(
    verifier: Verifier, mint: Mint, iss: object
) -> None:
    assert verifier.reason(mint(iss=iss)) is Reason.TOKEN_WRONG_ISSUER


# --- the check order: two faults, the earlier check wins ----------------------------------


def _bad_sig(mint: Mint, **claims: Any) -> str:
    return _drop_signature(mint(**claims)) + b64url(b"\x00" * 256)


ORDER_CASES = [
    pytest.param(
        lambda m: m(hdr={"crit": ["exp"]}, iss=EVIL),
        Reason.TOKEN_MALFORMED,
        id="malformed_before_wrong_issuer",
    ),
    pytest.param(
        lambda m: forge(header(alg="none"), payload(iss=EVIL), signature=b""),
        Reason.TOKEN_WRONG_ISSUER,
        id="wrong_issuer_before_alg_none",
    ),
    pytest.param(
        lambda m: m(iss=EVIL, iat=NOW - 7200, exp=NOW - 3600),
        Reason.TOKEN_WRONG_ISSUER,
        id="wrong_issuer_before_expired",
    ),
    pytest.param(
        lambda m: _bad_sig(m, iss=EVIL), Reason.TOKEN_WRONG_ISSUER, id="wrong_issuer_before_bad_sig"
    ),
    pytest.param(
        lambda m: forge(header(alg="none", typ="JWT"), payload(), signature=b""),
        Reason.TOKEN_ALGORITHM_NOT_ALLOWED,
        id="alg_not_allowed_before_wrong_typ",
    ),
    pytest.param(
        lambda m: m("rsa-1", alg="RS512", hdr={"kid": "nope"}),
        Reason.TOKEN_ALGORITHM_NOT_ALLOWED,
        id="alg_not_allowed_before_unknown_kid",
    ),
    pytest.param(
        lambda m: m(hdr={"typ": "JWT", "kid": "nope"}),
        Reason.TOKEN_WRONG_TYPE,
        id="wrong_typ_before_unknown_kid",
    ),
    pytest.param(
        lambda m: m(hdr={"typ": "JWT"}, iss=NO_KEYS),
        Reason.TOKEN_WRONG_TYPE,
        id="wrong_typ_before_keys_unavailable",
    ),
    pytest.param(
        lambda m: m("ec-1", hdr={"typ": "JWT", "kid": "rsa-1"}),
        Reason.TOKEN_WRONG_TYPE,
        id="wrong_typ_before_key_not_fitting_alg",
    ),
    pytest.param(
        lambda m: _bad_sig(m, iss=NO_KEYS), Reason.KEYS_UNAVAILABLE, id="no_keys_before_bad_sig"
    ),
    pytest.param(
        lambda m: _bad_sig(lambda **c: m(hdr={"kid": "nope"}, **c)),
        Reason.KEY_UNKNOWN,
        id="unknown_kid_before_bad_sig",
    ),
    pytest.param(
        lambda m: _bad_sig(lambda **c: m("ec-1", hdr={"kid": "rsa-1"}, **c)),
        Reason.TOKEN_ALGORITHM_NOT_ALLOWED,
        id="key_not_fitting_alg_before_bad_sig",
    ),
    pytest.param(
        lambda m: _bad_sig(m, exp=None),
        Reason.TOKEN_INVALID_SIGNATURE,
        id="bad_sig_before_missing_claim",
    ),
    pytest.param(
        lambda m: _bad_sig(m, exp="tomorrow"),
        Reason.TOKEN_INVALID_SIGNATURE,
        id="bad_sig_before_wrong_claim_type",
    ),
    pytest.param(
        lambda m: _bad_sig(m, iat=NOW - 7200, exp=NOW - 3600),
        Reason.TOKEN_INVALID_SIGNATURE,
        id="bad_sig_before_expired",
    ),
    pytest.param(
        lambda m: _bad_sig(m, aud="https://other.example.test"),
        Reason.TOKEN_INVALID_SIGNATURE,
        id="bad_sig_before_wrong_audience",
    ),
    pytest.param(
        lambda m: m(iat=None, exp=NOW - 3600),
        Reason.TOKEN_CLAIM_MISSING,
        id="missing_iat_before_expired",
    ),
    pytest.param(
        lambda m: m(sub=None, iat=NOW - 7200, exp=NOW - 3600),
        Reason.TOKEN_CLAIM_MISSING,
        id="missing_sub_before_expired",
    ),
    pytest.param(
        lambda m: m(exp="tomorrow", aud="https://other.example.test"),
        Reason.TOKEN_MALFORMED,
        id="exp_of_wrong_type_before_wrong_audience",
    ),
    pytest.param(
        lambda m: m(iat=NOW - 7200, exp=NOW - 3600, nbf=NOW + 3600),
        Reason.TOKEN_EXPIRED,
        id="expired_before_not_yet_valid",
    ),
    pytest.param(
        lambda m: m(iat=NOW - 86400, exp=NOW - 3600),
        Reason.TOKEN_EXPIRED,
        id="expired_before_lifetime_too_long",
    ),
    pytest.param(
        lambda m: m(iat=NOW - 7200, exp=NOW - 3600, aud="https://other.example.test"),
        Reason.TOKEN_EXPIRED,
        id="expired_before_wrong_audience",
    ),
    pytest.param(
        lambda m: m(nbf=NOW + 600, iat=NOW, exp=NOW + 86400),
        Reason.TOKEN_NOT_YET_VALID,
        id="not_yet_valid_before_lifetime_too_long",
    ),
    pytest.param(
        lambda m: m(nbf=NOW + 600, aud="https://other.example.test"),
        Reason.TOKEN_NOT_YET_VALID,
        id="not_yet_valid_before_wrong_audience",
    ),
    pytest.param(
        lambda m: m(iat=NOW, exp=NOW + 86400, aud="https://other.example.test"),
        Reason.TOKEN_LIFETIME_TOO_LONG,
        id="lifetime_too_long_before_wrong_audience",
    ),
]


@pytest.mark.parametrize(("make_token", "expected"), ORDER_CASES)
def test_reports_the_earlier_check_when_a_token_has_two_faults(
    verifier: Verifier, mint: Mint, make_token: Callable[[Mint], str], expected: Reason
) -> None:
    assert verifier.reason(make_token(mint)) is expected


def test_denies_expired_token_even_when_audience_is_also_wrong(
    verifier: Verifier, mint: Mint
) -> None:
    token = mint(iat=NOW - 7200, exp=NOW - 3600, aud="https://other.example.test")

    assert verifier.reason(token) is Reason.TOKEN_EXPIRED


# --- the Authorization header ------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "expected"),
    [
        pytest.param("Bearer abc.def.ghi", "abc.def.ghi", id="bearer"),
        pytest.param("bearer abc.def.ghi", "abc.def.ghi", id="lower_case_scheme"),
        pytest.param("BEARER abc.def.ghi", "abc.def.ghi", id="upper_case_scheme"),
        pytest.param("  Bearer   abc.def.ghi  ", "abc.def.ghi", id="surrounding_spaces"),
    ],
)
def test_takes_the_token_from_a_bearer_header(authorization: str, expected: str) -> None:
    assert bearer_token(authorization) == expected


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="no_header"),
        pytest.param("", id="empty_header"),
        pytest.param("Basic YWxpY2U6c2VjcmV0", id="basic"),
        pytest.param("abc.def.ghi", id="token_without_scheme"),
        pytest.param("Bearerabc.def.ghi", id="scheme_glued_to_token"),
    ],
)
def test_no_bearer_credential_is_token_missing(authorization: str | None) -> None:
    with pytest.raises(TokenRejected) as caught:
        bearer_token(authorization)

    assert caught.value.reason is Reason.TOKEN_MISSING


@pytest.mark.parametrize("authorization", ["Bearer", "Bearer    "])
def test_a_bearer_header_without_a_token_is_malformed(authorization: str) -> None:
    with pytest.raises(TokenRejected) as caught:
        bearer_token(authorization)

    assert caught.value.reason is Reason.TOKEN_MALFORMED


# --- encodings, binding, look-alike names ------------------------------------------------


def test_denies_a_signature_with_non_canonical_trailing_bits_as_malformed(
    verifier: Verifier, mint: Mint
) -> None:
    # RS256 signatures are 256 bytes: 342 characters whose last one carries 2 unused bits.
    # Setting them gives a second spelling of the same bytes, which must not be accepted.
    head, body, sig = mint("rsa-1").split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(sig[-1])
    respelt = f"{head}.{body}.{sig[:-1]}{alphabet[last | 1]}"
    assert respelt != f"{head}.{body}.{sig}"
    assert base64.urlsafe_b64decode(respelt.split(".")[2] + "==") == base64.urlsafe_b64decode(
        sig + "=="
    )

    assert verifier.reason(respelt) is Reason.TOKEN_MALFORMED


def test_denies_a_key_bound_token_presented_as_bearer(verifier: Verifier, mint: Mint) -> None:
    for cnf in ({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}, {"x5t#S256": "abc"}):
        assert verifier.reason(mint("rsa-1", cnf=cnf)) is Reason.TOKEN_BINDING_UNSUPPORTED


def test_key_bound_token_is_checked_after_expiry(verifier: Verifier, mint: Mint) -> None:
    token = mint("rsa-1", cnf={"jkt": "x"}, iat=NOW - 600, exp=NOW - 300)
    assert verifier.reason(token) is Reason.TOKEN_EXPIRED


@pytest.mark.parametrize(
    "extra",
    # JSON escapes in the raw payload text: a NUL suffix and a long s (U+017F), which
    # case-folds to "s".
    [{"Sub": "admin"}, {"sub\\u0000": "admin"}, {"\\u017fub": "admin"}],
    ids=["case", "nul-suffix", "long-s"],
)
def test_denies_signed_claims_whose_names_collide_for_a_lenient_parser(
    verifier: Verifier, signing_keys: dict[str, Any], extra: dict[str, str]
) -> None:
    name, value = next(iter(extra.items()))
    body = json.dumps(payload(), separators=(",", ":"))[:-1] + f',"{name}":"{value}"}}'
    token = forge(header(), body, signing_keys["rsa-1"])
    assert verifier.reason(token) is Reason.TOKEN_MALFORMED


@pytest.mark.parametrize(
    "encode",
    [
        lambda text: b"\xef\xbb\xbf" + text.encode(),
        lambda text: text.encode("utf-16"),
        lambda text: text.encode("utf-32"),
    ],
    ids=["utf-8-bom", "utf-16", "utf-32"],
)
def test_denies_json_that_is_not_plain_utf8(
    verifier: Verifier, signing_keys: dict[str, Any], encode: Callable[[str], bytes]
) -> None:
    body = encode(json.dumps(payload()))
    token = forge(header(), body, signing_keys["rsa-1"])
    assert verifier.reason(token) is Reason.TOKEN_MALFORMED


@pytest.mark.parametrize("length", range(1, 7))
def test_every_spelling_of_a_part_but_the_canonical_one_is_malformed(length: int) -> None:
    # A part of n bytes leaves 0, 4 or 2 bits unused in its last character (RFC 4648
    # §3.5); each other setting of them spells the same bytes and must be refused.
    data = bytes(range(200, 200 + length))
    canonical = base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    assert _b64decode(canonical, "payload") == data
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    unused_bits = {0: 0, 2: 4, 3: 2}[len(canonical) % 4]
    last = alphabet.index(canonical[-1])
    for setting in range(1, 2**unused_bits):
        spelling = canonical[:-1] + alphabet[last | setting]
        with pytest.raises(TokenRejected) as refused:
            _b64decode(spelling, "payload")
        assert refused.value.reason is Reason.TOKEN_MALFORMED


def _claims_reason(check: Callable[[], object]) -> Reason:
    try:
        check()
    except TokenRejected as rejected:
        return rejected.reason
    return Reason.ALLOWED


_time_claim = st.one_of(
    st.integers(NOW - 7200, NOW + 7200),
    st.floats(NOW - 7200, NOW + 7200),
    st.sampled_from(["soon", True, None, 1e400]),
)


@settings(max_examples=1500, deadline=None)
@given(
    exp=_time_claim,
    iat=_time_claim,
    nbf=st.none() | _time_claim,
    audience=st.sampled_from([AUD, "https://other.example.test", None]),
    first=st.integers(NOW - 7200, NOW + 7200),
    later=st.integers(NOW - 7200, NOW + 7200),
)
def test_a_token_that_passed_its_claims_is_checked_again_with_the_same_reasons(
    exp: object, iat: object, nbf: object, audience: str | None, first: int, later: int
) -> None:
    # A verified token remembers its times once its claims passed, and later requests
    # check only those: at any later time they must say what the full check says.
    claims: dict[str, object] = {"sub": "alice", "aud": AUD, "exp": exp, "iat": iat}
    if nbf is not None:
        claims["nbf"] = nbf
    policy = TokenPolicy()
    try:
        times = validate_claims(claims, policy, audience, first)
    except TokenRejected:
        return  # nothing is remembered of a token whose claims failed
    assert _claims_reason(lambda: validate_claim_times(times, policy, later)) == _claims_reason(
        lambda: validate_claims(claims, policy, audience, later)
    )


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_every_canonical_part_decodes_to_its_bytes(data: bytes) -> None:
    canonical = base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    assert _b64decode(canonical, "payload") == data


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet="ABCXYZabcxyz0189-_+/=.~ é\x00", max_size=40))
def test_a_part_decodes_only_as_the_standard_decoder_reads_its_one_canonical_spelling(
    text: str,
) -> None:
    try:
        decoded = _b64decode(text, "payload")
    except TokenRejected as refused:
        assert refused.reason is Reason.TOKEN_MALFORMED
        return
    assert base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)) == decoded
    assert base64.urlsafe_b64encode(decoded).rstrip(b"=").decode() == text


# --- headers of verified tokens, remembered -----------------------------------------------


def test_a_token_under_a_remembered_header_still_has_its_own_signature_checked(
    verifier: Verifier, signing_keys: dict[str, Any]
) -> None:
    good = forge(header(), payload(), signing_keys["rsa-1"])
    assert verifier.reason(good) is Reason.ALLOWED
    assert good.split(".")[0] in verify_module._SIGNED_HEADERS

    head, _, signature = good.split(".")
    # The same header part, other claims, the first token's signature.
    forged = f"{head}.{part(payload(sub='admin'))}.{signature}"
    assert verifier.reason(forged) is Reason.TOKEN_INVALID_SIGNATURE
    assert verifier.verify(good).header == header()


def test_a_header_is_remembered_only_from_a_token_that_verified(
    verifier: Verifier, signing_keys: dict[str, Any]
) -> None:
    unsigned_header = header(x="never signed")
    forged = forge(unsigned_header, payload(), signature=b"\x01" * 256)
    assert verifier.reason(forged) is Reason.TOKEN_INVALID_SIGNATURE
    assert part(unsigned_header) not in verify_module._SIGNED_HEADERS
    # One whose strict parse fails after a good signature (a repeated member) neither.
    repeated = '{"alg":"RS256","typ":"at+jwt","kid":"rsa-1","kid":"rsa-1"}'
    signing_input = f"{part(repeated)}.{part(payload())}"
    signature = ALGORITHMS["RS256"].sign(signing_input.encode(), signing_keys["rsa-1"])
    token = f"{signing_input}.{b64url(signature)}"
    assert verifier.reason(token) is Reason.TOKEN_MALFORMED
    assert part(repeated) not in verify_module._SIGNED_HEADERS


def test_remembered_headers_are_bounded(
    verifier: Verifier, signing_keys: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify_module, "_MAX_SIGNED_HEADERS", 4)
    for n in range(10):
        token = forge(header(x=n), payload(), signing_keys["rsa-1"])
        assert verifier.reason(token) is Reason.ALLOWED
        assert len(verify_module._SIGNED_HEADERS) <= 4
