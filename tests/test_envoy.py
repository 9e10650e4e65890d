"""The Envoy adapter (extauthz/envoy.py): CheckRequest → request, Decision → CheckResponse."""

from __future__ import annotations

import json

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from google.rpc import code_pb2
from helpers import check_request, header_values
from hypothesis import given, settings
from hypothesis import strategies as st

from extauthz.config import ResponseConfig
from extauthz.envoy import (
    _ALLOW_BODIES,
    _DENY_PARTS,
    _MAX_ALLOW_BODIES,
    _MAX_DENY_PARTS,
    HEADER_AGENT,
    HEADER_DECISION_ID,
    HEADER_PERMISSION,
    HEADER_USER,
    METHOD_OVERRIDE_HEADERS,
    answer_for,
    check_response,
    encode_check_response,
    request_from_check,
    status_of,
)
from extauthz.errors import OUTCOMES, Reason
from extauthz.model import Decision, Identity

DECISION_ID = "0123456789abcdef0123456789abcdef"
OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
DEFAULT_RESPONSE = ResponseConfig()

DELEGATED = Identity(
    agent="support-agent",
    user="alice",
    actor_chain=("support-agent",),
    client_id="support-agent",
    issuer="https://idp.example.test",
    jti="j1",
    scopes=frozenset({"tickets:read"}),
)
AUTONOMOUS = Identity(
    agent="triage-bot",
    user=None,
    actor_chain=("triage-bot",),
    client_id="triage-bot",
    issuer="https://idp.example.test",
    jti="j2",
    scopes=frozenset({"tickets:read"}),
)

TOKEN_REASONS = [
    Reason.TOKEN_MALFORMED,
    Reason.TOKEN_INVALID_SIGNATURE,
    Reason.TOKEN_EXPIRED,
    Reason.TOKEN_NOT_YET_VALID,
    Reason.TOKEN_WRONG_ISSUER,
    Reason.TOKEN_WRONG_AUDIENCE,
    Reason.TOKEN_WRONG_TYPE,
    Reason.TOKEN_LIFETIME_TOO_LONG,
    Reason.TOKEN_ALGORITHM_NOT_ALLOWED,
    Reason.TOKEN_CLAIM_MISSING,
    Reason.KEY_UNKNOWN,
    Reason.AGENT_MISSING,
    Reason.AGENT_UNKNOWN,
    Reason.AGENT_DISABLED,
    Reason.USER_DISABLED,
    Reason.DELEGATION_TOO_DEEP,
]
PERMISSION_REASONS = [
    Reason.AGENT_LACKS_PERMISSION,
    Reason.USER_LACKS_PERMISSION,
    Reason.SCOPE_LACKS_PERMISSION,
    Reason.AGENT_NOT_DELEGATED,
    Reason.AGENT_NOT_AUTONOMOUS,
    Reason.USER_UNKNOWN,
]


def deny(
    reason: Reason, *, permission: str | None = None, lacking: tuple[str, ...] = ()
) -> external_auth_pb2.CheckResponse:
    decision = Decision(
        reason,
        identity=DELEGATED,
        permission=permission,
        lacking=lacking,
    )
    return check_response(decision, DECISION_ID, DEFAULT_RESPONSE, enforce=True)


# --- CheckRequest → RequestAttributes --------------------------------------------------


def test_request_attributes_are_taken_from_the_check_request() -> None:
    check = check_request(
        method="POST",
        host="tickets.example.test:8443",
        path="/tickets/1?debug=1&x=/../",
        headers={"authorization": "Bearer abc", "x-request-id": "from-header"},
        request_id="envoy-id-1",
        source="10.1.2.3",
    )
    request = request_from_check(check)
    assert request.method == "POST"
    assert request.host == "tickets.example.test:8443"
    assert request.path == "/tickets/1"
    assert request.headers["authorization"] == "Bearer abc"
    assert request.body is None
    assert request.body_truncated is False
    # x-request-id is what access logs and the upstream see; Envoy's stream id is a fallback.
    assert request.request_id == "from-header"
    assert request.source == "10.1.2.3"


def test_request_id_never_falls_back_to_envoys_stream_id() -> None:
    # http.id is Envoy's internal stream id, which no access log or upstream shows: a
    # decision line carrying it could not be joined to anything.
    assert request_from_check(check_request(request_id="stream-7")).request_id == ""
    assert request_from_check(check_request()).request_id == ""


def test_host_falls_back_to_the_authority_header() -> None:
    check = check_request(host="", headers={":authority": "tickets.example.test"})
    assert request_from_check(check).host == "tickets.example.test"


