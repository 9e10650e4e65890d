"""The only module that knows Envoy's ext_authz types.

``request_from_check`` turns a CheckRequest into RequestAttributes; ``check_response``
turns a Decision into a CheckResponse. The domain never imports Envoy's protos.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from extauthz.config import ResponseConfig
from extauthz.errors import OUTCOMES
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
    http = check.attributes.request.http
    headers: dict[str, str] = dict(http.headers)
    if not headers and http.header_map.headers:
        # Envoy sends header_map instead of headers when encode_raw_headers is on.
        for entry in http.header_map.headers:
            headers[entry.key.lower()] = entry.value or entry.raw_value.decode("utf-8", "replace")
    if http.raw_body:
        body: bytes | None = http.raw_body
    elif http.body:
        body = http.body.encode("utf-8")
    else:
        body = None
    socket = check.attributes.source.address.socket_address
    return RequestAttributes(
        method=http.method,
        host=http.host or headers.get(":authority", ""),
        # Envoy passes the path undecoded and with the query; we authorize the path alone.
        path=http.path.split("?", 1)[0],
        headers=headers,
        body=body,
        body_truncated=headers.get(PARTIAL_BODY_HEADER, "").lower() == "true",
        # http.id is Envoy's internal stream id; x-request-id is what access logs and the
        # upstream see, so that is what joins a decision line to the rest.
        request_id=headers.get("x-request-id", ""),
        source=socket.address,
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


def _ok_response(
    decision: Decision, decision_id: str, response_config: ResponseConfig
) -> external_auth_pb2.CheckResponse:
    identity = decision.identity if decision.allowed else None
    values = (
        decision_id,
        identity.agent if identity else None,
        identity.user if identity else None,
        decision.permission if decision.allowed else None,
    )
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
