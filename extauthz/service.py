"""The ext_authz Check: adapts, decides, answers, records. Never raises.

Every path, including an unexpected exception, ends in an explicit answer to Envoy, one
decision line and one metrics update.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import grpc
from envoy.service.auth.v3 import external_auth_pb2

from extauthz.config import Config
from extauthz.decision import PolicyView, authenticate, authorize
from extauthz.decision_log import DecisionLines, DecisionLogFull, DecisionSink
from extauthz.envoy import encode_check_response, request_from_check, status_of
from extauthz.errors import Reason
from extauthz.feed.cache import FeedCache
from extauthz.metrics import Metrics
from extauthz.model import Decision, RequestAttributes
from extauthz.tokens.cache import VerifiedTokens
from extauthz.tokens.keys import KeySet

log = logging.getLogger("extauthz.service")


@dataclass(frozen=True, slots=True)
class Policy:
    """The config and the keys it trusts, swapped together as one reference, so a check
    never pairs one config's issuers with another's keys."""

    config: Config
    key_sets: Mapping[str, KeySet]
    # Belongs to this config and these keys only: a new policy starts an empty one.
    verified_tokens: VerifiedTokens = field(default_factory=VerifiedTokens)


class Runtime:
    """The live state a check reads. Each part is replaced whole, never edited in place;
    replacements happen on the event loop, so read-modify-write needs no lock."""

    def __init__(self, config: Config, key_sets: Mapping[str, KeySet]) -> None:
        self.policy = Policy(config, dict(key_sets))
        self.feed = FeedCache(revocation_leeway=config.tokens.leeway)
        policy = self.policy
        self._view = (
            policy,
            PolicyView(config, policy.key_sets, self.feed.state, policy.verified_tokens),
        )

    @property
    def config(self) -> Config:
        return self.policy.config

    @property
    def key_sets(self) -> Mapping[str, KeySet]:
        return self.policy.key_sets

    def view(self) -> PolicyView:
        # The same view until the policy or the feed state is replaced: it is immutable, so
        # checks share it instead of each building one.
        policy, state = self.policy, self.feed.state
        view_policy, view = self._view
        if view_policy is not policy or view.feed is not state:
            view = PolicyView(policy.config, policy.key_sets, state, policy.verified_tokens)
            self._view = (policy, view)
        return view

    def publish_keys(self, key_set: KeySet) -> None:
        """Make ``key_set`` the keys of its issuer."""
        policy = self.policy
        self.policy = Policy(policy.config, {**policy.key_sets, key_set.issuer: key_set})

    def swap_policy(self, config: Config, key_sets: Mapping[str, KeySet]) -> None:
        self.policy = Policy(config, dict(key_sets))
        self.feed.revocation_leeway = config.tokens.leeway

    @property
    def ready(self) -> bool:
        """Config, keys for every issuer, and a first feed are loaded. A feed that later
        goes stale keeps us ready: autonomous traffic still works, delegated gets 503."""
        policy = self.policy
        return self.feed.state.snapshot is not None and all(
            policy.key_sets.get(i) is not None and policy.key_sets[i].keys
            for i in policy.config.issuers
        )


# Fetches an issuer's keys again; True when new keys were published.
KeyRefetch = Callable[[str], Awaitable[bool]]


@dataclass(slots=True)
class _Pending:
    """One check decided but not yet answered."""

    started: float
    decision_id: str
    request: RequestAttributes
    view: PolicyView
    now: float
    decision: Decision
    # Seconds spent in each stage; None where the check did not reach it.
    parse_s: float | None = None
    verify_s: float | None = None
    decide_s: float | None = None


class CheckHandler:
    def __init__(
        self,
        runtime: Runtime,
        metrics: Metrics,
        decision_log: DecisionSink,
        clock: Callable[[], float] = time.time,
        refetch_keys: KeyRefetch | None = None,
    ) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.decision_log = decision_log
        self.clock = clock
        self.refetch_keys = refetch_keys
        # Decision ids: 64 random bits for this process, then a counter. Unique across
        # processes and restarts without a random draw (a system call) per check; they
        # join records, they are not secrets.
        self._id_prefix = os.urandom(8).hex()
        self._id_counter = itertools.count(1)
        self._lines = DecisionLines()

    def check(self, check: external_auth_pb2.CheckRequest) -> external_auth_pb2.CheckResponse:
        """Decide and answer one check from the keys at hand, read back from the wire form
        that Envoy gets."""
        return external_auth_pb2.CheckResponse.FromString(self.check_encoded(check))

    def check_encoded(self, check: external_auth_pb2.CheckRequest) -> bytes:
        """As ``check``, the answer serialized."""
        return self._answer(self._decide(check))

    async def check_refetching_keys(self, check: external_auth_pb2.CheckRequest) -> bytes:
        """As ``check_encoded``, but a token naming a key its issuer has not yet given us gets one
        (rate-limited) refetch of that issuer's keys and is decided again: the first token
        signed with a rotated-in key is not refused."""
        pending = self._decide(check)
        issuer = pending.decision.refetch_keys_of
        if issuer is not None and self.refetch_keys is not None:
            waiting = self.metrics.checks_waiting_for_keys
            waiting.inc()
            try:
                refetched = await self.refetch_keys(issuer)
            except Exception:  # a failed refetch leaves the deny as it is
                log.exception("key refetch failed", extra={"decision_id": pending.decision_id})
                refetched = False
            finally:
                waiting.dec()
            if refetched:
                pending.view, pending.now = self.runtime.view(), self.clock()
                self._safe_decide(pending)
        return self._answer(pending)

    def shed(self, check: external_auth_pb2.CheckRequest) -> bytes:
        """Answer 503 overloaded without deciding: the check waited in the queue until too
        little of its deadline is left. Still logged and counted, like any answer."""
        pending = self._pending()
        try:
            pending.request = request_from_check(check)
        except Exception:  # the last line of defence: deny, log, keep serving
            log.exception("check failed unexpectedly", extra={"decision_id": pending.decision_id})
            return self._answer(pending)
        pending.parse_s = time.perf_counter() - pending.started
        pending.decision = Decision(Reason.OVERLOADED)
        return self._answer(pending)

    def _pending(self) -> _Pending:
        return _Pending(
            time.perf_counter(),
            f"{self._id_prefix}{next(self._id_counter):016x}",
            _EMPTY_REQUEST,
            self.runtime.view(),
            self.clock(),
            _UNDECIDED,
        )

    def _decide(self, check: external_auth_pb2.CheckRequest) -> _Pending:
        pending = self._pending()
        try:
            pending.request = request_from_check(check)
        except Exception:  # the last line of defence: deny, log, keep serving
            log.exception("check failed unexpectedly", extra={"decision_id": pending.decision_id})
            return pending
        pending.parse_s = time.perf_counter() - pending.started
        self._safe_decide(pending)
        return pending

    def _safe_decide(self, pending: _Pending) -> None:
        """Decide ``pending`` in its two stages, timing each (a second decision after a
        key refetch times them again)."""
        pending.verify_s = pending.decide_s = None
        perf_counter = time.perf_counter
        try:
            began = perf_counter()
            authenticated = authenticate(pending.request, pending.view, pending.now)
            verified = perf_counter()
            pending.verify_s = verified - began
            if isinstance(authenticated, Decision):
                pending.decision = authenticated
                return
            pending.decision = authorize(authenticated, pending.request, pending.view, pending.now)
            pending.decide_s = perf_counter() - verified
        except Exception:  # the last line of defence: deny, log, keep serving
            log.exception("check failed unexpectedly", extra={"decision_id": pending.decision_id})
            pending.decision = Decision(Reason.INTERNAL_ERROR)

    def _answer(self, pending: _Pending) -> bytes:
        answering = time.perf_counter()
        decision, decision_id, view = pending.decision, pending.decision_id, pending.view
        enforce = view.config.mode == "enforce"
        response = encode_check_response(
            decision, decision_id, view.config.response, enforce=enforce
        )
        elapsed = time.perf_counter() - pending.started
        line = self._line(
            decision, decision_id, pending.request, view, pending.now, elapsed, enforce
        )
        try:
            self.decision_log.write_line(line)
        except DecisionLogFull:
            # Reported by the log itself, once per episode, not once per request.
            decision = Decision(Reason.DECISION_LOG_UNAVAILABLE)
            response = encode_check_response(
                decision, decision_id, view.config.response, enforce=True
            )
        except (OSError, ValueError):
            # An unaudited allow is worse than a refused request: fail closed.
            log.exception("decision log write failed", extra={"decision_id": decision_id})
            decision = Decision(Reason.INTERNAL_ERROR)
            response = encode_check_response(
                decision, decision_id, view.config.response, enforce=True
            )
        metrics = self.metrics
        metrics.observe_check(decision.reason, elapsed)
        metrics.observe_stages(
            pending.parse_s, pending.verify_s, pending.decide_s, time.perf_counter() - answering
        )
        return response

    def _line(
        self,
        decision: Decision,
        decision_id: str,
        request: RequestAttributes,
        view: PolicyView,
        now: float,
        elapsed: float,
        enforce: bool,
    ) -> str:
        status = status_of(decision)
        feed = view.feed
        return self._lines.encode(
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
# Until decided, a check stands denied: an exception before the decision answers this.
_UNDECIDED = Decision(Reason.INTERNAL_ERROR)


class AuthorizationServicer:
    """gRPC ``envoy.service.auth.v3.Authorization``. ``Check`` answers in wire form:
    register it with ``add_authorization_servicer``, not the generated helper, whose
    serializer expects a message."""

    def __init__(self, handler: CheckHandler) -> None:
        self.handler = handler
        # Read once: like the rest of server.*, it takes effect on restart.
        self.min_time_left = handler.runtime.config.server.min_time_left

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        # Past saturation checks queue up; one that arrives with almost none of its
        # deadline left is answered at once instead of decided too late for anyone.
        min_time_left = self.min_time_left
        if min_time_left > 0:
            remaining = context.time_remaining()
            if remaining is not None and remaining < min_time_left:
                return self.handler.shed(request)
        return await self.handler.check_refetching_keys(request)


def _already_encoded(response: bytes) -> bytes:
    return response


def add_authorization_servicer(servicer: AuthorizationServicer, server: grpc.aio.Server) -> None:
    """Serve ``servicer`` as envoy.service.auth.v3.Authorization on ``server``."""
    handlers = {
        "Check": grpc.unary_unary_rpc_method_handler(
            servicer.Check,
            request_deserializer=external_auth_pb2.CheckRequest.FromString,
            response_serializer=_already_encoded,
        )
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(_SERVICE_NAME, handlers),)
    )
    # As the generated helper does: a method registered up front skips the lookup of a
    # generic handler on every call.
    server.add_registered_method_handlers(_SERVICE_NAME, handlers)


_SERVICE_NAME = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name