def test_raw_body_is_preferred_over_body() -> None:
    check = check_request(body="text body", raw_body=b'{"raw": "\xc3\xa9"}')
    assert request_from_check(check).body == b'{"raw": "\xc3\xa9"}'


def test_text_body_is_used_as_utf8_when_there_is_no_raw_body() -> None:
    assert request_from_check(check_request(body='{"é": 1}')).body == '{"é": 1}'.encode()


def test_header_map_is_used_when_headers_are_empty() -> None:
    check = check_request(
        header_map={"Authorization": "Bearer xyz", "X-Envoy-Auth-Partial-Body": "true"}
    )
    request = request_from_check(check)
    assert request.headers["authorization"] == "Bearer xyz"
    assert request.body_truncated is True


def test_header_map_string_value_is_used_when_set() -> None:
    check = check_request()
    check.attributes.request.http.header_map.headers.append(
        base_pb2.HeaderValue(key="x-request-id", value="v-from-value")
    )
    assert request_from_check(check).headers["x-request-id"] == "v-from-value"


def test_headers_win_over_header_map() -> None:
    check = check_request(headers={"authorization": "Bearer a"}, header_map={"authorization": "b"})
    assert dict(request_from_check(check).headers) == {"authorization": "Bearer a"}


@pytest.mark.parametrize(("value", "truncated"), [("true", True), ("TRUE", True), ("false", False)])
def test_partial_body_header_flags_a_truncated_body(value: str, truncated: bool) -> None:
    check = check_request(headers={"x-envoy-auth-partial-body": value}, raw_body=b"{")
    assert request_from_check(check).body_truncated is truncated


# --- allow -------------------------------------------------------------------------------


def test_allow_is_ok_with_identity_headers_that_overwrite_client_ones() -> None:
    decision = Decision(Reason.ALLOWED, identity=DELEGATED, permission="tickets:read")
    response = check_response(decision, DECISION_ID, DEFAULT_RESPONSE, enforce=True)

    assert response.status.code == code_pb2.OK
    assert response.WhichOneof("http_response") == "ok_response"
    ok = response.ok_response
    assert header_values(ok.headers) == {
        HEADER_DECISION_ID: DECISION_ID,
        HEADER_AGENT: "support-agent",
        HEADER_USER: "alice",
        HEADER_PERMISSION: "tickets:read",
    }
    assert all(h.append_action == OVERWRITE for h in ok.headers)
    assert sorted(ok.headers_to_remove) == sorted(["authorization", *METHOD_OVERRIDE_HEADERS])


def test_allow_for_an_autonomous_agent_removes_the_user_header() -> None:
    decision = Decision(Reason.ALLOWED, identity=AUTONOMOUS, permission="tickets:read")
    ok = check_response(decision, DECISION_ID, DEFAULT_RESPONSE, enforce=True).ok_response
    assert HEADER_USER not in header_values(ok.headers)
    assert header_values(ok.headers)[HEADER_AGENT] == "triage-bot"
    assert sorted(ok.headers_to_remove) == sorted(
        ["authorization", HEADER_USER, *METHOD_OVERRIDE_HEADERS]
    )


def test_allow_without_a_permission_removes_the_permission_header() -> None:
    decision = Decision(Reason.ALLOWED, identity=DELEGATED, mcp_method="tools/list")
    ok = check_response(decision, DECISION_ID, DEFAULT_RESPONSE, enforce=True).ok_response
    assert HEADER_PERMISSION not in header_values(ok.headers)
    assert sorted(ok.headers_to_remove) == sorted(
        ["authorization", HEADER_PERMISSION, *METHOD_OVERRIDE_HEADERS]
    )


def test_authorization_is_forwarded_when_configured() -> None:
    decision = Decision(Reason.ALLOWED, identity=DELEGATED, permission="tickets:read")
    response = check_response(
        decision, DECISION_ID, ResponseConfig(forward_authorization=True), enforce=True
    )
    assert sorted(response.ok_response.headers_to_remove) == sorted(METHOD_OVERRIDE_HEADERS)


def test_dynamic_metadata_carries_decision_id_reason_and_allowed() -> None:
    allow = Decision(Reason.ALLOWED, identity=DELEGATED, permission="tickets:read")
    metadata = check_response(allow, DECISION_ID, DEFAULT_RESPONSE, enforce=True).dynamic_metadata
    assert dict(metadata) == {"decision_id": DECISION_ID, "reason": "allowed", "allowed": True}

    denied = deny(Reason.TOKEN_EXPIRED).dynamic_metadata
    assert dict(denied) == {"decision_id": DECISION_ID, "reason": "token_expired", "allowed": False}


