"""``make demo``: AI agents call a ticket service through Envoy; extauthz decides each call.

Starts the whole system on loopback (``extauthz.demo.stack``: an echo upstream, extauthz
with deploy/extauthz/config.yaml, Envoy with deploy/envoy/envoy.yaml), sends a scripted set
of agent requests, prints what each got and why, prints the decision lines extauthz wrote,
and stops everything. Exits 1 if any request did not get the answer the script expects.

    python -m extauthz.demo.run [--keep]
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from extauthz.demo.stack import AUDIENCE, RESOURCE_HOST, Response, Stack, StackError

READ_WRITE = "tickets:read tickets:write"
NEW_TICKET = b'{"title": "printer on fire"}'


@dataclass(frozen=True, slots=True)
class Step:
    """One scripted request and the answer it must get."""

    what: str
    method: str
    path: str
    token: str | None
    expect_status: int
    expect_reason: str
    body: bytes | None = None


def _mcp(method: str, params: dict[str, Any] | None = None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        message["params"] = params
    return json.dumps(message).encode()


def script(stack: Stack) -> list[Step]:
    """The requests, with tokens from the stack's throwaway issuer."""
    alice = stack.delegated_token(agent="support-agent", user="alice", scope=READ_WRITE)
    bot = stack.autonomous_token(agent="triage-bot", scope="tickets:read")
    return [
        Step("support-agent, acting for alice, reads a ticket", "GET", "/tickets/42",
             alice, 200, "allowed"),
        Step("triage-bot, acting on its own, reads a ticket", "GET", "/tickets/7",
             bot, 200, "allowed"),
        Step("support-agent for alice calls MCP tool get_ticket", "POST", "/mcp",
             alice, 200, "allowed", _mcp("tools/call", {"name": "get_ticket"})),
        Step("triage-bot lists the MCP tools (needs just a valid token)", "POST", "/mcp",
             bot, 200, "allowed", _mcp("tools/list")),
        Step("no token at all", "GET", "/tickets/42",
             None, 401, "token_missing"),
        Step("an expired token", "GET", "/tickets/42",
             stack.delegated_token(agent="support-agent", user="alice", scope=READ_WRITE,
                                   now=time.time() - 3600),
             401, "token_expired"),
        Step("a token meant for another API (wrong audience)", "GET", "/tickets/42",
             stack.issuer.token(sub="alice", audience="https://billing.example.test",
                                client_id="support-agent", scope=READ_WRITE),
             401, "token_wrong_audience"),
        Step("alice's ID token (typ JWT) replayed as an access token", "GET", "/tickets/42",
             stack.issuer.token(sub="alice", audience="support-agent", azp="support-agent",
                                header={"typ": "JWT"}),
             401, "token_wrong_type"),
        Step("rogue-agent, not registered, for alice", "GET", "/tickets/42",
             stack.delegated_token(agent="rogue-agent", user="alice", scope=READ_WRITE),
             401, "agent_unknown"),
        Step("retired-agent (disabled) for alice", "GET", "/tickets/42",
             stack.delegated_token(agent="retired-agent", user="alice", scope=READ_WRITE),
             401, "agent_disabled"),
        Step("support-agent for mallory (disabled user)", "GET", "/tickets/42",
             stack.delegated_token(agent="support-agent", user="mallory", scope=READ_WRITE),
             401, "user_disabled"),
        Step("triage-bot creates a ticket (agent lacks tickets:write)", "POST", "/tickets",
             stack.autonomous_token(agent="triage-bot", scope=READ_WRITE),
             403, "agent_lacks_permission", NEW_TICKET),
        Step("support-agent for bob creates a ticket (bob lacks it)", "POST", "/tickets",
             stack.delegated_token(agent="support-agent", user="bob", scope=READ_WRITE),
             403, "user_lacks_permission", NEW_TICKET),
        Step("support-agent for alice creates a ticket, read-only token", "POST", "/tickets",
             stack.delegated_token(agent="support-agent", user="alice", scope="tickets:read"),
             403, "scope_lacks_permission", NEW_TICKET),
        Step("support-agent for alice tries a path no route covers", "GET", "/admin/users",
             alice, 403, "route_unknown"),
        Step("support-agent for alice calls MCP delete_ticket (unmapped)", "POST", "/mcp",
             alice, 403, "mcp_tool_unknown", _mcp("tools/call", {"name": "delete_ticket"})),
        Step("support-agent for alice sends an MCP body that is not JSON", "POST", "/mcp",
             alice, 400, "mcp_request_invalid", b"{not json"),
        Step("alice's token with its payload edited (sub: admin)", "GET", "/tickets/42",
             _tampered(alice), 401, "token_invalid_signature"),
        Step("a token signed with a key the IdP never published", "GET", "/tickets/42",
             stack.issuer.token(sub="alice", audience=AUDIENCE, client_id="support-agent",
                                scope=READ_WRITE, header={"kid": "stolen-1"}),
             401, "key_unknown"),
        Step("triage-bot (autonomous only) acting for alice", "GET", "/tickets/42",
             stack.delegated_token(agent="triage-bot", user="alice", scope=READ_WRITE),
             403, "agent_not_delegated"),
        Step("support-agent (delegated only) acting on its own", "GET", "/tickets/42",
             stack.autonomous_token(agent="support-agent", scope=READ_WRITE),
             403, "agent_not_autonomous"),
        Step("support-agent for carol, who is not in the feed", "GET", "/tickets/42",
             stack.delegated_token(agent="support-agent", user="carol", scope=READ_WRITE),
             403, "user_unknown"),
        Step("a chain of three agents (max_delegation_depth is 2)", "GET", "/tickets/42",
             stack.issuer.token(sub="alice", audience=AUDIENCE, scope=READ_WRITE,
                                act={"sub": "support-agent",
                                     "act": {"sub": "planner", "act": {"sub": "router"}}}),
             401, "delegation_too_deep"),
    ]  # fmt: skip


