"""Prometheus metrics (extauthz/metrics.py), each test on a fresh registry."""

from __future__ import annotations

import math
import platform

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from extauthz import __version__
from extauthz.errors import Reason
from extauthz.metrics import (
    CHECK_BUCKETS,
    STAGE_BUCKETS,
    Metrics,
    _LocalCheckSeries,
    _SharedCheckSeries,
)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float | None:
    return metrics.registry.get_sample_value(name, labels or {})


@pytest.mark.parametrize("reason", list(Reason))
def test_every_reason_series_exists_at_zero_from_the_start(
    metrics: Metrics, reason: Reason
) -> None:
    decision = "allow" if reason is Reason.ALLOWED else "deny"
    labels = {"decision": decision, "reason": reason.value}
    assert sample(metrics, "extauthz_decisions_total", labels) == 0.0


def test_no_series_pairs_allowed_with_deny(metrics: Metrics) -> None:
    labels = {"decision": "deny", "reason": "allowed"}
    assert sample(metrics, "extauthz_decisions_total", labels) is None
    labels = {"decision": "allow", "reason": "token_expired"}
    assert sample(metrics, "extauthz_decisions_total", labels) is None


def test_refresh_outcome_and_check_duration_series_exist_at_zero(metrics: Metrics) -> None:
    for outcome in ("success", "not_modified", "error"):
        labels = {"outcome": outcome}
        assert sample(metrics, "extauthz_feed_refresh_total", labels) == 0.0
    for decision in ("allow", "deny"):
        labels = {"decision": decision}
        assert sample(metrics, "extauthz_check_duration_seconds_count", labels) == 0.0


def test_counting_a_decision_moves_only_its_series(metrics: Metrics) -> None:
    metrics.observe_check(Reason.TOKEN_EXPIRED, 0.0002)
    metrics.observe_check(Reason.TOKEN_EXPIRED, 0.0002)
    expired = {"decision": "deny", "reason": "token_expired"}
    allowed = {"decision": "allow", "reason": "allowed"}
    assert sample(metrics, "extauthz_decisions_total", expired) == 2.0
    assert sample(metrics, "extauthz_decisions_total", allowed) == 0.0


def test_check_duration_uses_sub_millisecond_buckets(metrics: Metrics) -> None:
    assert CHECK_BUCKETS[0] == 0.0001
    assert CHECK_BUCKETS[-1] == 1.0
    metrics.observe_check(Reason.ALLOWED, 0.0003)
    allow = {"decision": "allow"}
    assert sample(metrics, "extauthz_check_duration_seconds_count", allow) == 1.0
    assert sample(metrics, "extauthz_check_duration_seconds_sum", allow) == pytest.approx(0.0003)
    le_250us = {"decision": "allow", "le": "0.00025"}
    le_500us = {"decision": "allow", "le": "0.0005"}
    assert sample(metrics, "extauthz_check_duration_seconds_bucket", le_250us) == 0.0
    assert sample(metrics, "extauthz_check_duration_seconds_bucket", le_500us) == 1.0


def test_a_duration_on_a_bucket_bound_falls_in_that_bucket(metrics: Metrics) -> None:
    metrics.observe_check(Reason.ALLOWED, 0.001)
    assert (
        sample(
            metrics,
            "extauthz_check_duration_seconds_bucket",
            {"decision": "allow", "le": "0.00075"},
        )
        == 0.0
    )
    assert (
        sample(
            metrics, "extauthz_check_duration_seconds_bucket", {"decision": "allow", "le": "0.001"}
        )
        == 1.0
    )


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    # Every sample but the creation times, by name (without _total) and labels.
    return {
        (s.name.removesuffix("_total"), tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def _exposition(registry: CollectorRegistry) -> list[str]:
    # Every line but the creation times, which differ by when each series was made.
    return [
        line for line in generate_latest(registry).decode().splitlines() if "_created" not in line
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(list(Reason)),
            st.one_of(st.sampled_from(CHECK_BUCKETS), st.floats(0.0, 5.0)),
        ),
        max_size=30,
    )
)
def test_one_process_series_read_as_prometheus_clients_own(
    checks: list[tuple[Reason, float]],
) -> None:
    # In one process the check series are plain numbers; prometheus-client's own
    # histogram and counter (what workers use) are the reference for what a scrape shows.
    local, shared = CollectorRegistry(), CollectorRegistry()
    local_series, shared_series = _LocalCheckSeries(local), _SharedCheckSeries(shared)
    for reason, seconds in checks:
        local_series.observe(reason, seconds)
        shared_series.observe(reason, seconds)
    shared_series.flush()
    assert _exposition(local) == _exposition(shared)


