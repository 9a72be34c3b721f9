"""The origination pipeline (lending/origination.py) and the risk book around it: trace
contents, short-circuits, APR cap, limit, and hot reload of config/risk."""

from __future__ import annotations

import shutil
from datetime import date, timedelta
from pathlib import Path

import msgspec
import pytest
from risk_factory import (
    BOOK,
    BUSINESS_DATE,
    CATALOG,
    RISK_DIR,
    applicant,
    product,
    run,
    screening,
)

from lending.commands import SubmitApplication
from lending.decision import RiskPolicy
from lending.origination import CustomerSnapshot, DecisionTrace, purpose_code
from lending.products import Product
from lending.riskbook import RiskBookError, RiskBookReloader, load_risk_book
from lending.screening import BlacklistHits, Screening, Velocity
from lending.shard_state import ApplyContext, Prefetched, ShardState, apply_batch


def copy_risk_dir(tmp_path: Path) -> Path:
    target = tmp_path / "risk"
    shutil.copytree(RISK_DIR, target)
    return target


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new), encoding="utf-8")


# ---- decisions and their trace ------------------------------------------------------------


def test_an_approval_carries_the_offer_and_a_full_trace() -> None:
    got = run(person=applicant(income=1_200_000), amount=1_000_000,
              screened=screening(how="low"))
    decision, trace = got.decision, got.trace
    assert decision.status == "approved" and decision.reasons == []
    assert (decision.approved_amount, decision.annual_rate_bps, decision.apr_bps,
            decision.term, decision.credit_limit) == (1_000_000, 1800, 1800, 12, 6_000_000)
    assert decision.expires_on == BUSINESS_DATE + timedelta(days=7)

    assert trace.status == "approved" and trace.stopped_at is None
    assert trace.versions == dict(BOOK.versions)
    assert trace.fingerprint == BOOK.fingerprint
    assert [s.stage for s in trace.stages] == [
        "admission", "anti_fraud", "scorecard", "decision", "pricing"
    ]
    assert all(s.outcome == "pass" for s in trace.stages)
    admission = trace.stages[0]
    assert admission.evaluated == admission.total == len(BOOK.admission.rules)
    assert trace.fired == []
    assert trace.score is not None and trace.score >= 600
    assert [line.feature for line in trace.score_breakdown] == [
        f.name for f in BOOK.scorecard.features
    ]
    assert (trace.tier, trace.annual_rate_bps, trace.credit_limit, trace.available_limit,
            trace.apr_bps) == ("A", 1800, 6_000_000, 6_000_000, 1800)
    assert trace.facts.screened and trace.facts.age == 35
    assert set(trace.facts.sources.values()) == {"ok"}


def test_the_trace_holds_no_personal_data() -> None:
    person = applicant()
    got = run(person=person)
    encoded = msgspec.json.encode(got.trace)
    for secret in (person.id_hash, person.id_number_masked, person.name_masked,
                   person.phone_masked, "enc"):
        assert secret.encode() not in encoded, secret
    assert b"id_sequence" not in encoded
    assert msgspec.json.decode(encoded, type=DecisionTrace) == got.trace


def test_an_admission_decline_short_circuits_the_pipeline() -> None:
    got = run(person=applicant(age=60, income=500_000),
              screened=screening(velocity=Velocity(device=1)))
    assert (got.decision.status, got.decision.reasons) == (
        "declined", ["age_out_of_range", "income_low"]
    )
    trace = got.trace
    assert trace.stopped_at == "admission"
    assert [s.stage for s in trace.stages] == ["admission"]
    assert [(f.stage, f.rule_id) for f in trace.fired] == [
        ("admission", "age_out_of_range"), ("admission", "income_low")
    ]
    assert trace.score is None and trace.tier is None and trace.credit_limit is None
    assert got.decision.approved_amount is None


def test_an_anti_fraud_decline_stops_before_the_scorecard() -> None:
    got = run(screened=screening(velocity=Velocity(device=2, ip=1),
                                 blacklist=BlacklistHits(id_number=True)))
    assert got.decision.reasons == ["blacklist_id", "velocity_device", "velocity_ip"]
    assert got.trace.stopped_at == "anti_fraud"
    assert [s.stage for s in got.trace.stages] == ["admission", "anti_fraud"]
    assert got.trace.score is None


