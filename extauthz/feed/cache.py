"""The current feed snapshot and when it was last confirmed; swapped as one reference."""

from __future__ import annotations

from dataclasses import dataclass

from extauthz.feed.snapshot import FeedSnapshot


@dataclass(frozen=True, slots=True)
class FeedState:
    """What the decision core sees. ``refreshed_at`` is wall-clock seconds of the last
    successful refresh (an unchanged source counts), None before the first one."""

    snapshot: FeedSnapshot | None = None
    refreshed_at: float | None = None

    def age(self, now: float) -> float | None:
        return None if self.refreshed_at is None else max(0.0, now - self.refreshed_at)

    def is_fresh(self, now: float, max_staleness: float) -> bool:
        age = self.age(now)
        return self.snapshot is not None and age is not None and age <= max_staleness


class FeedCache:
    """Holds the live ``FeedState``. Readers take ``state`` once per request; writers
    replace it whole, so a request never sees half of one feed and half of another."""

    def __init__(self, revocation_leeway: float = 0.0) -> None:
        self.state = FeedState()
        # A revoked token stays refused until it is expired beyond the clock-skew leeway.
        self.revocation_leeway = revocation_leeway

    def accept(
        self, snapshot: FeedSnapshot, now: float, *, fetched_at: float | None = None
    ) -> None:
        """Make ``snapshot`` current. ``fetched_at`` (default ``now``) is when it was read
        from its source: a snapshot restored from disk is as old as its fetch."""
        snapshot = snapshot.prune_expired(now, self.revocation_leeway)
        self.state = FeedState(snapshot, now if fetched_at is None else fetched_at)

    def confirm(self, now: float) -> None:
        """The source still holds the snapshot we have: it counts as a fresh refresh."""
        if self.state.snapshot is not None:
            self.state = FeedState(self.state.snapshot, now)
