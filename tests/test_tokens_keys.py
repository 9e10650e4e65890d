"""JWKS parsing and key/algorithm fit: keys come from configuration only, chosen by kid."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, x25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from extauthz.demo.issuer import LocalIssuer, public_jwk
from extauthz.errors import ConfigError
from extauthz.tokens.keys import KeySet, VerificationKey, load_jwks_file, parse_jwks

SOURCE = "/etc/extauthz/keys/idp.json"
ALL_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")


@pytest.fixture(scope="module")
def p384_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def small_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwks_of(*keys: dict[str, Any]) -> dict[str, Any]:
    return {"keys": list(keys)}


def config_error(document: object) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_jwks(document, SOURCE)
    return caught.value


# --- parsing the issuer's real keys ------------------------------------------------------


def test_parses_one_public_key_per_kid_from_the_local_issuer(local_issuer: LocalIssuer) -> None:
    keys = parse_jwks(local_issuer.jwks(), SOURCE)

    assert set(keys) == {"rsa-1", "ec-1", "ed25519-1"}
    assert isinstance(keys["rsa-1"].key, rsa.RSAPublicKey)
    assert isinstance(keys["ec-1"].key, ec.EllipticCurvePublicKey)
    assert keys["ec-1"].key.curve.name == "secp256r1"
    assert isinstance(keys["ed25519-1"].key, ed25519.Ed25519PublicKey)
    assert all(k.kid == kid and k.alg is None for kid, k in keys.items())


def test_parsed_public_key_equals_the_issuers_public_key(local_issuer: LocalIssuer) -> None:
    keys = parse_jwks(local_issuer.jwks(), SOURCE)
    expected = local_issuer.keys["rsa-1"].public_key().public_numbers()

    parsed = keys["rsa-1"].key
    assert isinstance(parsed, rsa.RSAPublicKey)
    assert parsed.public_numbers() == expected


def test_records_the_alg_a_jwk_pins(local_issuer: LocalIssuer) -> None:
    jwk = {**public_jwk(local_issuer.keys["rsa-1"], "rsa-1"), "alg": "PS256"}

    assert parse_jwks(jwks_of(jwk), SOURCE)["rsa-1"].alg == "PS256"


def test_accepts_a_key_without_use_as_a_signing_key(local_issuer: LocalIssuer) -> None:
    jwk = public_jwk(local_issuer.keys["ec-1"], "ec-1")
    del jwk["use"]

    assert set(parse_jwks(jwks_of(jwk), SOURCE)) == {"ec-1"}


def test_skips_encryption_keys(local_issuer: LocalIssuer) -> None:
    enc = {**public_jwk(local_issuer.keys["rsa-1"], "rsa-enc"), "use": "enc"}
    sig = public_jwk(local_issuer.keys["ec-1"], "ec-1")

    assert set(parse_jwks(jwks_of(enc, sig), SOURCE)) == {"ec-1"}


def test_skips_symmetric_keys_even_though_they_hold_a_secret() -> None:
    oct_key = {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ", "kid": "hmac-1"}
    oct_without_kid = {"kty": "oct", "k": "c2VjcmV0"}

    assert parse_jwks(jwks_of(oct_key, oct_without_kid), SOURCE) == {}


# --- rejected documents: ConfigError naming file and key path ----------------------------


@pytest.mark.parametrize(
    "document",
    [
        pytest.param([], id="top_level_list"),
        pytest.param({}, id="no_keys_member"),
        pytest.param({"keys": {"kid": "x"}}, id="keys_not_a_list"),
        pytest.param("keys", id="a_string"),
    ],
)
def test_rejects_a_document_that_is_not_a_jwks(document: object) -> None:
    err = config_error(document)

    assert err.file == SOURCE
    assert err.key == "keys"


def test_rejects_a_key_entry_that_is_not_an_object(local_issuer: LocalIssuer) -> None:
    err = config_error(jwks_of(public_jwk(local_issuer.keys["ec-1"], "ec-1"), "rsa-1"))

    assert (err.file, err.key) == (SOURCE, "keys[1]")


@pytest.mark.parametrize("kind", ["rsa-1", "ec-1", "ed25519-1"])
def test_rejects_private_key_material(local_issuer: LocalIssuer, kind: str) -> None:
    private = local_issuer.keys[kind]
    if isinstance(private, rsa.RSAPrivateKey):
        jwk = RSAAlgorithm.to_jwk(private, as_dict=True)
    elif isinstance(private, ec.EllipticCurvePrivateKey):
        jwk = ECAlgorithm.to_jwk(private, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(private, as_dict=True)
    assert "d" in jwk
    good = public_jwk(local_issuer.keys["ec-1"], "ec-good")

    err = config_error(jwks_of(good, {**jwk, "kid": kind, "use": "sig"}))

    assert (err.file, err.key) == (SOURCE, "keys[1]")
    assert "private" in err.problem
    assert SOURCE in str(err) and "keys[1]" in str(err)


def test_rejects_duplicate_kids_naming_the_second_one(local_issuer: LocalIssuer) -> None:
    first = public_jwk(local_issuer.keys["rsa-1"], "shared")
    second = public_jwk(local_issuer.keys["ec-1"], "shared")

    err = config_error(jwks_of(first, second))

    assert (err.file, err.key) == (SOURCE, "keys[1].kid")
    assert "shared" in err.problem


@pytest.mark.parametrize(
    "kid",
    [pytest.param(None, id="absent"), pytest.param("", id="empty"), pytest.param(7, id="number")],
)
def test_rejects_a_signing_key_without_a_usable_kid(local_issuer: LocalIssuer, kid: object) -> None:
    good = public_jwk(local_issuer.keys["rsa-1"], "rsa-1")
    bad = public_jwk(local_issuer.keys["ec-1"], "ignored")
    if kid is None:
        del bad["kid"]
    else:
        bad["kid"] = kid

    err = config_error(jwks_of(good, bad))

    assert (err.file, err.key) == (SOURCE, "keys[1].kid")


def test_rejects_an_alg_that_is_not_a_string(local_issuer: LocalIssuer) -> None:
    jwk = {**public_jwk(local_issuer.keys["rsa-1"], "rsa-1"), "alg": ["RS256"]}

    err = config_error(jwks_of(jwk))

    assert err.key == "keys[0].alg"


def test_rejects_an_unsupported_key_type_naming_kty() -> None:
    err = config_error(jwks_of({"kty": "XYZ", "kid": "k1", "x": "AAAA"}))

    assert (err.file, err.key) == (SOURCE, "keys[0].kty")


def _broken_rsa(jwk: dict[str, Any]) -> dict[str, Any]:
    return {**jwk, "n": "AA"}


def _rsa_missing_e(jwk: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in jwk.items() if k != "e"}


def _ec_point_off_curve(jwk: dict[str, Any]) -> dict[str, Any]:
    return {**jwk, "y": jwk["x"]}


def _ec_unknown_curve(jwk: dict[str, Any]) -> dict[str, Any]:
    return {**jwk, "crv": "P-999"}


def _okp_short_key(jwk: dict[str, Any]) -> dict[str, Any]:
    return {**jwk, "x": "AAAA"}


@pytest.mark.parametrize(
    ("kid", "breaker"),
    [
        pytest.param("rsa-1", _broken_rsa, id="rsa_modulus_too_small_to_be_a_key"),
        pytest.param("rsa-1", _rsa_missing_e, id="rsa_without_exponent"),
        pytest.param("ec-1", _ec_point_off_curve, id="ec_point_not_on_curve"),
        pytest.param("ec-1", _ec_unknown_curve, id="ec_unknown_curve"),
        pytest.param("ed25519-1", _okp_short_key, id="okp_key_too_short"),
    ],
)
def test_rejects_a_broken_key_naming_its_position(
    local_issuer: LocalIssuer, kid: str, breaker: Any
) -> None:
    good = public_jwk(local_issuer.keys["rsa-1"], "good")
    bad = breaker(public_jwk(local_issuer.keys[kid], kid))

    err = config_error(jwks_of(good, bad))

    assert err.file == SOURCE
    assert err.key.startswith("keys[1]")


def test_rejects_a_key_agreement_key_posing_as_a_signing_key() -> None:
    raw = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
    jwk = {"kty": "OKP", "crv": "X25519", "x": b64url(raw), "kid": "x-1", "use": "sig"}

    err = config_error(jwks_of(jwk))

    assert err.key.startswith("keys[0]")


# --- loading a JWKS file -----------------------------------------------------------------


def test_loads_a_jwks_file_into_a_key_set(local_issuer: LocalIssuer, tmp_path: Path) -> None:
    path = local_issuer.write_jwks(tmp_path / "jwks.json")

    key_set = load_jwks_file("https://idp.example.test", path)

    assert isinstance(key_set, KeySet)
    assert key_set.issuer == "https://idp.example.test"
    assert key_set.source == str(path)
    assert set(key_set.keys) == {"rsa-1", "ec-1", "ed25519-1"}


def test_loading_a_missing_jwks_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"

    with pytest.raises(ConfigError) as caught:
        load_jwks_file("https://idp.example.test", path)

    assert caught.value.file == str(path)


def test_loading_a_jwks_file_that_is_not_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text("{not json")

    with pytest.raises(ConfigError) as caught:
        load_jwks_file("https://idp.example.test", path)

    assert caught.value.file == str(path)


def test_a_jwks_file_with_no_signing_key_is_an_error(
    local_issuer: LocalIssuer, tmp_path: Path
) -> None:
    path = tmp_path / "jwks.json"
    enc_only = {**public_jwk(local_issuer.keys["rsa-1"], "enc-1"), "use": "enc"}
    path.write_text(json.dumps(jwks_of(enc_only)))

    with pytest.raises(ConfigError) as caught:
        load_jwks_file("https://idp.example.test", path)

    assert (caught.value.file, caught.value.key) == (str(path), "keys")


def test_a_bad_key_in_a_jwks_file_is_reported_with_file_and_key_path(
    local_issuer: LocalIssuer, tmp_path: Path
) -> None:
    path = tmp_path / "jwks.json"
    good = public_jwk(local_issuer.keys["rsa-1"], "rsa-1")
    path.write_text(json.dumps(jwks_of(good, {**good, "kid": "rsa-1"})))

    with pytest.raises(ConfigError, match=r"jwks\.json: keys\[1\]\.kid: duplicate kid"):
        load_jwks_file("https://idp.example.test", path)


# --- which algorithm a key may verify ----------------------------------------------------


def _fitting(key: VerificationKey) -> set[str]:
    return {alg for alg in (*ALL_ALGS, "EdDSA", "HS256", "none") if key.fits(alg)}


def test_rsa_key_fits_only_rsa_algorithms(local_issuer: LocalIssuer) -> None:
    key = VerificationKey("rsa-1", local_issuer.keys["rsa-1"].public_key())

    assert _fitting(key) == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}


def test_p256_key_fits_only_es256(local_issuer: LocalIssuer) -> None:
    key = VerificationKey("ec-1", local_issuer.keys["ec-1"].public_key())

    assert _fitting(key) == {"ES256"}


def test_p384_key_fits_only_es384(p384_key: ec.EllipticCurvePrivateKey) -> None:
    assert _fitting(VerificationKey("p384", p384_key.public_key())) == {"ES384"}


def test_edwards_keys_fit_only_eddsa(local_issuer: LocalIssuer) -> None:
    ed = VerificationKey("ed", local_issuer.keys["ed25519-1"].public_key())
    ed4 = VerificationKey("ed448", ed448.Ed448PrivateKey.generate().public_key())

    assert _fitting(ed) == {"EdDSA"}
    assert _fitting(ed4) == {"EdDSA"}


def test_rejects_an_rsa_key_shorter_than_2048_bits_at_load(
    small_rsa_key: rsa.RSAPrivateKey,
) -> None:
    err = config_error(jwks_of(public_jwk(small_rsa_key, "small")))

    assert err.key == "keys[0]"
    assert "1024 bits" in err.problem


def test_rsa_key_shorter_than_2048_bits_fits_nothing(small_rsa_key: rsa.RSAPrivateKey) -> None:
    assert _fitting(VerificationKey("small", small_rsa_key.public_key())) == set()


def test_a_pinned_alg_restricts_the_key_to_that_alg(local_issuer: LocalIssuer) -> None:
    public = local_issuer.keys["rsa-1"].public_key()
    key = VerificationKey("rsa-1", public, alg="PS256")

    assert _fitting(key) == {"PS256"}


def test_a_key_pinned_to_a_foreign_alg_fits_nothing(local_issuer: LocalIssuer) -> None:
    public = local_issuer.keys["ec-1"].public_key()
    key = VerificationKey("ec-1", public, alg="RS256")

    assert _fitting(key) == set()
