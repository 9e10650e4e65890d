"""The decision core alone: ``extauthz.decision.decide`` per request, no gRPC, no Envoy.

A realistic policy: one issuer with RSA, EC and Ed25519 keys, 9 agents (delegated,
autonomous, disabled), 4 resources with 17 routes (two of them MCP), a feed of 10,000
users on role-like permission sets (some disabled) with 1,000 revoked token ids. The
requests are a weighted mix of allows (most traffic) and each common deny, prepared as
``RequestAttributes`` ahead of time with their own pre-minted tokens: no token is decided
twice, so a cache of verified tokens would not flatter the figures. Every decision's
reason is checked against the expected one; a mismatch is an error.

Prints decisions per second and µs per decision for the mix, and µs per decision for each
kind of request (median over rounds). A benchmark, not a test: compare runs on one machine.

    make bench-decide   # or: .venv/bin/python benchmarks/bench_decide.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from extauthz.config import load_config
from extauthz.decision import PolicyView, decide
from extauthz.demo.issuer import LocalIssuer
from extauthz.model import RequestAttributes
from extauthz.server import Server

ISSUER = "https://idp.example.test"
USERS = 10_000
ROLES: dict[str, list[str]] = {
    "support": ["tickets:*", "docs:read"],
    "writer": ["docs:*", "tickets:read"],
    "finance": ["billing:*", "crm:read"],
    "sales": ["crm:*", "tickets:read"],
    "viewer": ["tickets:read", "docs:read", "billing:read", "crm:read"],
}
ROLE_NAMES = list(ROLES)
REVOKED = 1_000


def user(role: str, index: int) -> str:
    """The name of an enabled user holding ``role`` (users are assigned round-robin)."""
    i = (index * len(ROLES) + ROLE_NAMES.index(role)) % USERS
    if i % 50 == 0:  # every 50th user is disabled
        i = (i + len(ROLES)) % USERS
    return f"user-{i:05d}"


def policy(workdir: Path, issuer: LocalIssuer) -> Path:
    """Write the config, JWKS and feed into ``workdir``; return the config's path."""
    issuer.write_jwks(workdir / "keys" / "jwks.json")
    users: dict[str, dict[str, Any]] = {}
    for i in range(USERS):
        permissions = list(ROLES[ROLE_NAMES[i % len(ROLES)]])
        if i % 7 == 0:
            permissions.append(f"docs:drafts:{i % 13}:read")  # a few individual grants
        entry: dict[str, Any] = {"permissions": permissions}
        if i % 50 == 0:
            entry["disabled"] = True
        users[f"user-{i:05d}"] = entry
    feed = {
        "version": "bench",
        "users": users,
        "agents": {"helpdesk-bot": {"disabled": True}},
        "revoked_tokens": {f"revoked-{i}": 4_000_000_000 for i in range(REVOKED)},
    }
    (workdir / "feed").mkdir()
    (workdir / "feed" / "users.json").write_text(json.dumps(feed))

    def routes(*items: tuple[str, str, str]) -> list[dict[str, str]]:
        return [{"method": m, "path": p, "permission": perm} for m, p, perm in items]

    config = {
        "server": {"grpc_listen": "127.0.0.1:0", "http_listen": "127.0.0.1:0"},
        "mode": "enforce",
        "issuers": [
            {
                "issuer": ISSUER,
                "jwks_file": "keys/jwks.json",
                "algorithms": ["RS256", "ES256", "EdDSA"],
            }
        ],
        "tokens": {"typ": "at+jwt", "max_lifetime": "1h", "leeway": "30s"},
        "agents": [
            {"id": "support-agent", "permissions": ["tickets:*", "docs:read"]},
            {"id": "docs-writer", "permissions": ["docs:*"]},
            {"id": "billing-agent", "permissions": ["billing:read", "billing:write"]},
            {"id": "crm-agent", "permissions": ["crm:*"], "autonomous": True},
            {
                "id": "triage-bot",
                "permissions": ["tickets:read"],
                "delegated": False,
                "autonomous": True,
            },
            {"id": "indexer", "permissions": ["docs:read"], "delegated": False, "autonomous": True},
            {
                "id": "analyst",
                "permissions": ["tickets:read", "docs:read", "billing:read", "crm:read"],
            },
            {"id": "helpdesk-bot", "permissions": ["tickets:*"]},
            {"id": "retired-agent", "permissions": ["tickets:*"], "disabled": True},
        ],
        "resources": [
            {
                "name": "tickets",
                "hosts": ["tickets.example.test"],
                "audience": "https://tickets.example.test",
                "routes": [
                    *routes(
                        ("GET", "/tickets", "tickets:read"),
                        ("GET", "/tickets/{id}", "tickets:read"),
                        ("POST", "/tickets", "tickets:write"),
                        ("PATCH", "/tickets/{id}", "tickets:write"),
                        ("DELETE", "/tickets/{id}", "tickets:delete"),
                        ("GET", "/tickets/{id}/comments", "tickets:comments:read"),
                    ),
                    {
                        "method": "POST",
                        "path": "/mcp",
                        "mcp_tools": {
                            "get_ticket": "tickets:read",
                            "create_ticket": "tickets:write",
                            "close_ticket": "tickets:delete",
                        },
                    },
                ],
            },
            {
                "name": "docs",
                "hosts": ["docs.example.test"],
                "audience": "https://docs.example.test",
                "routes": [
                    *routes(
                        ("GET", "/docs", "docs:read"),
                        ("GET", "/docs/{id}", "docs:read"),
                        ("PUT", "/docs/{id}", "docs:write"),
                    ),
                    {
                        "method": "POST",
                        "path": "/mcp",
                        "mcp_tools": {"search_docs": "docs:read", "edit_doc": "docs:write"},
                    },
                ],
            },
            {
                "name": "billing",
                "hosts": ["billing.example.test"],
                "audience": "https://billing.example.test",
                "routes": routes(
                    ("GET", "/invoices/{id}", "billing:read"),
                    ("POST", "/invoices", "billing:write"),
                    ("POST", "/refunds", "billing:refund"),
                ),
            },
            {
                "name": "crm",
                "hosts": ["crm.example.test"],
                "audience": "https://crm.example.test",
                "routes": routes(
                    ("GET", "/accounts/{id}", "crm:read"),
                    ("PATCH", "/accounts/{id}", "crm:write"),
                    ("GET", "/accounts/{id}/contacts", "crm:read"),
                ),
            },
        ],
        "feed": {"source": "feed/users.json", "refresh": "10s", "max_staleness": "2m"},
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass(frozen=True)
class Kind:
    """One kind of request: how often it comes, what it must get, how to make one."""

    name: str
    weight: int
    expected: str
    make: Callable[[LocalIssuer, int], RequestAttributes]


def request(
    host: str,
    method: str,
    path: str,
    token: str | None,
    body: dict[str, Any] | None = None,
    *,
    raw_authorization: str | None = None,
) -> RequestAttributes:
    headers = {"x-request-id": "bench", "user-agent": "bench/1"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    if raw_authorization is not None:
        headers["authorization"] = raw_authorization
    data = json.dumps(body).encode() if body is not None else None
    if data is not None:
        headers["content-type"] = "application/json"
    return RequestAttributes(method, host, path, headers, data, request_id="bench")


def delegated(
    issuer: LocalIssuer, agent: str, subject: str, audience: str, scope: str, **extra: Any
) -> str:
    return issuer.token(
        sub=subject,
        audience=audience,
        scope=scope,
        client_id=agent,
        act={"sub": agent},
        lifetime=1800,
        **extra,
    )


def autonomous(issuer: LocalIssuer, agent: str, audience: str, scope: str) -> str:
    return issuer.token(sub=agent, audience=audience, scope=scope, client_id=agent, lifetime=1800)


TICKETS, DOCS, BILLING = "tickets.example.test", "docs.example.test", "billing.example.test"
T_AUD, D_AUD, B_AUD = (f"https://{h}" for h in (TICKETS, DOCS, BILLING))


def mcp_call(tool: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool}}


KINDS = [
    Kind(
        "allow: delegated GET, RS256",
        30,
        "allowed",
        lambda i, n: request(
            TICKETS,
            "GET",
            f"/tickets/{n}",
            delegated(i, "support-agent", user("support", n), T_AUD, "tickets:read"),
        ),
    ),
    Kind(
        "allow: delegated PUT, ES256",
        10,
        "allowed",
        lambda i, n: request(
            DOCS,
            "PUT",
            f"/docs/{n}",
            delegated(i, "docs-writer", user("writer", n), D_AUD, "docs:write", kid="ec-1"),
        ),
    ),
    Kind(
        "allow: delegated GET, EdDSA",
        10,
        "allowed",
        lambda i, n: request(
            BILLING,
            "GET",
            f"/invoices/{n}",
            delegated(i, "analyst", user("viewer", n), B_AUD, "billing:read", kid="ed25519-1"),
        ),
    ),
    Kind(
        "allow: autonomous GET, RS256",
        10,
        "allowed",
        lambda i, n: request(
            TICKETS, "GET", "/tickets", autonomous(i, "triage-bot", T_AUD, "tickets:read")
        ),
    ),
    Kind(
        "allow: MCP tools/call, RS256",
        10,
        "allowed",
        lambda i, n: request(
            TICKETS,
            "POST",
            "/mcp",
            delegated(i, "support-agent", user("support", n), T_AUD, "tickets:read tickets:write"),
            mcp_call("create_ticket"),
        ),
    ),
    Kind(
        "deny: user lacks permission",
        4,
        "user_lacks_permission",
        lambda i, n: request(
            TICKETS,
            "DELETE",
            f"/tickets/{n}",
            delegated(i, "support-agent", user("viewer", n), T_AUD, "tickets:delete"),
        ),
    ),
    Kind(
        "deny: scope lacks permission",
        4,
        "scope_lacks_permission",
        lambda i, n: request(
            TICKETS,
            "POST",
            "/tickets",
            delegated(i, "support-agent", user("support", n), T_AUD, "tickets:read"),
        ),
    ),
    Kind(
        "deny: agent lacks permission",
        2,
        "agent_lacks_permission",
        lambda i, n: request(
            BILLING,
            "POST",
            "/refunds",
            delegated(i, "billing-agent", user("finance", n), B_AUD, "billing:refund"),
        ),
    ),
    Kind(
        "deny: agent disabled (feed)",
        2,
        "agent_disabled",
        lambda i, n: request(
            TICKETS,
            "GET",
            "/tickets",
            delegated(i, "helpdesk-bot", user("support", n), T_AUD, "tickets:read"),
        ),
    ),
    Kind(
        "deny: token revoked",
        2,
        "token_revoked",
        lambda i, n: request(
            TICKETS,
            "GET",
            "/tickets",
            delegated(
                i,
                "support-agent",
                user("support", n),
                T_AUD,
                "tickets:read",
                jti=f"revoked-{n % REVOKED}",
            ),
        ),
    ),
    Kind(
        "deny: user unknown",
        2,
        "user_unknown",
        lambda i, n: request(
            TICKETS,
            "GET",
            "/tickets",
            delegated(i, "support-agent", f"stranger-{n}", T_AUD, "tickets:read"),
        ),
    ),
    Kind(
        "deny: wrong audience",
        2,
        "token_wrong_audience",
        lambda i, n: request(
            TICKETS,
            "GET",
            "/tickets",
            delegated(i, "support-agent", user("support", n), D_AUD, "tickets:read"),
        ),
    ),
    Kind(
        "deny: route unknown",
        2,
        "route_unknown",
        lambda i, n: request(
            TICKETS,
            "GET",
            f"/admin/{n}",
            delegated(i, "support-agent", user("support", n), T_AUD, "tickets:read"),
        ),
    ),
    Kind(
        "deny: no token", 5, "token_missing", lambda i, n: request(TICKETS, "GET", "/tickets", None)
    ),
    Kind(
        "deny: malformed token",
        5,
        "token_malformed",
        lambda i, n: request(
            TICKETS, "GET", "/tickets", None, raw_authorization=f"Bearer not.a.jwt{n}"
        ),
    ),
]


def prepare(issuer: LocalIssuer, per_round: int, seed: int) -> list[tuple[int, RequestAttributes]]:
    """One round's requests, (kind index, request), shuffled; every token minted anew."""
    total_weight = sum(k.weight for k in KINDS)
    prepared = []
    for index, kind in enumerate(KINDS):
        count = max(1, round(per_round * kind.weight / total_weight))
        prepared += [(index, kind.make(issuer, seed * 100_000 + n)) for n in range(count)]
    random.Random(seed).shuffle(prepared)
    return prepared


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--requests", type=int, default=4000, help="requests per round (distinct tokens)"
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="extauthz-bench-decide-"))
    try:
        issuer = LocalIssuer(ISSUER)
        started = time.perf_counter()
        server = Server(load_config(policy(workdir, issuer)), CollectorRegistry())
        server.refresh_feed()
        view: PolicyView = server.runtime.view()
        print(
            f"extauthz decision core — Python {platform.python_version()}, "
            f"{platform.machine()}; policy of {len(KINDS)} request kinds, {USERS:,} users, "
            f"loaded in {time.perf_counter() - started:.1f} s"
        )
        mix_us: list[float] = []
        per_kind: list[list[float]] = [[] for _ in KINDS]
        wrong: dict[str, str] = {}
        for round_ in range(1, args.rounds + 1):
            minted = time.perf_counter()
            prepared = prepare(issuer, args.requests, round_)
            print(
                f"round {round_}: {len(prepared):,} requests prepared "
                f"in {time.perf_counter() - minted:.1f} s",
                flush=True,
            )
            spent = [0.0] * len(KINDS)
            count = [0] * len(KINDS)
            now = time.time()
            clock = time.perf_counter
            for index, attributes in prepared:
                before = clock()
                decision = decide(attributes, view, now)
                spent[index] += clock() - before
                count[index] += 1
                if decision.reason.value != KINDS[index].expected:
                    wrong[KINDS[index].name] = decision.reason.value
            mix_us.append(sum(spent) / len(prepared) * 1e6)
            for index in range(len(KINDS)):
                per_kind[index].append(spent[index] / count[index] * 1e6)
        mix = statistics.median(mix_us)
        print(
            f"\nmix (weighted as below): {1e6 / mix:,.0f} decisions/s, {mix:.1f} µs per decision "
            f"(median of {args.rounds} rounds; rounds {min(mix_us):.1f}-{max(mix_us):.1f} µs)\n"
        )
        print(f"{'kind':<34} {'weight':>6} {'µs/decision':>12}")
        for index, kind in enumerate(KINDS):
            print(f"{kind.name:<34} {kind.weight:>6} {statistics.median(per_kind[index]):>12.1f}")
        if wrong:
            for name, got in wrong.items():
                print(f"!! {name}: decided {got}", file=sys.stderr)
            return 1
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
