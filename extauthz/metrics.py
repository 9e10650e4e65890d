"""Prometheus metrics, defined on an injected registry so tests get a fresh one each."""

from __future__ import annotations

import bisect
import math
import platform
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

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
# A stage is microseconds of work, so its buckets start lower than a whole check's.
STAGE_BUCKETS = (
    0.000005,
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.01,
    0.1,
)
# The stages of a check, in order: reading Envoy's request, the token (signature, claims,
# revocation), the rest of the decision (agent, user, route, permissions), and the answer
# (response, decision line).
STAGES = ("parse", "verify", "decide", "answer")
REFRESH_OUTCOMES = ("success", "not_modified", "error")
RELOAD_OUTCOMES = ("success", "error")


class Metrics:
    """Every metric extauthz exports. With ``multiprocess`` (``serve --workers``), values
    live in prometheus-client's shared files and are summed or maxed across workers at
    scrape time; gauges computed on demand are then sampled by ``sample_gauges`` instead,
    since such files hold only values that were set, and the per-check series reach the
    files at that call too (so a scrape may be up to a second behind)."""

    def __init__(self, registry: CollectorRegistry, *, multiprocess: bool = False) -> None:
        self.registry = registry
        self.multiprocess = multiprocess
        self._sampled: list[tuple[Gauge, Callable[[], float]]] = []
        self._config_labels: tuple[str, str] | None = None
        # The series every check moves: plain numbers that only the event loop's thread
        # writes, read at scrape time in one process, flushed to the shared files with
        # workers.
        self._checks: _CheckSeries = (
            _SharedCheckSeries(registry) if multiprocess else _LocalCheckSeries(registry)
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
        self.checks_waiting_for_keys = Gauge(
            "extauthz_checks_waiting_for_keys",
            "Checks waiting for a refetch of keys their token's kid asked for.",
            multiprocess_mode="livesum",
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
        for refresh_outcome in REFRESH_OUTCOMES:
            self.feed_refreshes.labels(refresh_outcome)
        for reload_outcome in RELOAD_OUTCOMES:
            self.config_reloads.labels(reload_outcome)
        self.feed_age.set(math.inf)

    def observe_check(self, reason: Reason, seconds: float) -> None:
        """Count one answered check and how long it took. Called from the event loop's
        thread only."""
        self._checks.observe(reason, seconds)

    def observe_stages(
        self, parse: float | None, verify: float | None, decide: float | None, answer: float
    ) -> None:
        """Record how long one check spent in each stage it reached (None: not reached).
        Called from the event loop's thread only."""
        self._checks.observe_stages(parse, verify, decide, answer)

    def track(self, gauge: Gauge, value: Callable[[], float]) -> None:
        """Export ``value()`` as ``gauge``: read at scrape time, or (multiprocess) at
        every ``sample_gauges``."""
        if self.multiprocess:
            self._sampled.append((gauge, value))
            gauge.set(value())
        else:
            gauge.set_function(value)

    def sample_gauges(self) -> None:
        """(multiprocess) Write every tracked gauge's value and the checks counted since
        the last call into the shared files. The server calls it once a second and at
        stop."""
        for gauge, value in self._sampled:
            gauge.set(value())
        self._checks.flush()

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


_DURATION_NAME = "extauthz_check_duration_seconds"
_DURATION_HELP = "Time to decide one ext_authz Check, from request received to response built."
_DECISIONS_NAME = "extauthz_decisions_total"
_DECISIONS_HELP = "Decisions by outcome and reason code (the decision-log reason)."
_DECISION_LABELS = ("allow", "deny")
_STAGE_NAME = "extauthz_check_stage_seconds"
_STAGE_HELP = (
    "Time one check spent in a stage: parse (Envoy's request), verify (token and revocation), "
    "decide (agent, user, route, permissions), answer (response and decision line)."
)


class _CheckSeries:
    """``extauthz_check_duration_seconds{decision}``, ``extauthz_decisions_total{decision,
    reason}`` and ``extauthz_check_stage_seconds{stage}``, the series every check moves.
    Every series exists from the start, so rates and alerts see zeros, not gaps.

    Counted here as plain numbers: written by one thread (the event loop's), so no lock
    (a prometheus-client child takes one per update, and with workers writes a shared
    file as well). How the numbers reach a scrape is up to the subclass."""

    def __init__(self) -> None:
        # Per decision label: a count per bucket (the last one past every bound, +Inf),
        # and the sum of the observed seconds.
        self._buckets = {label: [0] * (len(CHECK_BUCKETS) + 1) for label in _DECISION_LABELS}
        self._sums = dict.fromkeys(_DECISION_LABELS, 0.0)
        self._decisions = dict.fromkeys(Reason, 0)
        # Per stage, in STAGES order: bucket counts as above, and the sum.
        self._stage_buckets = [[0] * (len(STAGE_BUCKETS) + 1) for _ in STAGES]
        self._stage_sums = [0.0] * len(STAGES)

    def observe(self, reason: Reason, seconds: float) -> None:
        label = "allow" if reason is Reason.ALLOWED else "deny"
        # A bucket's bound is inclusive (le), so the first bound >= seconds.
        self._buckets[label][bisect.bisect_left(CHECK_BUCKETS, seconds)] += 1
        self._sums[label] += seconds
        self._decisions[reason] += 1

    def observe_stages(
        self, parse: float | None, verify: float | None, decide: float | None, answer: float
    ) -> None:
        # Unrolled: this runs on every check, and a loop over the four costs twice as much.
        buckets, sums = self._stage_buckets, self._stage_sums
        if parse is not None:
            buckets[0][bisect.bisect_left(STAGE_BUCKETS, parse)] += 1
            sums[0] += parse
        if verify is not None:
            buckets[1][bisect.bisect_left(STAGE_BUCKETS, verify)] += 1
            sums[1] += verify
        if decide is not None:
            buckets[2][bisect.bisect_left(STAGE_BUCKETS, decide)] += 1
            sums[2] += decide
        buckets[3][bisect.bisect_left(STAGE_BUCKETS, answer)] += 1
        sums[3] += answer

    def flush(self) -> None:
        """Make what was counted so far visible to a scrape (where it is not already)."""


class _SharedCheckSeries(_CheckSeries):
    """prometheus-client's own metrics, whose values multiprocess mode keeps in files
    shared by the workers. Checks are counted locally and added to the files at each
    ``flush`` (once a second, by the server): an update of those files costs 2 to 3 µs, and
    a check moves eleven of them. A worker that is killed loses what it had not flushed."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        duration = Histogram(
            _DURATION_NAME,
            _DURATION_HELP,
            ["decision"],
            buckets=CHECK_BUCKETS,
            registry=registry,
        )
        decisions = Counter(
            _DECISIONS_NAME, _DECISIONS_HELP, ["decision", "reason"], registry=registry
        )
        stages = Histogram(
            _STAGE_NAME, _STAGE_HELP, ["stage"], buckets=STAGE_BUCKETS, registry=registry
        )
        # Children resolved once, so a flush does no label lookups.
        self._duration_children = {label: duration.labels(label) for label in _DECISION_LABELS}
        self._decision_children = {
            reason: decisions.labels(_decision_label(reason), reason.value) for reason in Reason
        }
        self._stage_children = [stages.labels(stage) for stage in STAGES]

    def flush(self) -> None:
        for label, child in self._duration_children.items():
            _add_to_histogram(child, self._buckets[label], self._sums[label])
            self._sums[label] = 0.0
        for reason, count in self._decisions.items():
            if count:
                self._decision_children[reason].inc(count)
                self._decisions[reason] = 0
        for index, child in enumerate(self._stage_children):
            _add_to_histogram(child, self._stage_buckets[index], self._stage_sums[index])
            self._stage_sums[index] = 0.0


def _add_to_histogram(child: Histogram, counts: list[int], total: float) -> None:
    """Add per-bucket ``counts`` (and zero them) and their sum to ``child``: what as many
    ``observe`` calls would have added. prometheus-client has no call that adds counts,
    so this writes the values ``observe`` writes (a test holds the two to the same
    scrape)."""
    if not any(counts):
        return
    child._sum.inc(total)
    for index, count in enumerate(counts):
        if count:
            child._buckets[index].inc(count)
            counts[index] = 0


class _LocalCheckSeries(_CheckSeries, Collector):
    """The numbers themselves, collected at scrape time (one process, no workers). A
    scrape from another thread may see a check counted in one series and not yet in the
    other, never a torn number."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._created = time.time()
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        duration = HistogramMetricFamily(_DURATION_NAME, _DURATION_HELP, labels=["decision"])
        for label in _DECISION_LABELS:
            self._add_histogram(
                duration, "decision", label, CHECK_BUCKETS, self._buckets[label], self._sums[label]
            )
        yield duration
        decisions = CounterMetricFamily(
            _DECISIONS_NAME, _DECISIONS_HELP, labels=["decision", "reason"]
        )
        for reason, count in self._decisions.items():
            decisions.add_metric(
                [_decision_label(reason), reason.value], count, created=self._created
            )
        yield decisions
        stages = HistogramMetricFamily(_STAGE_NAME, _STAGE_HELP, labels=["stage"])
        for index, stage in enumerate(STAGES):
            self._add_histogram(
                stages,
                "stage",
                stage,
                STAGE_BUCKETS,
                self._stage_buckets[index],
                self._stage_sums[index],
            )
        yield stages

    def _add_histogram(
        self,
        family: HistogramMetricFamily,
        label_name: str,
        label: str,
        bounds: tuple[float, ...],
        counts: list[int],
        total: float,
    ) -> None:
        counts = list(counts)
        cumulative, buckets = 0, []
        for bound, count in zip((*bounds, math.inf), counts, strict=True):
            cumulative += count
            # The bound as prometheus-client writes it: 0.0001, 1.0, +Inf.
            buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
        family.add_metric([label], buckets, total)
        # As prometheus-client's own histogram: when the series began.
        family.samples.append(Sample(f"{family.name}_created", {label_name: label}, self._created))

    def describe(self) -> Iterator[Metric]:
        # Names only, so the registry refuses another metric of the same name.
        yield HistogramMetricFamily(_DURATION_NAME, _DURATION_HELP, labels=["decision"])
        yield CounterMetricFamily(_DECISIONS_NAME, _DECISIONS_HELP, labels=["decision", "reason"])
        yield HistogramMetricFamily(_STAGE_NAME, _STAGE_HELP, labels=["stage"])
