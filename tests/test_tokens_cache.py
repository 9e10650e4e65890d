"""The memo of verified tokens (extauthz/tokens/cache.py)."""

from __future__ import annotations

from extauthz.tokens.cache import VerifiedToken, VerifiedTokens
from extauthz.tokens.verify import SignedToken


def signed(n: int) -> VerifiedToken:
    token = SignedToken({"kid": "k"}, {"jti": str(n)}, "https://idp.example.test")
    return VerifiedToken(token, None, str(n))


def test_a_put_token_is_found_by_its_exact_text_only() -> None:
    cache = VerifiedTokens()
    cache.put("a.b.c", signed(1))
    assert cache.get("a.b.c") == signed(1)
    assert cache.get("a.b.C") is None
    assert cache.get("a.b.c ") is None


def test_the_cache_is_bounded_and_evicts_the_oldest_first() -> None:
    cache = VerifiedTokens(max_entries=3)
    for n in range(5):
        cache.put(f"t{n}", signed(n))
    assert len(cache) == 3
    assert [cache.get(f"t{n}") is not None for n in range(5)] == [False, False, True, True, True]


def test_a_cache_of_size_zero_keeps_nothing() -> None:
    cache = VerifiedTokens(max_entries=0)
    cache.put("t", signed(1))
    assert cache.get("t") is None