# --- deny --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "status", "grpc_code"),
    [
        (Reason.TOKEN_MISSING, 401, code_pb2.UNAUTHENTICATED),
        (Reason.TOKEN_EXPIRED, 401, code_pb2.UNAUTHENTICATED),
        (Reason.AGENT_LACKS_PERMISSION, 403, code_pb2.PERMISSION_DENIED),
        (Reason.ROUTE_UNKNOWN, 403, code_pb2.PERMISSION_DENIED),
        (Reason.MCP_REQUEST_INVALID, 400, code_pb2.INVALID_ARGUMENT),
        (Reason.FEED_STALE, 503, code_pb2.UNAVAILABLE),
        (Reason.KEYS_UNAVAILABLE, 503, code_pb2.UNAVAILABLE),
        (Reason.INTERNAL_ERROR, 500, code_pb2.INTERNAL),
    ],
)
def test_deny_maps_status_to_http_and_grpc_codes(
    reason: Reason, status: int, grpc_code: int
) -> None:
    response = deny(reason)
    assert response.WhichOneof("http_response") == "denied_response"
    assert response.denied_response.status.code == status
    assert response.status.code == grpc_code


@pytest.mark.parametrize("reason", [r for r in Reason if r is not Reason.ALLOWED])
def test_every_deny_reason_has_a_status_and_a_grpc_code(reason: Reason) -> None:
    response = deny(reason, permission="tickets:read")
    assert response.denied_response.status.code == OUTCOMES[reason].status
    assert response.status.code != code_pb2.OK
    assert response.status.code != code_pb2.UNKNOWN


def test_token_missing_challenge_has_no_error() -> None:
    headers = header_values(deny(Reason.TOKEN_MISSING).denied_response.headers)
    assert headers["www-authenticate"] == 'Bearer realm="extauthz"'


@pytest.mark.parametrize("reason", TOKEN_REASONS)
def test_token_reasons_challenge_with_invalid_token(reason: Reason) -> None:
    headers = header_values(deny(reason).denied_response.headers)
    assert headers["www-authenticate"] == (
        f'Bearer realm="extauthz", error="invalid_token", error_description="{reason.value}"'
    )


@pytest.mark.parametrize("reason", PERMISSION_REASONS)
def test_permission_reasons_challenge_with_insufficient_scope_naming_it(reason: Reason) -> None:
    response = deny(reason, permission="tickets:write", lacking=("user",))
    headers = header_values(response.denied_response.headers)
    assert headers["www-authenticate"] == (
        'Bearer realm="extauthz", error="insufficient_scope", '
        f'error_description="{reason.value}", scope="tickets:write"'
    )


def test_route_unknown_challenge_names_no_scope() -> None:
    headers = header_values(deny(Reason.ROUTE_UNKNOWN).denied_response.headers)
    assert headers["www-authenticate"] == (
        'Bearer realm="extauthz", error="insufficient_scope", error_description="route_unknown"'
    )


def test_mcp_request_invalid_is_400_invalid_request() -> None:
    response = deny(Reason.MCP_REQUEST_INVALID)
    headers = header_values(response.denied_response.headers)
    assert 'error="invalid_request"' in headers["www-authenticate"]
    assert "scope=" not in headers["www-authenticate"]
    assert json.loads(response.denied_response.body)["error"] == "invalid_request"


@pytest.mark.parametrize(
    ("reason", "error"),
    [
        (Reason.FEED_STALE, "temporarily_unavailable"),
        (Reason.KEYS_UNAVAILABLE, "temporarily_unavailable"),
        (Reason.INTERNAL_ERROR, "server_error"),
    ],
)
def test_our_own_faults_carry_no_challenge(reason: Reason, error: str) -> None:
    response = deny(reason)
    headers = header_values(response.denied_response.headers)
    assert "www-authenticate" not in headers
    assert json.loads(response.denied_response.body)["error"] == error


def test_realm_comes_from_the_config() -> None:
    response = check_response(
        Decision(Reason.TOKEN_MISSING), DECISION_ID, ResponseConfig(realm="tickets"), enforce=True
    )
    assert header_values(response.denied_response.headers)["www-authenticate"] == (
        'Bearer realm="tickets"'
    )