_STAGE_SECONDS = st.one_of(st.none(), st.sampled_from(STAGE_BUCKETS), st.floats(0.0, 1.0))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            _STAGE_SECONDS,
            _STAGE_SECONDS,
            _STAGE_SECONDS,
            st.one_of(st.sampled_from(STAGE_BUCKETS), st.floats(0.0, 1.0)),
        ),
        max_size=30,
    )
)
def test_one_process_stage_series_read_as_prometheus_clients_own(
    checks: list[tuple[float | None, float | None, float | None, float]],
) -> None:
    local, shared = CollectorRegistry(), CollectorRegistry()
    local_series, shared_series = _LocalCheckSeries(local), _SharedCheckSeries(shared)
    for parse, verify, decide, answer in checks:
        local_series.observe_stages(parse, verify, decide, answer)
        shared_series.observe_stages(parse, verify, decide, answer)
    shared_series.flush()
    assert _exposition(local) == _exposition(shared)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.sampled_from(list(Reason)), st.floats(0.0, 5.0)),
            max_size=10,
        ),
        max_size=5,
    )
)
def test_workers_series_flushed_in_batches_scrape_as_observed_one_by_one(
    batches: list[list[tuple[Reason, float]]],
) -> None:
    # With workers, checks are counted locally and added to prometheus-client's files at
    # each flush: after any number of flushes, the scrape is what observe() per check
    # on prometheus-client's own histogram and counter would give.
    flushed, reference = CollectorRegistry(), CollectorRegistry()
    series = _SharedCheckSeries(flushed)
    duration = Histogram(
        "extauthz_check_duration_seconds",
        "h",
        ["decision"],
        buckets=CHECK_BUCKETS,
        registry=reference,
    )
    decisions = Counter("extauthz_decisions", "h", ["decision", "reason"], registry=reference)
    stages = Histogram(
        "extauthz_check_stage_seconds",
        "h",
        ["stage"],
        buckets=STAGE_BUCKETS,
        registry=reference,
    )
    for reason in Reason:
        label = "allow" if reason is Reason.ALLOWED else "deny"
        decisions.labels(label, reason.value)
        duration.labels(label)
    for stage in ("parse", "verify", "decide", "answer"):
        stages.labels(stage)
    for batch in batches:
        for reason, seconds in batch:
            label = "allow" if reason is Reason.ALLOWED else "deny"
            series.observe(reason, seconds)
            series.observe_stages(seconds, None, seconds / 2, seconds)
            duration.labels(label).observe(seconds)
            decisions.labels(label, reason.value).inc()
            stages.labels("parse").observe(seconds)
            stages.labels("decide").observe(seconds / 2)
            stages.labels("answer").observe(seconds)
        series.flush()
    # Sums are added up per batch, so they may differ in the last bit.
    assert _samples(flushed) == pytest.approx(_samples(reference), rel=1e-12)


def test_workers_series_reach_a_scrape_at_the_flush() -> None:
    registry = CollectorRegistry()
    series = _SharedCheckSeries(registry)
    count = {"decision": "allow"}
    series.observe(Reason.ALLOWED, 0.0003)
    assert registry.get_sample_value("extauthz_check_duration_seconds_count", count) == 0.0
    series.flush()
    series.flush()  # a second flush adds nothing more
    assert registry.get_sample_value("extauthz_check_duration_seconds_count", count) == 1.0