def test_a_decision_decline_shows_the_score_and_where_the_set_stopped() -> None:
    got = run(screened=screening(fields={"credit_bureau": {"overdue_accounts": 4}}))
    assert (got.decision.status, got.decision.reasons) == ("declined", ["overdue_accounts"])
    trace = got.trace
    assert trace.stopped_at == "decision"
    decision_stage = trace.stages[-1]
    assert decision_stage.stage == "decision" and decision_stage.stopped_early
    assert decision_stage.evaluated < decision_stage.total
    assert trace.score is not None and trace.tier == "A"


def test_review_reasons_are_collected_in_rule_order_without_duplicates(
    tmp_path: Path,
) -> None:
    directory = copy_risk_dir(tmp_path)
    # a second rule with the same reason as face_match_review
    (directory / "admission.toml").write_text(
        (directory / "admission.toml").read_text(encoding="utf-8")
        + '\n[[rules]]\nid = "face_match_again"\ndescription = "d"\n'
          'when = "face_match.available && face_match.similarity < 80"\n'
          'action = "review"\nreason = "face_match_review"\n',
        encoding="utf-8",
    )
    book = load_risk_book(directory)
    got = run(book=book, amount=5_500_000, person=applicant(income=2_000_000),
              screened=screening(fields={"face_match": {"similarity": 75},
                                         "pengyuan": {"lawsuits": 1}}))
    assert got.decision.status == "manual_review"
    assert got.decision.reasons == ["face_match_review", "lawsuit_review", "amount_review"]
    assert [f.rule_id for f in got.trace.fired] == [
        "face_match_review", "face_match_again", "lawsuit_review", "amount_review"
    ]
    assert got.decision.approved_amount == 5_500_000  # the offer a risk officer confirms


def test_a_broken_rule_sends_the_application_to_review_with_rule_error() -> None:
    got = run(screened=screening(fields={"tongdun": {"fraud_score": "n/a"}}))
    assert (got.decision.status, got.decision.reasons) == ("manual_review", ["rule_error"])
    errors = [f for f in got.trace.fired if f.reason == "rule_error"]
    assert [f.rule_id for f in errors] == ["fraud_score_high", "fraud_score_review"]
    assert all(f.stage == "anti_fraud" and f.error for f in errors)
    assert [line.bin for line in got.trace.score_breakdown
            if line.feature == "fraud_score"] == ["invalid"]


def test_above_the_apr_cap_is_declined_apr_cap() -> None:
    expensive = msgspec.structs.replace(product("CASH_EI_12"), rate_max_bps=3600)
    got = run(catalog_product=expensive, apr_cap_bps=1700)
    assert (got.decision.status, got.decision.reasons) == ("declined", ["apr_cap"])
    assert got.trace.stopped_at == "pricing"
    assert got.trace.apr_bps == 1800
    assert got.decision.approved_amount is None


def test_installment_fee_prices_at_zero_with_a_positive_apr() -> None:
    got = run(product_code="INST_FEE_12", term=6, amount=600_000, merchant=True)
    assert got.decision.status == "approved"
    assert got.decision.annual_rate_bps == 0
    assert got.decision.apr_bps is not None and 0 < got.decision.apr_bps <= 2400


def test_the_limit_counts_what_the_customer_already_owes() -> None:
    customer = CustomerSnapshot(is_new=False, outstanding_principal=2_000_000,
                                credit_limit=6_000_000, open_loans=1)
    ok = run(customer=customer, amount=4_000_000)
    assert ok.decision.status == "approved"
    assert (ok.trace.credit_limit, ok.trace.available_limit) == (6_000_000, 4_000_000)
    over = run(customer=customer, amount=4_000_001)
    assert (over.decision.status, over.decision.reasons) == ("declined", ["limit_exceeded"])


def test_a_grey_score_is_reviewed_with_its_tier_offer() -> None:
    # a weak but not bad profile: young, low bureau and zhima scores, some debt
    got = run(person=applicant(age=23, income=1_000_000), amount=1_500_000,
              screened=screening(fields={
                  "credit_bureau": {"score": 560, "debt_ratio_pct": 55},
                  "zhima": {"score": 600}, "baihang": {"multi_lending_90d": 2},
                  "tongdun": {"fraud_score": 10},
              }))
    assert got.trace.score is not None and 560 <= got.trace.score < 600, got.trace.score
    assert got.decision.status == "manual_review"
    assert "score_grey" in got.decision.reasons
    assert got.trace.tier in ("B", "C")
    assert got.decision.annual_rate_bps in (2100, 2400)


# ---- hot reload -----------------------------------------------------------------------------


