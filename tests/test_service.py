"""The Check handler (extauthz/service.py): adapt, decide, answer, record. Never raises."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from envoy.service.auth.v3 import external_auth_pb2
from google.rpc import code_pb2
from helpers import AUDIENCE, DEPLOY, bearer, check_request, header_values, make_deployment
from prometheus_client import CollectorRegistry

import extauthz.service
from extauthz.config import Config, load_config
from extauthz.decision_log import FIELDS, BackgroundDecisionLog, DecisionLog
from extauthz.demo.issuer import LocalIssuer
from extauthz.envoy import HEADER_AGENT, HEADER_DECISION_ID, HEADER_PERMISSION, HEADER_USER
from extauthz.feed.snapshot import parse_feed
from extauthz.metrics import STAGES, Metrics
from extauthz.server import load_key_sets
from extauthz.service import CheckHandler, Runtime
from extauthz.tokens.keys import KeySet


@pytest.fixture(scope="module")
def issuer() -> LocalIssuer:
    return LocalIssuer()


@pytest.fixture(scope="module")
def enforce_config(issuer: LocalIssuer, tmp_path_factory: pytest.TempPathFactory) -> Config:
    return load_config(make_deployment(tmp_path_factory.mktemp("enforce"), issuer))


@pytest.fixture(scope="module")
def dry_run_config(issuer: LocalIssuer, tmp_path_factory: pytest.TempPathFactory) -> Config:
    path = make_deployment(
        tmp_path_factory.mktemp("dry_run"), issuer, lambda d: d.update(mode="dry_run")
    )
    return load_config(path)


class Harness:
    def __init__(self, config: Config, stream: Any = None) -> None:
        self.config = config
        self.runtime = Runtime(config, load_key_sets(config))
        snapshot = parse_feed((DEPLOY / "feed" / "users.json").read_bytes(), "users.json")
        self.runtime.feed.accept(snapshot, time.time() - 5)
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.stream = io.StringIO() if stream is None else stream
        self.handler = CheckHandler(self.runtime, self.metrics, DecisionLog(self.stream))

    def check(self, request: external_auth_pb2.CheckRequest) -> external_auth_pb2.CheckResponse:
        return self.handler.check(request)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def sample(self, name: str, labels: dict[str, str]) -> float | None:
        return self.registry.get_sample_value(name, labels)


@pytest.fixture
def harness(enforce_config: Config) -> Harness:
    return Harness(enforce_config)


def delegated_token(issuer: LocalIssuer, scope: str = "tickets:read", **claims: Any) -> str:
    return issuer.token(
        sub="alice", audience=AUDIENCE, scope=scope, client_id="support-agent", **claims
    )


def response_decision_id(response: external_auth_pb2.CheckResponse) -> str:
    if response.WhichOneof("http_response") == "ok_response":
        return header_values(response.ok_response.headers)[HEADER_DECISION_ID]
    return header_values(response.denied_response.headers)[HEADER_DECISION_ID]


# --- allow and deny ----------------------------------------------------------------------


def test_allowed_check_answers_ok_and_writes_one_matching_decision_line(
    harness: Harness, issuer: LocalIssuer
) -> None:
    request = check_request(
        path="/tickets/7?expand=comments",
        headers={**bearer(delegated_token(issuer)), "x-request-id": "rid-1"},
        source="10.9.8.7",
    )
    response = harness.check(request)

    assert response.status.code == code_pb2.OK
    headers = header_values(response.ok_response.headers)
    assert headers[HEADER_AGENT] == "support-agent"
    assert headers[HEADER_USER] == "alice"
    assert headers[HEADER_PERMISSION] == "tickets:read"
    (line,) = harness.lines()
    assert list(line)[: len(FIELDS)] == list(FIELDS)
    assert line["decision_id"] == headers[HEADER_DECISION_ID]
    assert len(line["decision_id"]) == 32
    assert response.dynamic_metadata["decision_id"] == line["decision_id"]
    assert line["decision"] == "allow"
    assert line["reason"] == "allowed"
    assert line["status"] == 200
    assert line["mode"] == "enforce"
    assert line["agent"] == "support-agent"
    assert line["user"] == "alice"
    assert line["actor_chain"] == ["support-agent"]
    assert line["path"] == "/tickets/7"
    assert line["resource"] == "tickets"
    assert line["permission"] == "tickets:read"
    assert (line["agent_has"], line["user_has"], line["scope_has"]) == (True, True, True)
    assert line["feed_version"] == "1"
    assert 4.0 <= line["feed_age_s"] <= 60.0
    assert line["policy_version"] == harness.config.policy_version
    assert line["request_id"] == "rid-1"
    assert line["source"] == "10.9.8.7"
    assert isinstance(line["latency_us"], int)
    assert line["latency_us"] >= 0


def test_denied_check_writes_one_line_whose_id_is_in_the_deny_header(
    harness: Harness, issuer: LocalIssuer
) -> None:
    request = check_request(
        method="POST", path="/tickets", headers=bearer(delegated_token(issuer, "tickets:read"))
    )
    response = harness.check(request)

    assert response.status.code == code_pb2.PERMISSION_DENIED
    assert response.denied_response.status.code == 403
    (line,) = harness.lines()
    assert line["decision_id"] == response_decision_id(response)
    assert line["decision"] == "deny"
    assert line["reason"] == "scope_lacks_permission"
    assert line["status"] == 403
    assert line["permission"] == "tickets:write"
    assert "would_status" not in line
    body = json.loads(response.denied_response.body)
    assert body["decision_id"] == line["decision_id"]
    assert body["lacking"] == ["scope"]


def test_every_check_writes_exactly_one_line_with_a_fresh_decision_id(
    harness: Harness, issuer: LocalIssuer
) -> None:
    token = delegated_token(issuer)
    requests = [
        check_request(headers=bearer(token)),
        check_request(),
        check_request(headers=bearer("not-a-jwt")),
        check_request(host="unknown.example.test", headers=bearer(token)),
        check_request(method="POST", path="/mcp", headers=bearer(token), raw_body=b"{"),
    ]
    ids = [response_decision_id(harness.check(r)) for r in requests]
    lines = harness.lines()
    assert [line["decision_id"] for line in lines] == ids
    assert len(set(ids)) == len(ids)
    assert [line["reason"] for line in lines] == [
        "allowed",
        "token_missing",
        "token_malformed",
        "route_unknown",
        "mcp_request_invalid",
    ]


def test_autonomous_allow_sends_no_user_header(harness: Harness, issuer: LocalIssuer) -> None:
    token = issuer.token(
        sub="triage-bot", audience=AUDIENCE, scope="tickets:read", client_id="triage-bot"
    )
    response = harness.check(check_request(headers=bearer(token)))
    assert response.status.code == code_pb2.OK
    assert HEADER_USER in response.ok_response.headers_to_remove
    (line,) = harness.lines()
    assert line["user"] is None
    assert line["user_has"] is None


# --- the token stays secret --------------------------------------------------------------


def token_scenarios(issuer: LocalIssuer) -> list[tuple[str, str, str]]:
    return [
        ("allowed", "GET", delegated_token(issuer)),
        ("scope_lacks_permission", "POST", delegated_token(issuer)),
        ("token_expired", "GET", delegated_token(issuer, now=time.time() - 4000, lifetime=600)),
        ("token_invalid_signature", "GET", delegated_token(issuer)[:-6] + "AAAAAA"),
        ("token_wrong_audience", "GET", issuer.token(sub="alice", audience="x", client_id="a")),
    ]


def test_token_never_appears_in_decision_lines_or_logs(
    harness: Harness, issuer: LocalIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    scenarios = token_scenarios(issuer)
    for _, method, token in scenarios:
        path = "/tickets" if method == "POST" else "/tickets/1"
        harness.check(check_request(method=method, path=path, headers=bearer(token)))

    assert [line["reason"] for line in harness.lines()] == [s[0] for s in scenarios]
    written = harness.stream.getvalue()
    logged = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    for _, _, token in scenarios:
        _, payload, signature = token.split(".")
        for text in (written, logged):
            assert token not in text
            assert payload not in text
            assert signature not in text


# --- failures inside the check -----------------------------------------------------------


@pytest.mark.parametrize("stage", ["authenticate", "authorize"])
def test_unexpected_exception_is_an_internal_error_deny_with_a_line_and_a_log(
    harness: Harness,
    issuer: LocalIssuer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    stage: str,
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(extauthz.service, stage, broken)
    caplog.set_level(logging.DEBUG, logger="extauthz")
    token = delegated_token(issuer)
    response = harness.check(check_request(path="/tickets/1?q=1", headers=bearer(token)))

    assert response.status.code == code_pb2.INTERNAL
    assert response.denied_response.status.code == 500
    body = json.loads(response.denied_response.body)
    assert body["reason"] == "internal_error"
    assert body["error"] == "server_error"
    assert "boom" not in response.denied_response.body
    (line,) = harness.lines()
    assert line["reason"] == "internal_error"
    assert line["decision"] == "deny"
    assert line["status"] == 500
    assert line["path"] == "/tickets/1"
    assert line["decision_id"] == response_decision_id(response)
    (record,) = [r for r in caplog.records if r.name == "extauthz.service"]
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "check failed unexpectedly"
    assert record.decision_id == line["decision_id"]  # type: ignore[attr-defined]
    assert record.exc_info is not None
    assert token not in caplog.text
    errors = {"decision": "deny", "reason": "internal_error"}
    assert harness.sample("extauthz_decisions_total", errors) == 1.0

    # The handler keeps serving once the fault is gone.
    monkeypatch.undo()
    again = harness.check(check_request(headers=bearer(token)))
    assert again.status.code == code_pb2.OK
    assert [x["reason"] for x in harness.lines()] == ["internal_error", "allowed"]


def test_request_adapter_failure_is_an_internal_error_deny(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(check: object) -> None:
        raise ValueError("cannot adapt")

    monkeypatch.setattr(extauthz.service, "request_from_check", broken)
    response = harness.check(check_request())
    assert response.denied_response.status.code == 500
    (line,) = harness.lines()
    assert line["reason"] == "internal_error"
    assert (line["method"], line["host"], line["path"]) == ("", "", "")


class BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")


def test_failing_decision_log_turns_an_allow_into_a_deny(
    enforce_config: Config, issuer: LocalIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    harness = Harness(enforce_config, BrokenStream())
    caplog.set_level(logging.DEBUG, logger="extauthz")
    response = harness.check(check_request(headers=bearer(delegated_token(issuer))))

    assert response.status.code == code_pb2.INTERNAL
    assert response.WhichOneof("http_response") == "denied_response"
    assert response.denied_response.status.code == 500
    assert json.loads(response.denied_response.body)["reason"] == "internal_error"
    assert [r.getMessage() for r in caplog.records if r.name == "extauthz.service"] == [
        "decision log write failed"
    ]


def test_failing_decision_log_is_counted_as_the_deny_that_was_sent(
    enforce_config: Config, issuer: LocalIssuer
) -> None:
    harness = Harness(enforce_config, BrokenStream())
    harness.check(check_request(headers=bearer(delegated_token(issuer))))
    allowed = {"decision": "allow", "reason": "allowed"}
    internal = {"decision": "deny", "reason": "internal_error"}
    assert harness.sample("extauthz_decisions_total", allowed) == 0.0
    assert harness.sample("extauthz_decisions_total", internal) == 1.0


def test_failing_decision_log_in_dry_run_still_fails_closed(
    dry_run_config: Config, issuer: LocalIssuer
) -> None:
    harness = Harness(dry_run_config, BrokenStream())
    response = harness.check(check_request(headers=bearer(delegated_token(issuer))))
    assert response.denied_response.status.code == 500


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"\\ud800"}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\\ud800"}}',
    ],
    ids=["mcp-method", "unmapped-tool-name"],
)
def test_decision_line_is_written_for_client_strings_with_a_lone_surrogate(
    enforce_config: Config, issuer: LocalIssuer, body: bytes
) -> None:
    # Real stdout is a UTF-8 TextIOWrapper. A client-chosen JSON string such as "\ud800"
    # (valid JSON, not encodable as UTF-8) must not cost the request its audit line.
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
    harness = Harness(enforce_config, stream)
    request = check_request(
        method="POST", path="/mcp", headers=bearer(delegated_token(issuer)), raw_body=body
    )
    response = harness.check(request)

    lines = raw.getvalue().decode("utf-8").splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["decision_id"] == response_decision_id(response)


# --- dry run -----------------------------------------------------------------------------


def test_dry_run_allows_a_would_be_deny_and_records_what_would_have_happened(
    dry_run_config: Config, issuer: LocalIssuer
) -> None:
    harness = Harness(dry_run_config)
    request = check_request(
        method="POST", path="/tickets", headers=bearer(delegated_token(issuer, "tickets:read"))
    )
    response = harness.check(request)

    assert response.status.code == code_pb2.OK
    ok = response.ok_response
    assert set(header_values(ok.headers)) == {HEADER_DECISION_ID}
    assert {HEADER_AGENT, HEADER_USER, HEADER_PERMISSION} <= set(ok.headers_to_remove)
    (line,) = harness.lines()
    assert line["decision"] == "deny"
    assert line["reason"] == "scope_lacks_permission"
    assert line["status"] == 200
    assert line["would_status"] == 403
    assert line["mode"] == "dry_run"
    assert line["decision_id"] == header_values(ok.headers)[HEADER_DECISION_ID]
    labels = {"decision": "deny", "reason": "scope_lacks_permission"}
    assert harness.sample("extauthz_decisions_total", labels) == 1.0


def test_dry_run_allow_carries_identity_and_would_status_200(
    dry_run_config: Config, issuer: LocalIssuer
) -> None:
    harness = Harness(dry_run_config)
    response = harness.check(check_request(headers=bearer(delegated_token(issuer))))
    assert header_values(response.ok_response.headers)[HEADER_USER] == "alice"
    (line,) = harness.lines()
    assert (line["decision"], line["status"], line["would_status"]) == ("allow", 200, 200)


# --- method override headers ------------------------------------------------------------

METHOD_OVERRIDES = {"x-http-method-override", "x-http-method", "x-method-override"}


def override_request(issuer: LocalIssuer, method: str, path: str) -> external_auth_pb2.CheckRequest:
    # What a client would send to have a GET, checked as tickets:read, served as a DELETE.
    headers = {**bearer(delegated_token(issuer)), **dict.fromkeys(METHOD_OVERRIDES, "DELETE")}
    return check_request(method=method, path=path, headers=headers)


def test_allow_removes_method_override_headers(harness: Harness, issuer: LocalIssuer) -> None:
    response = harness.check(override_request(issuer, "GET", "/tickets/7"))

    assert response.status.code == code_pb2.OK
    assert header_values(response.ok_response.headers)[HEADER_PERMISSION] == "tickets:read"
    assert set(response.ok_response.headers_to_remove) >= METHOD_OVERRIDES


@pytest.mark.parametrize(
    ("method", "path", "decision"),
    [("GET", "/tickets/7", "allow"), ("POST", "/tickets", "deny")],
    ids=["allow", "would-be-deny"],
)
def test_dry_run_allow_removes_method_override_headers(
    dry_run_config: Config, issuer: LocalIssuer, method: str, path: str, decision: str
) -> None:
    harness = Harness(dry_run_config)

    response = harness.check(override_request(issuer, method, path))

    assert response.status.code == code_pb2.OK
    assert set(response.ok_response.headers_to_remove) >= METHOD_OVERRIDES
    assert [line["decision"] for line in harness.lines()] == [decision]


# --- metrics and readiness -------------------------------------------------------------


def test_checks_move_decision_counters_and_duration_histogram(
    harness: Harness, issuer: LocalIssuer
) -> None:
    token = delegated_token(issuer)
    harness.check(check_request(headers=bearer(token)))
    harness.check(check_request(headers=bearer(token)))
    harness.check(check_request())

    allowed = {"decision": "allow", "reason": "allowed"}
    missing = {"decision": "deny", "reason": "token_missing"}
    assert harness.sample("extauthz_decisions_total", allowed) == 2.0
    assert harness.sample("extauthz_decisions_total", missing) == 1.0
    count = "extauthz_check_duration_seconds_count"
    assert harness.sample(count, {"decision": "allow"}) == 2.0
    assert harness.sample(count, {"decision": "deny"}) == 1.0
    assert harness.sample("extauthz_check_duration_seconds_sum", {"decision": "allow"}) > 0


def test_each_check_times_the_stages_it_reached(harness: Harness, issuer: LocalIssuer) -> None:
    token = delegated_token(issuer)
    harness.check(check_request(headers=bearer(token)))
    harness.check(check_request(headers=bearer(token)))
    harness.check(check_request())  # denied at the token: never reaches decide

    count = "extauthz_check_stage_seconds_count"
    counts = {stage: harness.sample(count, {"stage": stage}) for stage in STAGES}
    assert counts == {"parse": 3.0, "verify": 3.0, "decide": 2.0, "answer": 3.0}
    for stage in STAGES:
        assert harness.sample("extauthz_check_stage_seconds_sum", {"stage": stage}) > 0


def test_a_shed_check_times_only_its_parse_and_answer(
    harness: Harness, issuer: LocalIssuer
) -> None:
    harness.handler.shed(check_request(headers=bearer(delegated_token(issuer))))

    count = "extauthz_check_stage_seconds_count"
    counts = {stage: harness.sample(count, {"stage": stage}) for stage in STAGES}
    assert counts == {"parse": 1.0, "verify": 0.0, "decide": 0.0, "answer": 1.0}


def test_stale_feed_denies_delegated_with_503_but_autonomous_still_works(
    enforce_config: Config, issuer: LocalIssuer
) -> None:
    harness = Harness(enforce_config)
    snapshot = harness.runtime.feed.state.snapshot
    assert snapshot is not None
    harness.runtime.feed.accept(snapshot, time.time() - 3600)

    delegated = harness.check(check_request(headers=bearer(delegated_token(issuer))))
    assert delegated.denied_response.status.code == 503
    assert delegated.status.code == code_pb2.UNAVAILABLE
    autonomous = issuer.token(
        sub="triage-bot", audience=AUDIENCE, scope="tickets:read", client_id="triage-bot"
    )
    assert harness.check(check_request(headers=bearer(autonomous))).status.code == code_pb2.OK
    assert [line["reason"] for line in harness.lines()] == ["feed_stale", "allowed"]


def test_runtime_is_ready_only_with_keys_and_a_feed(enforce_config: Config) -> None:
    runtime = Runtime(enforce_config, load_key_sets(enforce_config))
    assert runtime.ready is False
    snapshot = parse_feed(b'{"version": "1", "users": {}}', "f")
    runtime.feed.accept(snapshot, time.time())
    assert runtime.ready is True
    assert Runtime(enforce_config, {}).ready is False


def test_handler_uses_its_clock_for_the_decision_and_the_line(
    enforce_config: Config, issuer: LocalIssuer
) -> None:
    harness = Harness(enforce_config)

    # A clock two hours ahead: the token has expired and the feed is stale by then.
    def later() -> float:
        return time.time() + 7200

    harness.handler.clock = later
    response = harness.check(check_request(headers=bearer(delegated_token(issuer))))
    assert response.denied_response.status.code == 401
    (line,) = harness.lines()
    assert line["reason"] == "token_expired"
    assert line["feed_age_s"] >= 7200


def test_config_path_points_into_the_temporary_deployment(enforce_config: Config) -> None:
    assert isinstance(enforce_config.path, Path)
    assert enforce_config.path.name == "config.yaml"
    assert enforce_config.path.parent != DEPLOY


def test_a_key_set_without_the_tokens_key_ends_its_cached_verification(
    harness: Harness, issuer: LocalIssuer
) -> None:
    token = delegated_token(issuer)
    request = check_request(headers=bearer(token))
    assert harness.check(request).status.code == 0
    assert harness.check(request).status.code == 0  # now from the cache
    # The issuer drops rsa-1: the next check must not trust the cached verification.
    current = harness.runtime.key_sets["https://idp.example.test"]
    without = {kid: key for kid, key in current.keys.items() if kid != "rsa-1"}
    harness.runtime.publish_keys(KeySet(current.issuer, without, current.source))
    denied = harness.check(request)
    assert denied.denied_response.status.code == 401
    assert harness.lines()[-1]["reason"] == "key_unknown"


class StalledStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def write(self, text: str) -> int:
        self.gate.wait(10)
        return super().write(text)


@pytest.mark.parametrize(("when_full", "status"), [("deny", 503), ("drop", 200)])
def test_a_stalled_decision_log_refuses_or_answers_as_configured_and_counts(
    enforce_config: Config, issuer: LocalIssuer, when_full: str, status: int
) -> None:
    harness = Harness(enforce_config)
    stream = StalledStream()
    background = BackgroundDecisionLog(
        stream,
        max_pending=2,
        when_full=when_full,  # type: ignore[arg-type]
        on_drop=harness.metrics.decision_log_dropped.inc,
    )
    harness.handler.decision_log = background
    request = check_request(headers=bearer(delegated_token(issuer)))
    answers = [harness.check(request) for _ in range(6)]
    # The writer holds one line, two wait in the queue: the rest cannot be kept.
    last = answers[-1]
    got = last.denied_response.status.code if last.HasField("denied_response") else 200
    assert got == status
    if when_full == "deny":
        assert dict(last.dynamic_metadata)["reason"] == "decision_log_unavailable"
    dropped = harness.sample("extauthz_decision_log_dropped_total", {})
    assert dropped is not None and dropped >= 3
    stream.gate.set()
    assert background.close(5.0)
    written = len(stream.getvalue().splitlines())
    assert written + dropped == 6  # every decision is either written or counted


def test_decision_ids_are_unique_hex_and_differ_between_handlers(
    enforce_config: Config, issuer: LocalIssuer
) -> None:
    first, second = Harness(enforce_config), Harness(enforce_config)
    request = check_request(headers=bearer(delegated_token(issuer)))
    for _ in range(50):
        first.check(request)
        second.check(request)
    ids = [line["decision_id"] for h in (first, second) for line in h.lines()]
    assert len(set(ids)) == 100
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    # Another process (here: another handler) has another random prefix.
    assert ids[0][:16] != ids[50][:16]


def test_a_check_reads_the_feed_and_keys_in_force_when_it_starts(
    harness: Harness, issuer: LocalIssuer
) -> None:
    # Checks share one view of the policy and feed while neither changes; a new feed
    # snapshot or new keys must reach the very next check.
    runtime = harness.runtime
    assert runtime.view() is runtime.view()
    before = runtime.view()
    snapshot = parse_feed((DEPLOY / "feed" / "users.json").read_bytes(), "users.json")
    runtime.feed.accept(snapshot, time.time())
    after_feed = runtime.view()
    assert after_feed is not before
    assert after_feed.feed is runtime.feed.state
    key_set = runtime.key_sets[next(iter(runtime.key_sets))]
    token = delegated_token(issuer)
    allowed = harness.check(check_request(headers=bearer(token)))
    assert allowed.status.code == code_pb2.OK
    runtime.publish_keys(KeySet(key_set.issuer, {}))
    after_keys = runtime.view()
    assert after_keys.feed is after_feed.feed
    assert after_keys.key_sets[key_set.issuer].keys == {}
    # With its issuer's keys gone, the token that verified a moment ago no longer does.
    denied = harness.check(check_request(headers=bearer(token)))
    assert denied.status.code != code_pb2.OK