def test_deny_headers_are_json_content_type_and_the_decision_id() -> None:
    response = deny(Reason.TOKEN_EXPIRED)
    headers = header_values(response.denied_response.headers)
    assert headers["content-type"] == "application/json"
    assert headers[HEADER_DECISION_ID] == DECISION_ID
    assert HEADER_AGENT not in headers
    assert HEADER_USER not in headers
    assert all(h.append_action == OVERWRITE for h in response.denied_response.headers)


def test_deny_body_for_a_token_reason_has_exactly_error_reason_decision_id() -> None:
    body = json.loads(deny(Reason.TOKEN_EXPIRED).denied_response.body)
    assert body == {"error": "invalid_token", "reason": "token_expired", "decision_id": DECISION_ID}


def test_deny_body_for_token_missing_is_access_denied() -> None:
    body = json.loads(deny(Reason.TOKEN_MISSING).denied_response.body)
    assert body == {"error": "access_denied", "reason": "token_missing", "decision_id": DECISION_ID}


def test_deny_body_for_a_permission_reason_names_permission_and_lacking() -> None:
    response = deny(
        Reason.SCOPE_LACKS_PERMISSION, permission="tickets:write", lacking=("user", "scope")
    )
    assert json.loads(response.denied_response.body) == {
        "error": "insufficient_scope",
        "reason": "scope_lacks_permission",
        "decision_id": DECISION_ID,
        "permission": "tickets:write",
        "lacking": ["user", "scope"],
    }


@pytest.mark.parametrize("reason", [r for r in Reason if r is not Reason.ALLOWED])
def test_deny_body_never_carries_internal_detail_or_identity(reason: Reason) -> None:
    body = deny(reason, permission="tickets:read").denied_response.body
    document = json.loads(body)
    assert set(document) <= {"error", "reason", "decision_id", "permission", "lacking"}
    assert "detail" not in document
    assert "alice" not in body
    assert "support-agent" not in body


def test_answer_for_allow_is_a_plain_200() -> None:
    answer = answer_for(Decision(Reason.ALLOWED), DECISION_ID, "extauthz")
    assert (answer.status, answer.www_authenticate, answer.body) == (200, None, None)


def test_status_of_follows_the_outcome_table() -> None:
    assert status_of(Decision(Reason.ALLOWED)) == 200
    assert status_of(Decision(Reason.USER_UNKNOWN)) == 403
    assert status_of(Decision(Reason.FEED_STALE)) == 503


# --- dry run -----------------------------------------------------------------------------


def test_dry_run_turns_a_deny_into_an_ok_without_identity() -> None:
    decision = Decision(
        Reason.USER_LACKS_PERMISSION,
        identity=DELEGATED,
        permission="tickets:write",
        lacking=("user",),
    )
    response = check_response(decision, DECISION_ID, DEFAULT_RESPONSE, enforce=False)
    assert response.status.code == code_pb2.OK
    assert response.WhichOneof("http_response") == "ok_response"
    ok = response.ok_response
    assert header_values(ok.headers) == {HEADER_DECISION_ID: DECISION_ID}
    assert sorted(ok.headers_to_remove) == sorted(
        [HEADER_AGENT, HEADER_USER, HEADER_PERMISSION, "authorization", *METHOD_OVERRIDE_HEADERS]
    )
    assert dict(response.dynamic_metadata) == {
        "decision_id": DECISION_ID,
        "reason": "user_lacks_permission",
        "allowed": False,
    }


def test_dry_run_allow_is_the_same_as_an_enforced_allow() -> None:
    decision = Decision(Reason.ALLOWED, identity=DELEGATED, permission="tickets:read")
    enforced = check_response(decision, DECISION_ID, DEFAULT_RESPONSE, enforce=True)
    dry = check_response(decision, DECISION_ID, DEFAULT_RESPONSE, enforce=False)
    assert dry == enforced


# --- the wire form that Envoy gets -------------------------------------------------------

_ids = st.text(min_size=1, max_size=200)


@settings(max_examples=300, deadline=None)
@given(
    reason=st.sampled_from(list(Reason)),
    agent=_ids,
    user=st.none() | _ids,
    permission=st.none() | _ids,
    enforce=st.booleans(),
    forward_authorization=st.booleans(),
)
def test_the_encoded_answer_reads_back_as_the_answer_check_response_builds(
    reason: Reason,
    agent: str,
    user: str | None,
    permission: str | None,
    enforce: bool,
    forward_authorization: bool,
) -> None:
    # The allow path writes protobuf by hand; any slip in a tag or a length shows here as
    # a different message, or as bytes that do not parse at all.
    identity = Identity(agent, user, (agent,), None, "https://idp", None, frozenset())
    decision = Decision(reason, identity=identity, permission=permission)
    config = ResponseConfig(forward_authorization=forward_authorization)
    for _ in range(2):  # the first call prepares the allow body, the second reuses it
        assert_encoded_as_built(decision, DECISION_ID, config, enforce=enforce)