def test_an_edited_copy_loads_with_a_new_fingerprint_versions_and_decision(
    tmp_path: Path,
) -> None:
    directory = copy_risk_dir(tmp_path)
    before = load_risk_book(directory)
    assert before.fingerprint == BOOK.fingerprint and before.versions == BOOK.versions
    person = applicant(income=1_200_000)
    assert run(book=before, person=person).decision.status == "approved"

    edit(directory / "admission.toml", "applicant.monthly_income < 1000000",
         "applicant.monthly_income < 1500000")
    shipped = before.versions["admission"]
    edit(directory / "admission.toml", f'name = "admission"\nversion = {shipped}',
         f'name = "admission"\nversion = {shipped + 1}')
    after = load_risk_book(directory)
    assert after.fingerprint != before.fingerprint
    assert after.versions["admission"] == shipped + 1
    got = run(book=after, person=person)
    assert (got.decision.status, got.decision.reasons) == ("declined", ["income_low"])
    assert got.trace.versions["admission"] == shipped + 1


def test_the_reloader_picks_up_edits_and_keeps_the_last_good_book(tmp_path: Path) -> None:
    directory = copy_risk_dir(tmp_path)
    now = [0.0]
    reloader = RiskBookReloader(directory, interval_s=2.0, clock=lambda: now[0])
    first = reloader.current()
    edit(directory / "pricing.toml", "annual_rate_bps = 1800", "annual_rate_bps = 1700")
    edit(directory / "pricing.toml", "version = 1", "version = 2")
    assert reloader.current() is first, "not checked again before the interval"
    now[0] = 2.0
    second = reloader.current()
    assert second is not None and second is not first and second.versions["pricing"] == 2
    assert run(book=second).decision.annual_rate_bps == 1700

    edit(directory / "decision.toml", 'when = "score < 560"', 'when = "score <"')
    now[0] = 4.0
    assert reloader.current() is second, "a broken edit is refused, the last good book stays"
    now[0] = 6.0
    assert reloader.current() is second
    edit(directory / "decision.toml", 'when = "score <"', 'when = "score < 570"')
    now[0] = 8.0
    third = reloader.current()
    assert third is not None and third is not second
    assert third.fingerprint != second.fingerprint


def test_a_host_starting_on_a_broken_edit_waits_for_the_fix(tmp_path: Path) -> None:
    """A host restarting after a crash may find a broken edit on disk: it starts without a
    book (applications answer 503, repayments go on) and picks up the repaired files."""
    directory = copy_risk_dir(tmp_path)
    edit(directory / "decision.toml", 'when = "score < 560"', 'when = "score <"')
    now = [0.0]
    reloader = RiskBookReloader(directory, interval_s=2.0, clock=lambda: now[0])
    assert reloader.current() is None
    now[0] = 2.0
    assert reloader.current() is None, "the same broken files are not loaded again"
    edit(directory / "decision.toml", 'when = "score <"', 'when = "score < 560"')
    now[0] = 4.0
    repaired = reloader.current()
    assert repaired is not None and repaired.fingerprint == BOOK.fingerprint


def test_a_broken_directory_is_one_error_listing_every_problem(tmp_path: Path) -> None:
    directory = copy_risk_dir(tmp_path)
    edit(directory / "anti_fraud.toml", 'when = "velocity.ip > 0"', 'when = "velocity.ipp > 0"')
    edit(directory / "scorecard.toml", "intercept = 3.5", "intercept = 'high'")
    (directory / "pricing.toml").unlink()
    with pytest.raises(RiskBookError) as missing:
        load_risk_book(directory)
    assert [p.split(":")[0] for p in missing.value.problems] == [str(directory / "pricing.toml")]
    shutil.copy(RISK_DIR / "pricing.toml", directory / "pricing.toml")
    with pytest.raises(RiskBookError) as caught:
        load_risk_book(directory)
    files = [Path(p.split(":")[0]).name for p in caught.value.problems]
    assert files == ["anti_fraud.toml", "scorecard.toml"]
    assert all(p.split(":")[1].isdigit() for p in caught.value.problems)


