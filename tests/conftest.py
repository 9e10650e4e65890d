"""Shared fixtures. Keep this small; helpers append their fixtures, they do not rewrite."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from extauthz.config import Config, parse_config
from extauthz.demo.issuer import LocalIssuer

TEST_ISSUER = "https://idp.example.test"


@pytest.fixture(scope="session")
def local_issuer() -> LocalIssuer:
    """The trusted issuer: one RSA, one EC P-256 and one Ed25519 key (kids rsa-1, ec-1,
    ed25519-1). Session-scoped because RSA key generation is slow."""
    return LocalIssuer(TEST_ISSUER)


@pytest.fixture(scope="session")
def impostor_issuer() -> LocalIssuer:
    """Same issuer name and the same kids as ``local_issuer``, but different keys: what an
    attacker who knows the kids but not the private keys can sign with."""
    return LocalIssuer(TEST_ISSUER)


def config_from_dict(data: dict[str, Any], file: str = "/etc/extauthz/config.yaml") -> Config:
    """A Config from an already-parsed YAML document (relative paths resolve next to ``file``)."""
    return parse_config(data, Path(file), policy_version="test")


@pytest.fixture
def make_config() -> Callable[..., Config]:
    """``make_config(dict)`` → Config, through the same validation as a real config file."""
    return config_from_dict
