"""The ext_authz Check: adapts, decides, answers, records. Never raises.

Every path, including an unexpected exception, ends in an explicit answer to Envoy, one
decision line and one metrics update.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from extauthz.config import Config
from extauthz.decision import PolicyView, decide
from extauthz.decision_log import DecisionLog, decision_record
from extauthz.envoy import check_response, request_from_check, status_of
from extauthz.errors import Reason
from extauthz.feed.cache import FeedCache
from extauthz.metrics import Metrics
from extauthz.model import Decision, RequestAttributes
from extauthz.tokens.keys import KeySet

log = logging.getLogger("extauthz.service")


class Runtime:
    """The live state a check reads. Each part is replaced whole, never edited in place."""

    def __init__(self, config: Config, key_sets: Mapping[str, KeySet]) -> None:
        self.config = config
        self.key_sets = key_sets
        self.feed = FeedCache(revocation_leeway=config.tokens.leeway)

    def view(self) -> PolicyView:
        return PolicyView(self.config, self.key_sets, self.feed.state)

    @property
    def ready(self) -> bool:
        """Config, keys for every issuer, and a first feed are loaded. A feed that later
        goes stale keeps us ready: autonomous traffic still works, delegated gets 503."""
        return self.feed.state.snapshot is not None and all(
            self.key_sets.get(i) is not None and self.key_sets[i].keys for i in self.config.issuers
        )


class CheckHandler:
    def __init__(
        self,
        runtime: Runtime,
        metrics: Metrics,
        decision_log: DecisionLog,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.decision_log = decision_log
        self.clock = clock

    def check(self, check: external_auth_pb2.CheckRequest) -> external_auth_pb2.CheckResponse:
        started = time.perf_counter()
        decision_id = uuid.uuid4().hex
        view = self.runtime.view()
        now = self.clock()
        request = _EMPTY_REQUEST
        try:
            request = request_from_check(check)
            decision = decide(request, view, now)
        except Exception:  # the last line of defence: deny, log, keep serving
            log.exception("check failed unexpectedly", extra={"decision_id": decision_id})
            decision = Decision(Reason.INTERNAL_ERROR)
        enforce = view.config.mode == "enforce"
        response = check_response(decision, decision_id, view.config.response, enforce=enforce)
        elapsed = time.perf_counter() - started
        record = self._record(decision, decision_id, request, view, now, elapsed, enforce)
        try:
            self.decision_log.write(record)
        except (OSError, ValueError):
            # An unaudited allow is worse than a refused request: fail closed.
            log.exception("decision log write failed", extra={"decision_id": decision_id})
            decision = Decision(Reason.INTERNAL_ERROR)
            response = check_response(decision, decision_id, view.config.response, enforce=True)
        self.metrics.observe_check(decision.reason, elapsed)
        return response

    def _record(
        self,
        decision: Decision,
        decision_id: str,
        request: RequestAttributes,
        view: PolicyView,
        now: float,
        elapsed: float,
        enforce: bool,
    ) -> dict[str, Any]:
        status = status_of(decision)
        feed = view.feed
        return decision_record(
            now=now,
            decision_id=decision_id,
            decision=decision,
            request=request,
            mode=view.config.mode,
            status=status if enforce else 200,
            would_status=None if enforce else status,
            feed_version=feed.snapshot.version if feed.snapshot else None,
            feed_age_s=feed.age(now),
            policy_version=view.config.policy_version,
            latency_us=int(elapsed * 1_000_000),
        )


_EMPTY_REQUEST = RequestAttributes(method="", host="", path="", headers={})


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """gRPC ``envoy.service.auth.v3.Authorization``."""

    def __init__(self, handler: CheckHandler) -> None:
        self.handler = handler

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: object
    ) -> external_auth_pb2.CheckResponse:
        return self.handler.check(request)