def _tampered(token: str) -> str:
    """The same token with ``sub`` changed and the original signature kept."""
    head, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    edited = json.dumps({**claims, "sub": "admin"}).encode()
    return f"{head}.{base64.urlsafe_b64encode(edited).rstrip(b'=').decode()}.{signature}"


def outages(keep: bool) -> list[Result]:
    """A second stack whose feed goes stale within a second, then loses extauthz."""
    stack = Stack(
        overrides={"feed.refresh": "200ms", "feed.max_staleness": "1s"}, keep_workdir=keep
    ).start()
    try:
        alice = stack.delegated_token(agent="support-agent", user="alice", scope=READ_WRITE)
        bot = stack.autonomous_token(agent="triage-bot", scope="tickets:read")
        # The feed's producer breaks: extauthz keeps the last good feed until it is stale.
        stack.feed_path.write_text("{ this is not a feed")
        deadline = time.monotonic() + 10
        while stack.metric("extauthz_feed_age_seconds") <= 1.0 and time.monotonic() < deadline:
            time.sleep(0.1)
        results = [
            run_step(stack, Step("stale feed: support-agent for alice reads a ticket",
                                 "GET", "/tickets/42", alice, 503, "feed_stale")),
            run_step(stack, Step("stale feed: triage-bot needs no user, still served",
                                 "GET", "/tickets/7", bot, 200, "allowed")),
        ]  # fmt: skip
        stack.stop_extauthz()
        results.append(
            run_step(stack, Step("extauthz is down: Envoy fails closed (no decision)",
                                 "GET", "/tickets/42", alice, 503, "-"))
        )  # fmt: skip
    finally:
        stack.stop()
    return results


@dataclass(frozen=True, slots=True)
class Result:
    step: Step
    response: Response
    decision: dict[str, Any] | None

    @property
    def reason(self) -> str:
        if self.decision is not None:
            return str(self.decision["reason"])
        return self.response.reason or "-"

    @property
    def ok(self) -> bool:
        return (self.response.status, self.reason) == (
            self.step.expect_status,
            self.step.expect_reason,
        )


def run_step(stack: Stack, step: Step) -> Result:
    response = stack.request(step.method, step.path, token=step.token, body=step.body)
    decision = None
    if response.decision_id is not None:
        try:
            decision = stack.wait_for_decision(response.decision_id)
        except StackError:
            decision = None
    return Result(step, response, decision)


