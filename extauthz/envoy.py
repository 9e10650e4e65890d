"""The only module that knows Envoy's ext_authz types.

``request_from_check`` turns a CheckRequest into RequestAttributes; ``check_response``
turns a Decision into a CheckResponse. The domain never imports Envoy's protos.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from extauthz.config import ResponseConfig
from extauthz.errors import OUTCOMES, Reason
from extauthz.model import Decision, RequestAttributes

HEADER_AGENT = "x-extauthz-agent"
HEADER_USER = "x-extauthz-user"
HEADER_PERMISSION = "x-extauthz-permission"
HEADER_DECISION_ID = "x-extauthz-decision-id"
# Frameworks that honour these would run another method than the one we authorized
# (a GET checked as tickets:read, served as DELETE): they never reach the upstream.
METHOD_OVERRIDE_HEADERS = ("x-http-method-override", "x-http-method", "x-method-override")
# Envoy marks a body cut at with_request_body.max_request_bytes with this header.
PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_GRPC_CODE_OF_STATUS = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    403: code_pb2.PERMISSION_DENIED,
    500: code_pb2.INTERNAL,
    503: code_pb2.UNAVAILABLE,
}
_ERROR_OF_STATUS = {500: "server_error", 503: "temporarily_unavailable"}


def request_from_check(check: external_auth_pb2.CheckRequest) -> RequestAttributes:
    attributes = check.attributes
    http = attributes.request.http
    # Envoy's header map is read in place: copying it into a dict cost more than the few
    # lookups a check makes in it.
    headers: Mapping[str, str] = http.headers
    if not headers and http.header_map.headers:
        # Envoy sends header_map instead of headers when encode_raw_headers is on.
        headers = {
            entry.key.lower(): entry.value or entry.raw_value.decode("utf-8", "replace")
            for entry in http.header_map.headers
        }
    body: bytes | None = http.raw_body or None
    if body is None and http.body:
        body = http.body.encode("utf-8")
    return RequestAttributes(
        http.method,
        http.host or headers.get(":authority", ""),
        # Envoy passes the path undecoded and with the query; we authorize the path alone.
        http.path.split("?", 1)[0],
        headers,
        body,
        PARTIAL_BODY_HEADER in headers and headers[PARTIAL_BODY_HEADER].lower() == "true",
        # http.id is Envoy's internal stream id; x-request-id is what access logs and the
        # upstream see, so that is what joins a decision line to the rest.
        headers.get("x-request-id", ""),
        attributes.source.address.socket_address.address,
    )


@dataclass(frozen=True, slots=True)
class Answer:
    """What the client gets: HTTP status and (on deny) the challenge and JSON body."""

    status: int
    www_authenticate: str | None
    body: str | None


def answer_for(decision: Decision, decision_id: str, realm: str) -> Answer:
    """The HTTP answer for a decision (as enforced; dry-run handling is the caller's)."""
    outcome = OUTCOMES[decision.reason]
    if decision.allowed:
        return Answer(200, None, None)
    challenge: str | None = None
    if outcome.status == 401 or outcome.bearer_error is not None:
        params = [f'realm="{realm}"']
        if outcome.bearer_error is not None:
            params.append(f'error="{outcome.bearer_error}"')
            params.append(f'error_description="{decision.reason.value}"')
        if outcome.names_scope and decision.permission:
            params.append(f'scope="{decision.permission}"')
        challenge = "Bearer " + ", ".join(params)
    body: dict[str, object] = {
        "error": outcome.bearer_error or _ERROR_OF_STATUS.get(outcome.status, "access_denied"),
        "reason": decision.reason.value,
        "decision_id": decision_id,
    }
    if outcome.names_scope and decision.permission:
        body["permission"] = decision.permission
    if decision.lacking:
        body["lacking"] = list(decision.lacking)
    return Answer(outcome.status, challenge, json.dumps(body, separators=(",", ":")))


def check_response(
    decision: Decision,
    decision_id: str,
    response_config: ResponseConfig,
    *,
    enforce: bool,
) -> external_auth_pb2.CheckResponse:
    """Build Envoy's answer. With ``enforce`` False (dry run) a deny is sent as an allow
    that carries no identity, since an untrusted identity must not reach the upstream."""
    if decision.allowed or not enforce:
        response = _ok_response(decision, decision_id, response_config)
    else:
        answer = answer_for(decision, decision_id, response_config.realm)
        headers = [_header("content-type", "application/json")]
        if answer.www_authenticate is not None:
            headers.append(_header("www-authenticate", answer.www_authenticate))
        headers.append(_header(HEADER_DECISION_ID, decision_id))
        response = external_auth_pb2.CheckResponse(
            status=status_pb2.Status(
                code=_GRPC_CODE_OF_STATUS.get(answer.status, code_pb2.UNKNOWN)
            ),
            denied_response=external_auth_pb2.DeniedHttpResponse(
                status=http_status_pb2.HttpStatus(code=answer.status),
                headers=headers,
                body=answer.body or "",
            ),
        )
    metadata = response.dynamic_metadata.fields
    metadata["decision_id"].string_value = decision_id
    metadata["reason"].string_value = decision.reason.value
    metadata["allowed"].bool_value = decision.allowed
    return response


def encode_check_response(
    decision: Decision,
    decision_id: str,
    response_config: ResponseConfig,
    *,
    enforce: bool,
) -> bytes:
    """``check_response`` in wire form, for the gRPC answer. An allow (most traffic) is
    written from prepared bytes without building a message; anything else is built as a
    message and serialized. Both parse to the same CheckResponse (a test holds them to it)."""
    if not (decision.allowed or not enforce):
        return _encoded_deny(decision, decision_id, response_config)
    key = (response_config.forward_authorization, *_identity_values(decision))
    try:
        rest = _ALLOW_BODIES[key]
    except KeyError:
        try:
            rest = _allow_body(*key)
        except UnicodeEncodeError:
            # A lone surrogate cannot be UTF-8: the message path gives its own answer.
            return _serialized(
                check_response(decision, decision_id, response_config, enforce=enforce)
            )
        if len(_ALLOW_BODIES) >= _MAX_ALLOW_BODIES:
            _ALLOW_BODIES.clear()
        _ALLOW_BODIES[key] = rest
    decision_id_bytes = decision_id.encode("ascii")
    header_before, header_after, metadata_before = _decision_id_frames(len(decision_id_bytes))
    metadata = (
        metadata_before
        + decision_id_bytes
        + _wire_reason(decision.reason)
        + (_WIRE_ALLOWED_TRUE if decision.allowed else _WIRE_ALLOWED_FALSE)
    )
    # A message field that occurs more than once is merged by a protobuf parser, repeated
    # fields concatenated in order: this ok_response (the decision id header) and the
    # prepared one (the identity headers, the headers to remove) read as one, with the
    # headers in check_response's order.
    return (
        header_before
        + decision_id_bytes
        + header_after
        + rest
        + _wire_field(_DYNAMIC_METADATA, metadata)
    )


def _encoded_deny(decision: Decision, decision_id: str, response_config: ResponseConfig) -> bytes:
    """An enforced deny: the message serialized once per kind of deny and decision id
    length, then the decision id put in its three places (a header, the JSON body and the
    metadata). Ours are letters and digits, which every one of those holds as they are."""
    if not (decision_id.isascii() and decision_id.isalnum()):
        return _serialized(check_response(decision, decision_id, response_config, enforce=True))
    # All that check_response reads of a deny, but the decision id.
    key = (
        decision.reason,
        decision.permission,
        decision.lacking,
        response_config,
        len(decision_id),
    )
    parts = _DENY_PARTS.get(key)
    if parts is None:
        parts = _deny_parts(decision, len(decision_id), response_config)
        if len(_DENY_PARTS) >= _MAX_DENY_PARTS:
            _DENY_PARTS.clear()
        _DENY_PARTS[key] = parts
    if not parts:
        return _serialized(check_response(decision, decision_id, response_config, enforce=True))
    return decision_id.encode("ascii").join(parts)


def _deny_parts(
    decision: Decision, length: int, response_config: ResponseConfig
) -> tuple[bytes, ...]:
    """The deny serialized with a stand-in id, cut where the id goes; () when that does not
    give back, for a second stand-in, exactly what serializing with it gives."""
    try:
        stand_in = _serialized(
            check_response(decision, "Z" * length, response_config, enforce=True)
        )
        check = _serialized(check_response(decision, "Y" * length, response_config, enforce=True))
    except ValueError:  # text protobuf will not take (a lone surrogate)
        return ()
    parts = tuple(stand_in.split(b"Z" * length))
    if len(parts) != 4 or (b"Y" * length).join(parts) != check:
        return ()
    return parts


# Prepared denies by (reason, permission, lacking sides, response config, id length).
_DENY_PARTS: dict[tuple[object, ...], tuple[bytes, ...]] = {}
_MAX_DENY_PARTS = 4096


def _identity_values(decision: Decision) -> tuple[str | None, str | None, str | None]:
    """Agent, user and permission for the identity headers: an allow's, else none."""
    identity = decision.identity if decision.allowed else None
    return (
        identity.agent if identity else None,
        identity.user if identity else None,
        decision.permission if decision.allowed else None,
    )


def _serialized(response: external_auth_pb2.CheckResponse) -> bytes:
    wire: bytes = response.SerializeToString()
    return wire


# Prepared allow answers past the decision id, by (forward_authorization, agent, user,
# permission): few distinct ones carry most traffic. Cleared when full, since each costs
# only a microsecond or two to make again.
_ALLOW_BODIES: dict[tuple[bool, str | None, str | None, str | None], bytes] = {}
_MAX_ALLOW_BODIES = 4096


def _allow_body(
    forward_authorization: bool, agent: str | None, user: str | None, permission: str | None
) -> bytes:
    """Status, the identity headers after the decision id, and the headers to remove."""
    values = (agent, user, permission)
    static, keys = _ok_wire_template(
        forward_authorization, (True, *(v is not None for v in values))
    )
    headers = b"".join(
        _wire_header(key, value.encode("utf-8"))
        for key, value in zip(keys[1:], (v for v in values if v is not None), strict=True)
    )
    return _wire_field(_OK_RESPONSE, headers) + static


@functools.cache
def _wire_reason(reason: Reason) -> bytes:
    return _wire_metadata_string(_WIRE_KEY_REASON, reason.value.encode("utf-8"))


# Tags (field number << 3 | wire type 2, "length-delimited") of the fields written by hand,
# from envoy/service/auth/v3/external_auth.proto, envoy/config/core/v3/base.proto and
# google/protobuf/struct.proto. All field numbers are below 16, so each tag is one byte.
_OK_RESPONSE = b"\x1a"  # CheckResponse.ok_response = 3
_DYNAMIC_METADATA = b"\x22"  # CheckResponse.dynamic_metadata = 4
_OK_HEADERS = b"\x12"  # OkHttpResponse.headers = 2
_OPTION_HEADER = b"\x0a"  # HeaderValueOption.header = 1
_HEADER_KEY, _HEADER_VALUE = b"\x0a", b"\x12"  # HeaderValue.key = 1, .value = 2
_STRUCT_FIELDS = b"\x0a"  # Struct.fields = 1, a map: entries of key = 1, value = 2
_ENTRY_KEY, _ENTRY_VALUE = b"\x0a", b"\x12"
_VALUE_STRING = b"\x1a"  # Value.string_value = 3
# HeaderValueOption.append_action = 3 and Value.bool_value = 4 are varints (wire type 0).
_APPEND_OVERWRITE = bytes((3 << 3, _OVERWRITE))
_ONE_BYTE_LENGTHS = tuple(bytes((n,)) for n in range(128))


def _wire_length(n: int) -> bytes:
    if n < 128:
        return _ONE_BYTE_LENGTHS[n]
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _wire_field(tag: bytes, payload: bytes) -> bytes:
    return tag + _wire_length(len(payload)) + payload


def _wire_header(key: bytes, value: bytes) -> bytes:
    """One OkHttpResponse.headers entry; ``key`` is its HeaderValue.key field, prepared."""
    header = key + _wire_field(_HEADER_VALUE, value)
    return _wire_field(_OK_HEADERS, _wire_field(_OPTION_HEADER, header) + _APPEND_OVERWRITE)


def _wire_metadata_string(key: bytes, value: bytes) -> bytes:
    """One Struct.fields entry with a string value; ``key`` is the entry's key, prepared."""
    entry = key + _wire_field(_ENTRY_VALUE, _wire_field(_VALUE_STRING, value))
    return _wire_field(_STRUCT_FIELDS, entry)


def _wire_metadata_bool(key: bytes, value: bool) -> bytes:
    entry = _wire_field(_ENTRY_KEY, key) + _wire_field(_ENTRY_VALUE, bytes((4 << 3, value)))
    return _wire_field(_STRUCT_FIELDS, entry)


_WIRE_KEY_DECISION_ID = _wire_field(_ENTRY_KEY, b"decision_id")
_WIRE_KEY_REASON = _wire_field(_ENTRY_KEY, b"reason")
_WIRE_KEY_DECISION_ID_HEADER = _wire_field(_HEADER_KEY, HEADER_DECISION_ID.encode())
_WIRE_ALLOWED_TRUE = _wire_metadata_bool(b"allowed", True)
_WIRE_ALLOWED_FALSE = _wire_metadata_bool(b"allowed", False)


@functools.cache
def _decision_id_frames(length: int) -> tuple[bytes, bytes, bytes]:
    """What comes before and after a decision id of ``length`` bytes in its ok_response
    header, and before it in its metadata entry: the enclosing lengths depend on its
    length alone, so each check only puts its id in between."""
    placeholder = b"-" * length
    header = _wire_field(_OK_RESPONSE, _wire_header(_WIRE_KEY_DECISION_ID_HEADER, placeholder))
    after = len(_APPEND_OVERWRITE)  # the id is followed by the append action alone
    metadata = _wire_metadata_string(_WIRE_KEY_DECISION_ID, placeholder)  # the id comes last
    return (
        header[: len(header) - after - length],
        header[len(header) - after :],
        metadata[: len(metadata) - length],
    )


@functools.cache
def _ok_wire_template(
    forward_authorization: bool, present: tuple[bool, ...]
) -> tuple[bytes, tuple[bytes, ...]]:
    """The allow answer without its header values, serialized (status, headers to
    remove), and the HeaderValue.key field of each header to be set, in order."""
    template = external_auth_pb2.CheckResponse()
    template.CopyFrom(_ok_template(forward_authorization, present))
    keys = tuple(
        _wire_field(_HEADER_KEY, option.header.key.encode())
        for option in template.ok_response.headers
    )
    del template.ok_response.headers[:]
    return _serialized(template), keys


def _ok_response(
    decision: Decision, decision_id: str, response_config: ResponseConfig
) -> external_auth_pb2.CheckResponse:
    values = (decision_id, *_identity_values(decision))
    template = _ok_template(
        response_config.forward_authorization, tuple(v is not None for v in values)
    )
    # A copy of a prepared message, with the values filled in, costs a quarter of
    # building the headers and removals afresh on every check.
    response = external_auth_pb2.CheckResponse()
    response.CopyFrom(template)
    headers = response.ok_response.headers
    for option, value in zip(headers, (v for v in values if v is not None), strict=True):
        option.header.value = value
    return response


_IDENTITY_HEADERS = (HEADER_DECISION_ID, HEADER_AGENT, HEADER_USER, HEADER_PERMISSION)


@functools.cache
def _ok_template(
    forward_authorization: bool, present: tuple[bool, ...]
) -> external_auth_pb2.CheckResponse:
    """The allow answer with our headers set (values to be filled in, in order) and
    removed where there is nothing to say: headers a client sent under our names are
    overwritten or removed, never passed on."""
    remove = [name for name, there in zip(_IDENTITY_HEADERS, present, strict=True) if not there]
    remove.extend(METHOD_OVERRIDE_HEADERS)
    if not forward_authorization:
        remove.append("authorization")
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK),
        ok_response=external_auth_pb2.OkHttpResponse(
            headers=[
                _header(name, "")
                for name, there in zip(_IDENTITY_HEADERS, present, strict=True)
                if there
            ],
            headers_to_remove=remove,
        ),
    )


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value), append_action=_OVERWRITE
    )


def status_of(decision: Decision) -> int:
    return OUTCOMES[decision.reason].status
