"""A bounded memo of signature verification, so a token seen before is not verified again.

Only what cannot change while the policy stands is cached: that these exact bytes are a
well-formed token whose signature verifies with one of its issuer's keys under the
policy's algorithm and ``typ`` rules. Everything that can change from one request to the
next (``exp``, ``nbf``, audience, revocation, the agent's and user's state, the feed) is
checked on every request, hit or miss. One cache belongs to one policy (config and keys):
a reload or a key refresh starts an empty one, so a removed key cannot linger here.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from extauthz.model import Identity
from extauthz.permissions import GrantSet
from extauthz.tokens.verify import ClaimTimes, SignedToken

DEFAULT_MAX_ENTRIES = 10_000


@dataclass(slots=True)
class VerifiedToken:
    """A token whose signature verified, and what follows from its claims alone: who it
    names, the scope it grants and its times once its claims passed, filled in by the
    first request that established them."""

    signed: SignedToken
    client_id: str | None
    jti: str | None
    identity: Identity | None = None
    scope_grants: GrantSet | None = None
    claim_times: ClaimTimes | None = None


class VerifiedTokens:
    __slots__ = ("_entries", "max_entries")

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        # Keyed by the token itself: the dict compares the whole string on a hash match,
        # so no other byte sequence can ever be taken for a cached token. Ordered, so the
        # oldest goes in O(1): next(iter()) of a plain dict walks past every slot already
        # freed at its front.
        self._entries: OrderedDict[str, VerifiedToken] = OrderedDict()

    def get(self, token: str) -> VerifiedToken | None:
        return self._entries.get(token)

    def put(self, token: str, signed: VerifiedToken) -> None:
        if self.max_entries <= 0:
            return
        entries = self._entries
        if len(entries) >= self.max_entries:
            # First in, first out, and a token still in use comes back after one more
            # verification.
            entries.popitem(last=False)
        entries[token] = signed

    def __len__(self) -> int:
        return len(self._entries)