def test_rules_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cluster.cli import main

    assert main(["rules", "check", "--dir", str(RISK_DIR)]) == 0
    out = capsys.readouterr().out
    assert "ok admission v2 (14 rules)" in out
    assert "ok anti_fraud v1 (13 rules)" in out
    assert "ok decision v1 (17 rules)" in out
    directory = copy_risk_dir(tmp_path)
    edit(directory / "decision.toml", 'when = "score < 600"', 'when = "score < "')
    assert main(["rules", "check", "--dir", str(directory)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    line = next(n for n, text in enumerate(
        (directory / "decision.toml").read_text(encoding="utf-8").splitlines(), 1)
        if 'when = "score < "' in text)
    assert len(err) == 1 and err[0].startswith(f"{directory / 'decision.toml'}:{line}: ")


# ---- the shard applies it -------------------------------------------------------------------

POLICY = RiskPolicy(
    apr_cap_bps=2400, offer_valid_days=7,
)


def _submit(n: int, screened: Screening, amount: int = 1_000_000) -> SubmitApplication:
    return SubmitApplication(
        "demo", f"key-{n}", f"hash-{n}", f"A-{n}", "CASH_EI_12", amount, 12,
        applicant(sequence=100 + n), "d-1", "10.0.0.1", "consumption", None, screened,
    )


def test_the_shard_stores_the_trace_with_the_application() -> None:
    context = ApplyContext(BUSINESS_DATE, CATALOG, POLICY, risk=BOOK)
    state = ShardState(0)
    commands = [_submit(1, screening()), _submit(2, Screening()),
                _submit(3, screening(velocity=Velocity(ip=3)))]
    replies, diff = apply_batch(state, list(commands), Prefetched(), context)
    assert [r.status for r in replies] == [201, 201, 201]
    apps = sorted(diff.applications.values(), key=lambda a: a.partner_application_id)
    assert [a.status for a in apps] == ["approved", "approved", "declined"]
    assert apps[2].reasons == ["velocity_ip"]
    assert all(a.trace is not None and a.trace.fingerprint == BOOK.fingerprint for a in apps)
    assert apps[1].trace is not None and not apps[1].trace.facts.screened
    # the partner's view never shows the trace
    assert all(b"fingerprint" not in r.body and b"stages" not in r.body for r in replies)
    customer = diff.customers[apps[0].customer_id]
    assert customer.credit_limit == 6_000_000
    # Committed, the shard keeps applications without their trace (Postgres holds it).
    state.commit(diff)
    assert all(state.applications[a.application_id].trace is None for a in apps)
    assert state.applications[apps[0].application_id].status == "approved"


def test_without_a_risk_book_an_application_is_503_and_changes_nothing() -> None:
    """No decision without the rule sets, and nothing kept: not the customer, not the
    application, not the idempotency key (the partner retries it once the files load)."""
    context = ApplyContext(BUSINESS_DATE, CATALOG, POLICY)
    replies, diff = apply_batch(ShardState(0), [_submit(1, screening())], Prefetched(), context)
    assert (replies[0].status, replies[0].code) == (503, "unavailable")
    assert diff.is_empty(), diff


def test_decisions_are_pure_and_replay_identically() -> None:
    first = run(screened=screening(seed=7))
    again = run(screened=screening(seed=7))
    assert msgspec.json.encode(first) == msgspec.json.encode(again)


def test_a_future_birth_date_is_age_minus_one() -> None:
    got = run(person=applicant(birth=BUSINESS_DATE + timedelta(days=1)))
    assert got.trace.facts.age == -1
    assert got.decision.reasons == ["age_out_of_range"]


def test_a_bad_check_digit_is_declined_for_that_alone() -> None:
    got = run(person=applicant(id_valid=False, birth=date(1990, 3, 7)))
    assert (got.decision.status, got.decision.reasons) == ("declined", ["id_checksum"])


def test_a_product_outside_the_catalog_still_prices_inside_its_range() -> None:
    narrow = Product(
        code="NARROW", version=1, name="n", loan_type="cash",
        repayment_method="equal_installment", amount_min=100_000, amount_max=20_000_000,
        terms=(12,), rate_min_bps=2000, rate_max_bps=2200, default_rate_bps=2100,
    )
    got = run(catalog_product=narrow)
    assert got.decision.annual_rate_bps == 2000


@pytest.mark.parametrize(("raw", "code"), [
    ("consumption", "consumption"),
    ("Gambling", "gambling"),
    ("  GAMBLING ", "gambling"),
    ("house-purchase", "house_purchase"),
    ("house  purchase", "house_purchase"),
    ("Ｇａｍｂｌｉｎｇ", "gambling"),          # full width (NFKC)
    ("gam\u200bbling", "gambling"),           # zero-width space (a format character)
    ("__securities--", "securities"),
    ("赌博", "赌博"),                          # free text stays itself: a human reads it
])
def test_purposes_are_normalised_before_the_rules_read_them(raw: str, code: str) -> None:
    assert purpose_code(raw) == code
