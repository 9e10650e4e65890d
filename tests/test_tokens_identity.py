"""Who a verified token speaks for: agent, user, actor chain and scope."""

from __future__ import annotations

from typing import Any

import pytest

from extauthz.errors import Reason, TokenRejected
from extauthz.model import Identity
from extauthz.tokens.identity import identity_from_claims

ISS = "https://idp.example.test"


def claims(**overrides: Any) -> dict[str, Any]:
    """Verified claims of a delegated token: alice via helpdesk-bot. None removes a claim."""
    base: dict[str, Any] = {
        "iss": ISS,
        "sub": "alice",
        "aud": "https://tickets.example.test",
        "iat": 1_800_000_000,
        "exp": 1_800_000_300,
        "jti": "jti-1",
        "client_id": "helpdesk-bot",
        "scope": "tickets:read tickets:comment",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def identity(**overrides: Any) -> Identity:
    return identity_from_claims(claims(**overrides), ISS)


def rejection(**overrides: Any) -> Reason:
    with pytest.raises(TokenRejected) as caught:
        identity(**overrides)
    return caught.value.reason


# --- the agent ---------------------------------------------------------------------------


def test_agent_is_client_id_when_there_is_no_act() -> None:
    who = identity()

    assert who.agent == "helpdesk-bot"
    assert who.client_id == "helpdesk-bot"
    assert who.actor_chain == ("helpdesk-bot",)


def test_agent_is_the_current_actor_over_client_id_and_azp() -> None:
    who = identity(act={"sub": "summarizer"}, client_id="planner", azp="other")

    assert who.agent == "summarizer"
    assert who.client_id == "planner"
    assert who.actor_chain == ("summarizer",)


def test_agent_is_client_id_over_azp() -> None:
    assert identity(azp="other").agent == "helpdesk-bot"


def test_agent_is_azp_when_there_is_neither_act_nor_client_id() -> None:
    who = identity(client_id=None, azp="helpdesk-bot")

    assert who.agent == "helpdesk-bot"
    assert who.client_id is None


def test_denies_a_token_that_names_no_agent() -> None:
    assert rejection(client_id=None) is Reason.AGENT_MISSING


# --- delegated or autonomous -------------------------------------------------------------


def test_sub_other_than_the_agent_is_the_user() -> None:
    assert identity().user == "alice"


def test_sub_equal_to_the_agent_means_autonomous_with_no_user() -> None:
    assert identity(sub="helpdesk-bot").user is None


def test_sub_equal_to_the_current_actor_means_autonomous() -> None:
    who = identity(sub="summarizer", act={"sub": "summarizer"})

    assert who.user is None
    assert who.agent == "summarizer"


def test_sub_equal_to_a_prior_actor_is_still_a_user() -> None:
    who = identity(sub="planner", act={"sub": "summarizer", "act": {"sub": "planner"}})

    assert who.agent == "summarizer"
    assert who.user == "planner"


# --- the actor chain ---------------------------------------------------------------------


def test_actor_chain_lists_the_current_actor_first() -> None:
    who = identity(act={"sub": "summarizer", "act": {"sub": "planner"}})

    assert who.actor_chain == ("summarizer", "planner")


def test_records_the_whole_chain_however_deep_leaving_the_bound_to_the_decision() -> None:
    # The depth bound is checked after the current actor (contract order: agent → chain),
    # so identity extraction must not refuse a deep chain itself.
    act = {"sub": "a", "act": {"sub": "b", "act": {"sub": "c"}}}

    assert identity(act=act).actor_chain == ("a", "b", "c")


@pytest.mark.parametrize(
    "act",
    [
        pytest.param("summarizer", id="act_is_a_string"),
        pytest.param(["summarizer"], id="act_is_a_list"),
        pytest.param({"client_id": "summarizer"}, id="act_without_sub"),
        pytest.param({"sub": ""}, id="act_sub_empty"),
        pytest.param({"sub": 42}, id="act_sub_a_number"),
        pytest.param({"sub": "a", "act": "b"}, id="nested_act_is_a_string"),
        pytest.param({"sub": "a", "act": {"sub": None}}, id="nested_act_sub_null"),
    ],
)
def test_denies_an_act_claim_of_the_wrong_shape_as_malformed(act: object) -> None:
    assert rejection(act=act) is Reason.TOKEN_MALFORMED


# --- scope -------------------------------------------------------------------------------


def test_scope_is_a_space_delimited_string() -> None:
    assert identity(scope="tickets:read  docs:*\ttickets:comment").scopes == frozenset(
        {"tickets:read", "docs:*", "tickets:comment"}
    )


def test_scope_may_come_as_an_scp_list() -> None:
    who = identity(scope=None, scp=["tickets:read", "docs:search"])

    assert who.scopes == frozenset({"tickets:read", "docs:search"})


def test_no_scope_claim_means_no_scopes() -> None:
    assert identity(scope=None).scopes == frozenset()


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"scope": ["tickets:read"]}, id="scope_is_a_list"),
        pytest.param({"scope": 7}, id="scope_is_a_number"),
        pytest.param({"scope": None, "scp": ["tickets:read", 7]}, id="scp_holds_a_number"),
        pytest.param({"scope": None, "scp": {"tickets:read": True}}, id="scp_is_an_object"),
    ],
)
def test_denies_a_scope_of_the_wrong_type_as_malformed(overrides: dict[str, Any]) -> None:
    assert rejection(**overrides) is Reason.TOKEN_MALFORMED


# --- recorded claims ---------------------------------------------------------------------


def test_records_issuer_and_jti() -> None:
    who = identity()

    assert who.issuer == ISS
    assert who.jti == "jti-1"


def test_jti_is_optional() -> None:
    assert identity(jti=None).jti is None


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"client_id": 42}, id="client_id_number"),
        pytest.param({"client_id": None, "azp": ["helpdesk-bot"]}, id="azp_list"),
        pytest.param({"jti": 12345}, id="jti_number"),
    ],
)
def test_denies_string_claims_of_the_wrong_type_as_malformed(overrides: dict[str, Any]) -> None:
    assert rejection(**overrides) is Reason.TOKEN_MALFORMED