def test_a_stage_not_reached_is_not_counted(metrics: Metrics) -> None:
    # A token that fails verification reaches parse and verify, not decide.
    metrics.observe_stages(0.00002, 0.00004, None, 0.00001)
    count = "extauthz_check_stage_seconds_count"
    assert sample(metrics, count, {"stage": "parse"}) == 1.0
    assert sample(metrics, count, {"stage": "verify"}) == 1.0
    assert sample(metrics, count, {"stage": "decide"}) == 0.0
    assert sample(metrics, count, {"stage": "answer"}) == 1.0
    verify_sum = sample(metrics, "extauthz_check_stage_seconds_sum", {"stage": "verify"})
    assert verify_sum == pytest.approx(0.00004)
    le_25us = {"stage": "verify", "le": "2.5e-05"}
    le_50us = {"stage": "verify", "le": "5e-05"}
    assert sample(metrics, "extauthz_check_stage_seconds_bucket", le_25us) == 0.0
    assert sample(metrics, "extauthz_check_stage_seconds_bucket", le_50us) == 1.0


def test_feed_age_is_infinite_before_any_feed(metrics: Metrics) -> None:
    assert sample(metrics, "extauthz_feed_age_seconds") == math.inf


def test_tracked_feed_age_is_infinite_until_there_is_an_age(metrics: Metrics) -> None:
    age: list[float | None] = [None]
    metrics.track_feed_age(lambda: age[0])
    assert sample(metrics, "extauthz_feed_age_seconds") == math.inf
    age[0] = 12.5
    assert sample(metrics, "extauthz_feed_age_seconds") == 12.5
    age[0] = 0.0
    assert sample(metrics, "extauthz_feed_age_seconds") == 0.0


def test_feed_age_renders_as_plus_inf_in_the_exposition(metrics: Metrics) -> None:
    text = generate_latest(metrics.registry).decode()
    assert "extauthz_feed_age_seconds +Inf" in text


def test_build_info_names_version_and_python(metrics: Metrics) -> None:
    labels = {"version": __version__, "python": platform.python_version()}
    assert sample(metrics, "extauthz_build_info", labels) == 1.0


def test_config_info_shows_only_the_current_policy(metrics: Metrics) -> None:
    metrics.set_config("aaaaaaaaaaaa", "enforce")
    metrics.set_config("bbbbbbbbbbbb", "dry_run")
    current = {"policy_version": "bbbbbbbbbbbb", "mode": "dry_run"}
    old = {"policy_version": "aaaaaaaaaaaa", "mode": "enforce"}
    assert sample(metrics, "extauthz_config_info", current) == 1.0
    assert sample(metrics, "extauthz_config_info", old) is None


def test_issuer_keys_and_feed_users_gauges(metrics: Metrics) -> None:
    metrics.issuer_keys.labels("https://idp.example.test").set(3)
    metrics.feed_users.set(1500)
    keys = {"issuer": "https://idp.example.test"}
    assert sample(metrics, "extauthz_issuer_keys", keys) == 3.0
    assert sample(metrics, "extauthz_feed_users") == 1500.0


def test_two_instances_on_two_registries_do_not_collide() -> None:
    first, second = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    first.observe_check(Reason.ALLOWED, 0.0002)
    labels = {"decision": "allow", "reason": "allowed"}
    assert sample(first, "extauthz_decisions_total", labels) == 1.0
    assert sample(second, "extauthz_decisions_total", labels) == 0.0


def test_an_issuer_gets_key_refresh_series_at_zero_and_an_age(metrics: Metrics) -> None:
    metrics.track_issuer("https://idp.example.test", lambda: 12.5)
    for outcome in ("success", "not_modified", "error"):
        labels = {"issuer": "https://idp.example.test", "outcome": outcome}
        assert sample(metrics, "extauthz_keys_refresh_total", labels) == 0.0
    age = sample(metrics, "extauthz_keys_age_seconds", {"issuer": "https://idp.example.test"})
    assert age == 12.5


def test_key_age_is_infinite_before_the_first_fetch(metrics: Metrics) -> None:
    metrics.track_issuer("https://idp.example.test", lambda: None)
    age = sample(metrics, "extauthz_keys_age_seconds", {"issuer": "https://idp.example.test"})
    assert age == math.inf


def test_reload_outcome_series_exist_at_zero(metrics: Metrics) -> None:
    for outcome in ("success", "error"):
        labels = {"outcome": outcome}
        assert sample(metrics, "extauthz_config_reload_total", labels) == 0.0