def assert_encoded_as_built(
    decision: Decision, decision_id: str, config: ResponseConfig, *, enforce: bool
) -> None:
    """The wire form reads back as the message check_response builds, or both refuse."""
    try:
        expected = check_response(decision, decision_id, config, enforce=enforce)
    except ValueError:  # text protobuf will not take (a lone surrogate)
        with pytest.raises(ValueError):
            encode_check_response(decision, decision_id, config, enforce=enforce)
        return
    wire = encode_check_response(decision, decision_id, config, enforce=enforce)
    assert external_auth_pb2.CheckResponse.FromString(wire) == expected


_deny_reasons = st.sampled_from([r for r in Reason if r is not Reason.ALLOWED])
_decision_ids = (
    st.text(st.sampled_from("0123456789abcdefZY"), min_size=1, max_size=140)
    | st.sampled_from([DECISION_ID, "Z" * 32, "deny-id-with-dashes", 'id"quoted', "é" * 32])
    | st.text(min_size=1, max_size=40)
)


@settings(max_examples=400, deadline=None)
@given(
    reason=_deny_reasons,
    permission=st.none() | st.text(max_size=40) | st.just("Z" * 32),
    lacking=st.lists(st.sampled_from(["agent", "user", "scope"]), max_size=3).map(tuple),
    realm=st.text(max_size=20) | st.just("Z" * 32),
    decision_ids=st.lists(_decision_ids, min_size=1, max_size=4),
)
def test_an_encoded_deny_reads_back_as_the_deny_check_response_builds(
    reason: Reason,
    permission: str | None,
    lacking: tuple[str, ...],
    realm: str,
    decision_ids: list[str],
) -> None:
    # Denies are serialized once per kind and id length, then take each check's id: every
    # id must land where the message would have it, with every length right.
    decision = Decision(reason, permission=permission, lacking=lacking)
    config = ResponseConfig(realm=realm)
    for decision_id in decision_ids * 2:
        assert_encoded_as_built(decision, decision_id, config, enforce=True)


def test_prepared_denies_are_bounded() -> None:
    config = ResponseConfig()
    for n in range(_MAX_DENY_PARTS + 10):
        decision = Decision(Reason.USER_LACKS_PERMISSION, permission=f"p:{n}", lacking=("user",))
        wire = encode_check_response(decision, DECISION_ID, config, enforce=True)
        denied = external_auth_pb2.CheckResponse.FromString(wire).denied_response
        assert json.loads(denied.body)["permission"] == f"p:{n}"
    assert len(_DENY_PARTS) <= _MAX_DENY_PARTS


def test_prepared_allow_bodies_are_bounded() -> None:
    config = ResponseConfig()
    for n in range(_MAX_ALLOW_BODIES + 10):
        identity = Identity(f"agent-{n}", "alice", (f"agent-{n}",), None, "i", None, frozenset())
        decision = Decision(Reason.ALLOWED, identity=identity, permission="tickets:read")
        wire = encode_check_response(decision, DECISION_ID, config, enforce=True)
        ok = external_auth_pb2.CheckResponse.FromString(wire).ok_response
        headers = header_values(ok.headers)
        assert headers["x-extauthz-agent"] == f"agent-{n}"
    assert len(_ALLOW_BODIES) <= _MAX_ALLOW_BODIES


@pytest.mark.parametrize("length", [*range(95, 135), 16_380, 16_390, 20_000])
def test_the_encoded_answer_is_right_where_a_length_needs_a_second_byte(length: int) -> None:
    # Lengths under 128 take one byte, written by a shortcut; the nested lengths of a
    # header cross that line at different value lengths, so every one near it is tried.
    for value in ("a" * length, "é" * (length // 2)):
        identity = Identity(value, value, (value,), None, "https://idp", None, frozenset())
        decision = Decision(Reason.ALLOWED, identity=identity, permission=value)
        decision_id = "d" * length  # ours are 32 characters; the metadata has the same rule
        wire = encode_check_response(decision, decision_id, DEFAULT_RESPONSE, enforce=True)
        expected = check_response(decision, decision_id, DEFAULT_RESPONSE, enforce=True)
        assert external_auth_pb2.CheckResponse.FromString(wire) == expected
