"""Permission strings and wildcard grant sets (extauthz/permissions.py)."""

from __future__ import annotations

import pytest

from extauthz.permissions import GrantSet, permission_problem


@pytest.mark.parametrize(
    ("grant", "permission", "granted"),
    [
        # exact
        ("tickets:read", "tickets:read", True),
        ("tickets:read", "tickets:write", False),
        ("tickets:read", "tickets", False),
        ("tickets:read", "tickets:read:all", False),
        # trailing '*' takes one or more remaining segments, never zero
        ("tickets:*", "tickets:read", True),
        ("tickets:*", "tickets:comments:write", True),
        ("tickets:*", "tickets", False),
        ("tickets:*", "ticket:read", False),
        ("tickets:*", "other:tickets:read", False),
        # a bare '*' grants everything
        ("*", "tickets", True),
        ("*", "tickets:read", True),
        ("*", "a:b:c:d", True),
        # '*' inside a grant is exactly one segment
        ("tickets:*:read", "tickets:x:read", True),
        ("tickets:*:read", "tickets:x:y:read", False),
        ("tickets:*:read", "tickets:x", False),
        ("tickets:*:read", "tickets:read", False),
        ("tickets:*:read", "tickets:x:write", False),
        ("*:read", "tickets:read", True),
        ("*:read", "tickets:comments:read", False),
        # a '*' inside a segment is no wildcard
        ("tick*", "tickets", False),
        ("tick*", "tickets:read", False),
        ("tickets:re*", "tickets:read", False),
    ],
)
def test_grant_matches_permission(grant: str, permission: str, granted: bool) -> None:
    assert GrantSet([grant]).grants_permission(permission) is granted


def test_star_inside_a_segment_only_matches_the_same_literal_string() -> None:
    grants = GrantSet(["tick*"])
    assert grants.grants_permission("tick*") is True
    assert grants.grants_permission("tickX") is False


def test_any_grant_in_a_set_is_enough() -> None:
    grants = GrantSet(["billing:read", "tickets:*:read", "admin:users"])
    assert grants.grants_permission("tickets:7:read")
    assert grants.grants_permission("admin:users")
    assert grants.grants_permission("billing:read")
    assert not grants.grants_permission("billing:write")
    assert not grants.grants_permission("admin")


def test_empty_grant_set_grants_nothing() -> None:
    assert not GrantSet(()).grants_permission("tickets:read")
    assert not GrantSet([]).grants_permission("")
    assert len(GrantSet(())) == 0


def test_grant_sets_compare_and_hash_by_their_grants() -> None:
    a = GrantSet(["x:read", "y:*"])
    b = GrantSet(("y:*", "x:read", "x:read"))
    assert a == b
    assert hash(a) == hash(b)
    assert len(b) == 2
    assert a != GrantSet(["x:read"])
    assert a != frozenset({"x:read", "y:*"})
    assert repr(a) == "GrantSet(['x:read', 'y:*'])"


@pytest.mark.parametrize(
    "text",
    ["tickets", "tickets:read", "a:b:c", "Ab_9.-/x:y", "api/v1:read"],
)
def test_concrete_permissions_are_valid_both_as_grant_and_required(text: str) -> None:
    assert permission_problem(text, allow_wildcard=False) is None
    assert permission_problem(text, allow_wildcard=True) is None


@pytest.mark.parametrize("text", ["*", "tickets:*", "tickets:*:read", "*:read"])
def test_whole_segment_wildcard_is_valid_in_a_grant_only(text: str) -> None:
    assert permission_problem(text, allow_wildcard=True) is None
    problem = permission_problem(text, allow_wildcard=False)
    assert problem is not None
    assert "concrete" in problem


@pytest.mark.parametrize("text", ["tick*", "tickets:re*d", "*tickets", "**"])
def test_star_inside_a_segment_is_rejected_everywhere(text: str) -> None:
    for allow_wildcard in (True, False):
        problem = permission_problem(text, allow_wildcard=allow_wildcard)
        assert problem is not None
        assert repr(text) in problem


def test_grant_problem_mentions_the_whole_star_alternative() -> None:
    problem = permission_problem("tick*", allow_wildcard=True)
    assert problem is not None
    assert "segment 'tick*'" in problem
    assert "or a whole '*'" in problem


@pytest.mark.parametrize(
    "text",
    ["", "tickets::read", ":read", "tickets:", "tickets read", "tickets:read\n", "tïckets"],
)
def test_malformed_permissions_are_rejected(text: str) -> None:
    assert permission_problem(text, allow_wildcard=True) is not None
    assert permission_problem(text, allow_wildcard=False) is not None


def test_empty_permission_says_so() -> None:
    assert permission_problem("", allow_wildcard=True) == "must not be empty"


@pytest.mark.parametrize(("value", "kind"), [(3, "int"), (None, "NoneType"), (["a"], "list")])
def test_non_string_permission_names_its_type(value: object, kind: str) -> None:
    assert permission_problem(value, allow_wildcard=True) == f"must be a string, got {kind}"
