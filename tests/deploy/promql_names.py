"""The metric and label names a PromQL expression refers to.

A small lexer, not a parser: promtool checks that expressions parse (see
test_promql_names.py); this only has to tell names apart. Identifiers inside ``{...}``
before a matcher operator are label names; identifiers in the parentheses after ``by``,
``without``, ``on``, ``ignoring``, ``group_left`` and ``group_right`` are label names;
identifiers followed by ``(``, and aggregation operators, are functions; keywords are skipped; every
other identifier is a metric name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<duration>\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*(?![\w:]))
  | (?P<number>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[{}(),=<>+\-*/%^@])
    """,
    re.VERBOSE,
)
_LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "start", "end"})
_MATCHER_OPS = frozenset({"=", "!=", "=~", "!~"})
# Aggregations may be followed by `by (...)` before their parentheses.
_AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
    | {"bottomk", "topk", "quantile", "limitk", "limit_ratio"}
)


@dataclass
class Names:
    metrics: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)


def tokens(expr: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot read PromQL at {expr[pos : pos + 20]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            found.append((kind, match.group()))
        pos = match.end()
    return found


def names(expr: str) -> Names:
    """Metric, label and function names in ``expr`` (Grafana variables already replaced)."""
    toks = tokens(expr)
    result = Names()
    depth = 0  # inside {...}
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        following = toks[i + 1] if i + 1 < len(toks) else ("", "")
        if text == "{":
            depth += 1
        elif text == "}":
            depth -= 1
        elif kind == "ident" and depth > 0:
            if following[1] not in _MATCHER_OPS:
                raise ValueError(f"{text!r} in a selector is not followed by a matcher")
            result.labels.add(text)
        elif kind == "ident" and text in _LABEL_LISTS:
            if following[1] == "(":
                i += 2
                while toks[i][1] != ")":
                    if toks[i][0] == "ident":
                        result.labels.add(toks[i][1])
                    i += 1
        elif kind == "ident" and text in _KEYWORDS:
            pass
        elif kind == "ident" and (following[1] == "(" or text in _AGGREGATIONS):
            result.functions.add(text)
        elif kind == "ident":
            result.metrics.add(text)
        i += 1
    return result
