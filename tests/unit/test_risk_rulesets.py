"""The shipped dev rule sets (config/risk), table-driven: every rule has a case that fires
it, the benign applicant fires none, and API.md's sandbox conventions hold end to end
through origination.decide with screenings built like the simulators answer."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import pytest
from risk_factory import (
    BOOK,
    applicant,
    base_facts,
    birth_for_age,
    run,
    screening,
    unscreened_facts,
    with_facts,
)

from lending.commands import CustomerFacts
from lending.origination import CustomerSnapshot
from lending.rules import DECLINE, PASS, REVIEW, RULE_ERROR
from lending.screening import SOURCES, BlacklistHits, Screening, Velocity

UNAVAILABLE = {"available": False}


def fired(rule_set: Any, facts: dict[str, Any]) -> list[tuple[str, str, str]]:
    result = rule_set.evaluate(facts)
    return [(hit.rule_id, hit.action, hit.reason) for hit in result.hits]


def D(rule: str, reason: str | None = None) -> tuple[str, str, str]:
    return (rule, DECLINE, reason or rule)


def R(rule: str, reason: str | None = None) -> tuple[str, str, str]:
    return (rule, REVIEW, reason or rule)


# ---- admission --------------------------------------------------------------------------------

ADMISSION_CASES: list[tuple[str, dict[str, Any], list[tuple[str, str, str]]]] = [
    ("benign", {}, []),
    ("bad_check_digit", {"applicant.id_valid": False, "applicant.age": -1}, [D("id_checksum")]),
    ("age_21", {"applicant.age": 21}, [D("age_out_of_range")]),
    ("age_22", {"applicant.age": 22}, []),
    ("age_55", {"applicant.age": 55}, []),
    ("age_56", {"applicant.age": 56}, [D("age_out_of_range")]),
    ("birth_date_in_the_future", {"applicant.age": -1}, [D("age_out_of_range")]),
    ("income_999_999", {"applicant.monthly_income": 999_999}, [D("income_low")]),
    ("income_1_000_000", {"applicant.monthly_income": 1_000_000}, []),
    ("region_taiwan", {"applicant.region_code": "710000"}, [D("region_not_served")]),
    ("region_hong_kong", {"applicant.region_code": "810000"}, [D("region_not_served")]),
    ("region_macau", {"applicant.region_code": "820000"}, [D("region_not_served")]),
    ("region_hangzhou", {"applicant.region_code": "330100"}, []),
    ("purpose_securities", {"application.purpose": "securities"}, [D("purpose_not_allowed")]),
    ("purpose_house", {"application.purpose": "house_purchase"}, [D("purpose_not_allowed")]),
    ("purpose_education", {"application.purpose": "education"}, []),
    ("purpose_free_text", {"application.purpose": "赌博"}, [R("purpose_unrecognised")]),
    ("purpose_unknown_code", {"application.purpose": "whatever"}, [R("purpose_unrecognised")]),
    ("installment_without_merchant", {"product.loan_type": "installment_purchase"},
     [D("merchant_required")]),
    ("installment_with_merchant",
     {"product.loan_type": "installment_purchase", "application.has_merchant": True}, []),
    ("new_customer_over_100k", {"application.amount": 10_000_001},
     [D("new_customer_amount_high")]),
    ("new_customer_100k", {"application.amount": 10_000_000}, []),
    ("known_customer_over_100k", {"application.amount": 15_000_000, "customer.is_new": False},
     []),
    ("five_open_loans", {"customer.open_loans": 5}, [D("too_many_open_loans")]),
    ("four_open_loans", {"customer.open_loans": 4}, []),
    ("police_mismatch", {"police_id.match": False}, [D("police_id_mismatch")]),
    ("face_69", {"face_match.similarity": 69}, [D("face_match_low")]),
    ("face_70", {"face_match.similarity": 70}, [R("face_match_review")]),
    ("face_79", {"face_match.similarity": 79}, [R("face_match_review")]),
    ("face_80", {"face_match.similarity": 80}, []),
    ("police_unavailable", {"police_id": UNAVAILABLE}, [R("police_id_unavailable")]),
    ("face_unavailable", {"face_match": UNAVAILABLE}, [R("face_match_unavailable")]),
    ("every_reason_at_once",
     {"applicant.age": 60, "applicant.monthly_income": 1, "application.purpose": "gambling"},
     [D("age_out_of_range"), D("income_low"), D("purpose_not_allowed")]),
    ("police_answer_without_its_field", {"police_id": {"available": True}},
     [("police_id_mismatch", REVIEW, RULE_ERROR)]),
]


@pytest.mark.parametrize(("case", "changes", "expected"), ADMISSION_CASES,
                         ids=[c[0] for c in ADMISSION_CASES])
def test_admission_rules(case: str, changes: dict[str, Any],
                         expected: list[tuple[str, str, str]]) -> None:
    assert fired(BOOK.admission, with_facts(base_facts(), changes)) == expected


# ---- anti-fraud -------------------------------------------------------------------------------

ANTI_FRAUD_CASES: list[tuple[str, dict[str, Any], list[tuple[str, str, str]]]] = [
    ("benign", {}, []),
    ("blacklisted_id", {"blacklist.id_number": True}, [D("blacklist_id")]),
    ("blacklisted_phone", {"blacklist.phone": True}, [D("blacklist_phone")]),
    ("blacklisted_device", {"blacklist.device": True}, [D("blacklist_device")]),
    ("device_of_three_others", {"velocity.device_identities": 3, "velocity.device": 3},
     [D("device_shared"), D("velocity_device")]),
    ("device_seen_once", {"velocity.device": 1}, [D("velocity_device")]),
    ("ip_seen_once", {"velocity.ip": 1}, [D("velocity_ip")]),
    ("id_five_times", {"velocity.id_number": 5}, [D("velocity_id")]),
    ("id_four_times", {"velocity.id_number": 4}, []),
    ("phone_five_times", {"velocity.phone": 5}, [D("velocity_phone")]),
    ("phone_four_times", {"velocity.phone": 4}, []),
    ("three_other_partners", {"velocity.id_partners": 3}, [D("multi_partner")]),
    ("two_other_partners", {"velocity.id_partners": 2}, [R("multi_partner_review")]),
    ("one_other_partner", {"velocity.id_partners": 1}, []),
    ("tongdun_80", {"tongdun.fraud_score": 80}, [D("fraud_score_high")]),
    ("tongdun_79", {"tongdun.fraud_score": 79}, [R("fraud_score_review")]),
    ("tongdun_60", {"tongdun.fraud_score": 60}, [R("fraud_score_review")]),
    ("tongdun_59", {"tongdun.fraud_score": 59}, []),
    ("baiqishi_flag", {"baiqishi.risk_flag": True}, [D("baiqishi_risk_flag")]),
    ("tongdun_unavailable", {"tongdun": UNAVAILABLE}, []),
    ("tongdun_field_of_the_wrong_type", {"tongdun.fraud_score": "high"},
     [("fraud_score_high", REVIEW, RULE_ERROR), ("fraud_score_review", REVIEW, RULE_ERROR)]),
]


@pytest.mark.parametrize(("case", "changes", "expected"), ANTI_FRAUD_CASES,
                         ids=[c[0] for c in ANTI_FRAUD_CASES])
def test_anti_fraud_rules(case: str, changes: dict[str, Any],
                          expected: list[tuple[str, str, str]]) -> None:
    assert fired(BOOK.anti_fraud, with_facts(base_facts(), changes)) == expected


# ---- decision ---------------------------------------------------------------------------------

DECISION_CASES: list[tuple[str, dict[str, Any], list[tuple[str, str, str]]]] = [
    ("benign", {}, []),
    ("bureau_bad", {"credit_bureau.bad": True}, [D("bureau_bad")]),
    # first_decline: a bad file with everything that goes with it is declined for the file
    ("bureau_bad_file_with_its_details",
     {"credit_bureau.bad": True, "credit_bureau.overdue_accounts": 5,
      "credit_bureau.debt_ratio_pct": 90, "score": 480},
     [D("bureau_bad")]),
    ("two_overdue_accounts", {"credit_bureau.overdue_accounts": 2}, [D("overdue_accounts")]),
    ("one_overdue_account", {"credit_bureau.overdue_accounts": 1}, [R("overdue_review")]),
    ("debt_70", {"credit_bureau.debt_ratio_pct": 70}, [D("debt_high")]),
    ("debt_69", {"credit_bureau.debt_ratio_pct": 69}, []),
    ("six_lenders", {"baihang.multi_lending_90d": 6}, [D("multi_lending")]),
    ("three_lenders", {"baihang.multi_lending_90d": 3}, [R("multi_lending_review")]),
    ("two_lenders", {"baihang.multi_lending_90d": 2}, []),
    ("two_lawsuits", {"pengyuan.lawsuits": 2}, [D("lawsuits")]),
    ("one_lawsuit", {"pengyuan.lawsuits": 1}, [R("lawsuit_review")]),
    ("zhima_549", {"zhima.score": 549}, [D("zhima_low")]),
    ("zhima_550", {"zhima.score": 550}, []),
    ("score_559", {"score": 559}, [D("score_low")]),
    ("score_560", {"score": 560}, [R("score_grey")]),
    ("score_599", {"score": 599}, [R("score_grey")]),
    ("score_600", {"score": 600}, []),
    ("amount_above_available", {"application.amount": 6_000_001}, [D("limit_exceeded")]),
    ("amount_exactly_available", {"application.amount": 6_000_000}, [R("amount_review")]),
    ("amount_5m", {"application.amount": 5_000_000}, []),
    ("amount_5m_and_1", {"application.amount": 5_000_001}, [R("amount_review")]),
    ("bureau_unavailable", {"credit_bureau": UNAVAILABLE}, [R("bureau_unavailable")]),
    ("esign_unavailable", {"esign": UNAVAILABLE}, [R("esign_unavailable")]),
    ("esign_refused", {"esign.ok": False}, [R("esign_failed")]),
    ("reviews_add_up", {"pengyuan.lawsuits": 1, "score": 590},
     [R("lawsuit_review"), R("score_grey")]),
]


@pytest.mark.parametrize(("case", "changes", "expected"), DECISION_CASES,
                         ids=[c[0] for c in DECISION_CASES])
def test_decision_rules(case: str, changes: dict[str, Any],
                        expected: list[tuple[str, str, str]]) -> None:
    assert fired(BOOK.decision, with_facts(base_facts(), changes)) == expected


def test_decision_sandbox_rule_for_unscreened_commands() -> None:
    """Without screening, the credit-bureau simulator's convention applies directly."""
    facts = unscreened_facts()
    assert fired(BOOK.decision, facts) == []
    assert fired(BOOK.decision, with_facts(facts, {"applicant.id_sequence": 900})) == [
        D("bureau_bad_unscreened", "bureau_bad")
    ]
    assert fired(BOOK.decision, with_facts(facts, {"applicant.id_sequence": 899})) == []
    screened = with_facts(base_facts(), {"applicant.id_sequence": 950})
    assert fired(BOOK.decision, screened) == [], "a screened command goes by the bureau"