def print_results(results: Sequence[Result]) -> None:
    print(f"{'':3}{'#':>2}  {'got':3}  {'request':<16} {'what was tried':<58} {'reason':<24} "
          "WWW-Authenticate")  # fmt: skip
    for i, result in enumerate(results, 1):
        step = result.step
        mark = "ok " if result.ok else "BAD"
        request = f"{step.method} {step.path}"
        print(
            f"{mark}{i:>2}  {result.response.status:<3}  {request:<16} {step.what:<58} "
            f"{result.reason:<24} {result.response.www_authenticate or '-'}"
        )
        if not result.ok:
            print(f"{'':7}expected {step.expect_status} {step.expect_reason}")


def print_upstream_view(results: Sequence[Result]) -> None:
    """What the upstream saw of the first allowed request: identity, not the token."""
    allowed = next((r for r in results if r.response.from_upstream), None)
    if allowed is None:
        return
    headers = allowed.response.upstream_headers
    identity = ", ".join(f"{k}: {v}" for k, v in headers.items() if k.startswith("x-extauthz-"))
    token = "present" if "authorization" in headers else "removed"
    print(
        f"\nThe upstream got request 1 with {identity}\n"
        f"(headers set by extauthz; the client's own x-extauthz-* headers never pass), "
        f"Authorization: {token}."
    )


_SUMMARY_FIELDS = ("agent", "user", "permission", "mcp_method", "mcp_tool", "lacking")


def print_decisions(stack: Stack) -> None:
    lines = stack.decisions()
    print(f"\nDecision lines extauthz wrote to stdout ({len(lines)}), one JSON object per check.")
    if lines:
        print("The first one in full:")
        first = {k: v for k, v in lines[0].items() if v is not None}
        print("  " + json.dumps(first, separators=(", ", ": ")))
        print("All of them, key fields only (null fields left out):")
    for line in lines:
        lacking = [side for side in ("agent", "user", "scope") if line.get(f"{side}_has") is False]
        fields = {**line, "lacking": ",".join(lacking) or None}
        extra = " ".join(f"{k}={fields[k]}" for k in _SUMMARY_FIELDS if fields.get(k))
        request = f"{line['method']} {line['path']}"
        print(
            f"  {line['decision_id'][:8]}  {line['decision']:<5} {line['status']} "
            f"{line['reason']:<24} {request:<16} {extra}".rstrip()
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m extauthz.demo.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (configs, logs)"
    )
    args = parser.parse_args(argv)

    print("Starting an echo upstream, extauthz and Envoy on 127.0.0.1 ...")
    try:
        stack = Stack(keep_workdir=args.keep).start()
    except StackError as err:
        print(f"demo: cannot start the stack: {err}", file=sys.stderr)
        return 2
    try:
        ports = stack.ports
        print(
            f"Envoy listens on :{ports.envoy} and asks extauthz (gRPC :{ports.grpc}) about every "
            f"request before passing it to the upstream (:{ports.upstream}).\n"
            "Agents (deploy/extauthz/config.yaml): support-agent acts for users, triage-bot "
            "acts alone, retired-agent is disabled.\n"
            "Users (feed/users.json): alice may read and write tickets, bob may only read, "
            "mallory is disabled.\n"
            f"Every request goes to http://127.0.0.1:{ports.envoy} with Host: {RESOURCE_HOST}."
            "\n"
        )
        results = [run_step(stack, step) for step in script(stack)]
        print_results(results)
        print_upstream_view(results)
        print_decisions(stack)
    finally:
        stack.stop()
    print(
        "\nOutages, on a second stack whose feed goes stale after 1 s: the feed file is "
        "broken, then extauthz is stopped."
    )
    try:
        outage_results = outages(args.keep)
    except StackError as err:
        print(f"demo: cannot start the second stack: {err}", file=sys.stderr)
        return 2
    print_results(outage_results)
    results += outage_results
    if args.keep:
        print(f"\nConfigs and logs kept in {stack.workdir}")
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"\ndemo: {len(failed)} request(s) did not get the expected answer", file=sys.stderr)
        return 1
    print(f"\nAll {len(results)} requests got the expected answer.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
