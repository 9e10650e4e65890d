"""Prometheus metrics, defined on an injected registry so tests get a fresh one each."""

from __future__ import annotations

import math
import platform
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from extauthz import __version__
from extauthz.errors import Reason

# Checks are sub-millisecond work; the buckets resolve that range and still show outliers.
CHECK_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
REFRESH_OUTCOMES = ("success", "not_modified", "error")
RELOAD_OUTCOMES = ("success", "error")


class Metrics:
    """Every metric extauthz exports. With ``multiprocess`` (``serve --workers``), values
    live in prometheus-client's shared files and are summed or maxed across workers at
    scrape time; gauges computed on demand are then sampled by ``sample_gauges`` instead,
    since such files hold only values that were set."""

    def __init__(self, registry: CollectorRegistry, *, multiprocess: bool = False) -> None:
        self.registry = registry
        self.multiprocess = multiprocess
        self._sampled: list[tuple[Gauge, Callable[[], float]]] = []
        self._config_labels: tuple[str, str] | None = None
        self.check_duration = Histogram(
            "extauthz_check_duration_seconds",
            "Time to decide one ext_authz Check, from request received to response built.",
            ["decision"],
            buckets=CHECK_BUCKETS,
            registry=registry,
        )
        self.decisions = Counter(
            "extauthz_decisions_total",
            "Decisions by outcome and reason code (the decision-log reason).",
            ["decision", "reason"],
            registry=registry,
        )
        self.feed_age = Gauge(
            "extauthz_feed_age_seconds",
            "Seconds since the user-permission feed was last refreshed; +Inf before the first.",
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.feed_users = Gauge(
            "extauthz_feed_users",
            "Users in the current feed snapshot, disabled ones included.",
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.feed_refreshes = Counter(
            "extauthz_feed_refresh_total",
            "Feed refresh attempts by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.issuer_keys = Gauge(
            "extauthz_issuer_keys",
            "Signing keys loaded per configured issuer.",
            ["issuer"],
            multiprocess_mode="livemin",
            registry=registry,
        )
        self.keys_refreshes = Counter(
            "extauthz_keys_refresh_total",
            "Signing-key (JWKS) refresh attempts per issuer, by outcome.",
            ["issuer", "outcome"],
            registry=registry,
        )
        self.keys_age = Gauge(
            "extauthz_keys_age_seconds",
            "Seconds since the issuer's keys were last fetched or confirmed; +Inf before.",
            ["issuer"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.feed_revoked_tokens = Gauge(
            "extauthz_feed_revoked_tokens",
            "Revoked token ids (jti) in the current feed snapshot, not yet expired.",
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.feed_disabled_agents = Gauge(
            "extauthz_feed_disabled_agents",
            "Agents the current feed snapshot disables.",
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.config_reloads = Counter(
            "extauthz_config_reload_total",
            "Policy reload attempts (file change or SIGHUP) by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.config_restart_required = Gauge(
            "extauthz_config_restart_required",
            "1 when the config file changes settings that only take effect on restart.",
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.decision_log_dropped = Counter(
            "extauthz_decision_log_dropped_total",
            "Decision lines that could not be written (queue full or stdout failing).",
            registry=registry,
        )
        self.decision_log_pending = Gauge(
            "extauthz_decision_log_pending",
            "Decision lines queued for the writer and not yet written.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.build_info = Gauge(
            "extauthz_build_info",
            "Always 1; labels say which extauthz and Python are running.",
            ["version", "python"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.config_info = Gauge(
            "extauthz_config_info",
            "Always 1; labels say which policy version and mode are in force.",
            ["policy_version", "mode"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        # Every series exists from the start, so rates and alerts see zeros, not gaps; the
        # children are resolved once here so a check does no label lookups.
        self._decision_children = {
            reason: self.decisions.labels(_decision_label(reason), reason.value)
            for reason in Reason
        }
        self._duration_children = {
            label: self.check_duration.labels(label) for label in ("allow", "deny")
        }
        for refresh_outcome in REFRESH_OUTCOMES:
            self.feed_refreshes.labels(refresh_outcome)
        for reload_outcome in RELOAD_OUTCOMES:
            self.config_reloads.labels(reload_outcome)
        self.feed_age.set(math.inf)

    def observe_check(self, reason: Reason, seconds: float) -> None:
        self._duration_children[_decision_label(reason)].observe(seconds)
        self._decision_children[reason].inc()

    def track(self, gauge: Gauge, value: Callable[[], float]) -> None:
        """Export ``value()`` as ``gauge``: read at scrape time, or (multiprocess) at
        every ``sample_gauges``."""
        if self.multiprocess:
            self._sampled.append((gauge, value))
            gauge.set(value())
        else:
            gauge.set_function(value)

    def sample_gauges(self) -> None:
        for gauge, value in self._sampled:
            gauge.set(value())

    def track_feed_age(self, age: Callable[[], float | None]) -> None:
        self.track(self.feed_age, lambda: _or_inf(age()))

    def track_issuer(self, issuer: str, age: Callable[[], float | None]) -> None:
        """Make every key-refresh series of ``issuer`` exist at zero, and export its age."""
        for refresh_outcome in REFRESH_OUTCOMES:
            self.keys_refreshes.labels(issuer, refresh_outcome)
        child = self.keys_age.labels(issuer)
        self._sampled = [(g, v) for g, v in self._sampled if g is not child]
        self.track(child, lambda: _or_inf(age()))

    def set_config(self, policy_version: str, mode: str) -> None:
        # The series of a policy no longer in force reads 0 where it cannot be removed
        # (the shared files of multiprocess mode keep every series they have seen).
        if self._config_labels is not None:
            self.config_info.labels(*self._config_labels).set(0)
            if not self.multiprocess:  # clear() is not implemented there
                self.config_info.clear()
        self._config_labels = (policy_version, mode)
        self.config_info.labels(policy_version, mode).set(1)


def _decision_label(reason: Reason) -> str:
    return "allow" if reason is Reason.ALLOWED else "deny"


def _or_inf(value: float | None) -> float:
    return math.inf if value is None else value