def test_unscreened_commands_fire_no_unavailable_rule() -> None:
    facts = unscreened_facts()
    for rule_set in BOOK.rule_sets():
        assert fired(rule_set, facts) == [], rule_set.name


def test_every_shipped_rule_has_a_case_that_fires_it() -> None:
    covered: dict[str, set[str]] = {"admission": set(), "anti_fraud": set(), "decision": set()}
    tables = (("admission", ADMISSION_CASES), ("anti_fraud", ANTI_FRAUD_CASES),
              ("decision", DECISION_CASES))
    for name, cases in tables:
        covered[name] |= {rule for _, _, hits in cases for rule, _, reason in hits
                          if reason != RULE_ERROR}
    covered["decision"].add("bureau_bad_unscreened")
    for rule_set in BOOK.rule_sets():
        assert {rule.id for rule in rule_set.rules} == covered[rule_set.name], rule_set.name


def test_the_dev_rule_sets_are_realistic_in_size() -> None:
    assert sum(len(rule_set.rules) for rule_set in BOOK.rule_sets()) >= 30
    assert BOOK.versions == {"admission": 2, "anti_fraud": 1, "decision": 1, "scorecard": 1,
                             "pricing": 1}


# ---- API.md sandbox conventions, end to end through origination.decide ----------------------

SEQUENCES = (100, 123, 500, 777, 899)
AGES = (22, 35, 55)
INCOMES = (1_000_000, 1_234_567, 4_500_000)
AMOUNTS = (100_000, 1_000_000, 5_000_000)


@pytest.mark.parametrize("how", ["low", "high", "random"])
@pytest.mark.parametrize("sequence", SEQUENCES)
def test_sandbox_benign_applicants_are_approved(how: str, sequence: int) -> None:
    """Any valid ID with sequence < 900, aged 22–55, income ≥ 1,000,000, asking ≤ 5,000,000
    (within 5 × income), from an unseen device and IP, with the simulators' answers."""
    for seed, (age, income, amount) in enumerate(itertools.product(AGES, INCOMES, AMOUNTS)):
        if amount > income * 5:
            continue  # over the sandbox limit of 500 % of income: limit_exceeded
        got = run(
            person=_person(age, income, sequence), amount=amount,
            screened=screening(sequence, how=how, seed=seed),
        )
        assert (got.decision.status, got.decision.reasons) == ("approved", []), (
            age, income, amount, got.trace.fired, got.trace.score)
        assert got.decision.annual_rate_bps == 1800
        assert got.decision.credit_limit == min(20_000_000, income * 5 // 10_000 * 10_000)


@pytest.mark.parametrize("sequence", [900, 901, 950, 999])
@pytest.mark.parametrize("how", ["low", "high", "random"])
def test_sandbox_bad_file_sequences_are_declined_bureau_bad(sequence: int, how: str) -> None:
    got = run(person=_person(35, 1_200_000, sequence), screened=screening(sequence, how=how))
    assert (got.decision.status, got.decision.reasons) == ("declined", ["bureau_bad"])
    assert got.trace.stopped_at == "decision"


@pytest.mark.parametrize("sequence", [900, 999])
def test_sandbox_bad_file_without_screening_is_declined_bureau_bad(sequence: int) -> None:
    got = run(person=_person(35, 1_200_000, sequence), screened=Screening())
    assert (got.decision.status, got.decision.reasons) == ("declined", ["bureau_bad"])


@pytest.mark.parametrize(
    ("changes", "status", "reasons"),
    [
        ({"velocity": Velocity(device=1)}, "declined", ["velocity_device"]),
        ({"velocity": Velocity(ip=1)}, "declined", ["velocity_ip"]),
        ({"velocity": Velocity(device=1, ip=1)}, "declined", ["velocity_device", "velocity_ip"]),
        ({"blacklist": BlacklistHits(phone=True)}, "declined", ["blacklist_phone"]),
        ({"unavailable": ("credit_bureau",)}, "manual_review", ["bureau_unavailable"]),
        ({"unavailable": SOURCES}, "manual_review",
         ["police_id_unavailable", "face_match_unavailable", "bureau_unavailable",
          "esign_unavailable"]),
    ],
)
def test_sandbox_velocity_blacklist_and_connector_failures(
    changes: dict[str, Any], status: str, reasons: list[str]
) -> None:
    got = run(screened=screening(how="low", **changes))
    assert (got.decision.status, got.decision.reasons) == (status, reasons)


def test_sandbox_amount_over_5m_goes_to_manual_review_with_its_offer() -> None:
    got = run(person=_person(35, 4_000_000, 123), amount=5_000_001)
    decision = got.decision
    assert (decision.status, decision.reasons) == ("manual_review", ["amount_review"])
    assert decision.approved_amount == 5_000_001
    assert decision.credit_limit == 20_000_000


@pytest.mark.parametrize(
    ("age", "birth_shift_days", "status"),
    [(22, 0, "approved"), (22, 1, "declined"), (55, 0, "approved"), (56, 0, "declined")],
)
def test_sandbox_age_boundaries(age: int, birth_shift_days: int, status: str) -> None:
    """Aged 22 today is in; 22 tomorrow is not yet; 55 is in; 56 is out."""
    birth = birth_for_age(age) + timedelta(days=birth_shift_days)
    got = run(person=applicant(birth=birth))
    assert got.decision.status == status
    if status == "declined":
        assert got.decision.reasons == ["age_out_of_range"]


def test_sandbox_with_the_gateway_simulators() -> None:
    """The same conventions with the connectors' own simulator (gateway/connectors.py)."""
    from gateway.connectors import simulated_answer
    from lending.identity import make_id_number, parse_id_number
    from lending.screening import SOURCE_OK, SourceResult

    for sequence in (*range(100, 1000, 37), 899, 900, 999):
        id_number = make_id_number("110105", birth_for_age(30), sequence)
        info = parse_id_number(id_number)
        sources = {name: SourceResult(SOURCE_OK, simulated_answer(name, id_number))
                   for name in SOURCES}
        got = run(person=_person(30, 1_000_000, info.sequence), amount=5_000_000,
                  screened=Screening(sources=sources))
        expected = ("declined", ["bureau_bad"]) if sequence >= 900 else ("approved", [])
        assert (got.decision.status, got.decision.reasons) == expected, (sequence, got.trace)


def test_known_customer_with_loans_gets_what_is_left_of_the_limit() -> None:
    customer = CustomerSnapshot(is_new=False, outstanding_principal=4_000_000,
                                credit_limit=5_000_000, open_loans=1)
    person = _person(35, 1_000_000, 123)
    exact = run(person=person, customer=customer, amount=1_000_000)
    over = run(person=person, customer=customer, amount=1_000_001)
    assert exact.decision.status == "approved"
    assert (over.decision.status, over.decision.reasons) == ("declined", ["limit_exceeded"])


def test_outcome_severity_of_each_set() -> None:
    facts = base_facts()
    assert BOOK.admission.evaluate(facts).outcome == PASS
    assert BOOK.anti_fraud.evaluate(with_facts(facts, {"velocity.id_partners": 2})).outcome \
        == REVIEW
    assert BOOK.anti_fraud.evaluate(
        with_facts(facts, {"velocity.id_partners": 2, "velocity.ip": 1})).outcome == DECLINE


def _person(age: int, income: int, sequence: int) -> CustomerFacts:
    return applicant(age=age, income=income, sequence=sequence)
