"""Collections (贷后催收) and the end-of-day outbox through the running system.

* Every withholding declined (payment simulator at 1000 ‰): reminders go out by the
  strategy (D−3, D0, D+1) as SMS, a case opens the day a loan is past due, a team lead
  assigns it, the collector notes, calls (within the contact-frequency limit, which counts
  the day's reminder) and takes a promise; a paid promise is kept and the case closes
  cured; an unpaid one is broken and the case shows in the follow-up queue. Roles and bad
  input are refused with nothing changed.
* Every withholding debited (0 ‰): the installment due tomorrow is collected on its due
  date as a repayment whose external reference is the request id, once, and no case opens.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import BUSINESS_DATE, RunningSystem, fresh_system
from factories import (
    OpsClient,
    get_loan,
    new_loan,
    ops_auth,
    reconciliation,
    repay,
    trial_balance,
)

from cluster.outbox import PaymentChannel

D0 = date.fromisoformat(BUSINESS_DATE)  # loans booked on D0 are first due 2026-12-28
FIRST_DUE = date(2026, 12, 28)
COLLECTOR = ops_auth("dev-collector1-token-change-me")


class Ops(OpsClient):
    def __init__(self, system: RunningSystem) -> None:
        super().__init__(system.system.ops_url)

    def close_until(self, last: date) -> None:
        """End of day for every date up to and including `last`, each followed by a drain
        of the outbox (the run starts one in the background; this one waits for it)."""
        while (day := self.business_date()) <= last:
            response = self.eod()
            assert response.status_code == 200, response.text
            assert response.json()["business_date"] == day.isoformat()
            drained = self.post("/ops/outbox/drain", None)
            assert drained.status_code == 200, drained.text

    def requests(self, **params: Any) -> list[dict[str, Any]]:
        return self.get("/ops/connector-requests", limit=500, **params)["requests"]

    def cases(self, **params: Any) -> list[dict[str, Any]]:
        return self.get("/ops/collections/cases", **params)["cases"]


def _system(tmp_path: Path, decline_per_mille: int) -> Iterator[RunningSystem]:
    config = tmp_path / "collections.toml"
    config.write_text(
        "[eod]\nchunk_loans = 2\n"
        f"[outbox]\nsms_failure_per_mille = 0\npayment_decline_per_mille = {decline_per_mille}\n")
    with fresh_system(config) as running:
        yield running


@pytest.fixture
def declining(ray_cluster: None, tmp_path: Path) -> Iterator[RunningSystem]:
    yield from _system(tmp_path, 1000)


@pytest.fixture
def debiting(ray_cluster: None, tmp_path: Path) -> Iterator[RunningSystem]:
    yield from _system(tmp_path, 0)


def test_reminders_case_lifecycle_and_promises(declining: RunningSystem) -> None:
    ops, client = Ops(declining), declining.client()
    kept = new_loan(client, amount=600_000, product="CASH_EI_12", term=6)
    broken = new_loan(client, amount=800_000, product="CASH_EI_12", term=6)
    first = {loan["loan_id"]: loan["schedule"][0] for loan in (kept, broken)}

    # D−3 and D0: reminders planned by the run before their day, sent after it.
    ops.close_until(FIRST_DUE - timedelta(days=4))
    upcoming = ops.requests(kind="sms", created_on=(FIRST_DUE - timedelta(days=4)).isoformat())
    assert sorted(r["loan_id"] for r in upcoming) == sorted(first)
    for request in upcoming:
        assert (request["template"], request["status"], request["send_on"]) == (
            "upcoming", "sent", (FIRST_DUE - timedelta(days=3)).isoformat())
        assert request["amount"] == first[request["loan_id"]]["total"]
    ops.close_until(FIRST_DUE - timedelta(days=1))
    day_before = (FIRST_DUE - timedelta(days=1)).isoformat()
    assert {r["template"] for r in ops.requests(kind="sms", created_on=day_before)} == {
        "due_today"}
    withheld = ops.requests(kind="withholding", created_on=day_before)
    assert sorted(r["loan_id"] for r in withheld) == sorted(first)
    assert {(r["status"], r["outcome"]) for r in withheld} == {("failed", "declined")}
    assert all(r["amount"] == first[r["loan_id"]]["total"] for r in withheld)
    assert ops.cases() == []

    # The due date passes unpaid: a case per loan, in M1, unassigned; a D+1 reminder.
    ops.close_until(FIRST_DUE)
    cases = {c["loan_id"]: c for c in ops.cases(bucket="M1")}
    assert set(cases) == set(first)
    for loan_id, case in cases.items():
        assert (case["dpd"], case["status"], case["assignee"]) == (1, "open", None)
        assert case["overdue_amount"] == first[loan_id]["total"]
    reminded = [e for e in ops.get(f"/ops/collections/cases/{cases[kept['loan_id']]['case_id']}")
                ["events"] if e["kind"] == "reminder"]
    assert [(e["detail"]["template"], e["detail"]["period"], e["detail"]["due_date"])
            for e in reminded] == [("overdue_1", 1, FIRST_DUE.isoformat())]
    overdue_sms = ops.requests(kind="sms", created_on=FIRST_DUE.isoformat())
    assert {(r["template"], r["case_id"]) for r in overdue_sms} == {
        ("overdue_1", cases[loan_id]["case_id"]) for loan_id in first}
    report = ops.post("/ops/eod", {"business_date": FIRST_DUE.isoformat()}).json()
    assert report["collections"]["cases_opened"] == 2
    assert report["reminders"] == {"planned": 2, "suppressed": 0}
    assert report["withholdings"] == {"planned": 0, "amount": 0}
    case_kept, case_broken = cases[kept["loan_id"]], cases[broken["loan_id"]]
    base = f"/ops/collections/cases/{case_kept['case_id']}"

    # Roles: a collector works only their own cases and cannot assign.
    refused = ops.post(f"{base}/notes", {"text": "hello"}, COLLECTOR)
    assert refused.status_code == 403, refused.text
    assert ops.post(f"{base}/assign", {"assignee": "collector:collector1"},
                    COLLECTOR).status_code == 403
    # Bad input changes nothing.
    for body, code in (({"assignee": "collector:nobody"}, 422),
                       ({"assignee": "agency:NOPE"}, 422), ({"who": "x"}, 400)):
        response = ops.post(f"{base}/assign", body)
        assert response.status_code == code, response.text
    assert ops.get(base)["case"]["assignee"] is None
    assigned = ops.post(f"{base}/assign", {"assignee": "collector:collector1"})
    assert assigned.status_code == 200, assigned.text
    assert ops.post(f"{base}/assign", {"assignee": "collector:collector1"}).status_code == 409
    assert ops.cases(assignee="collector:collector1")[0]["case_id"] == case_kept["case_id"]

    # The collector works the case: a note, a call (the day's reminder was contact no. 1 of
    # the 2 a day allowed), then the limit; a promise for the overdue amount in two days.
    today = ops.business_date()
    assert ops.post(f"{base}/notes", {"text": "customer travelling"},
                    COLLECTOR).status_code == 200
    call = {"channel": "call", "outcome": "promised", "note": "will pay Friday"}
    assert ops.post(f"{base}/contacts", call, COLLECTOR).status_code == 200
    over = ops.post(f"{base}/contacts", call, COLLECTOR)
    assert over.status_code == 422 and over.json()["error"]["code"] == "contact_limit_reached"
    bad_outcome = ops.post(f"{base}/contacts", {**call, "outcome": "maybe"}, COLLECTOR)
    assert bad_outcome.status_code == 422, bad_outcome.text
    owed = case_kept["overdue_amount"]
    too_far = (today + timedelta(days=15)).isoformat()
    assert ops.post(f"{base}/promises", {"amount": owed, "promised_on": too_far},
                    COLLECTOR).status_code == 422
    promised_on = today + timedelta(days=2)
    promise = ops.post(f"{base}/promises",
                       {"amount": owed, "promised_on": promised_on.isoformat()}, COLLECTOR)
    assert promise.status_code == 200, promise.text
    case = ops.get(base)
    assert case["case"]["last_outcome"] == "promised" and case["case"]["contacts"] == 1
    assert case["case"]["promise"]["status"] == "pending"
    kinds = [event["kind"] for event in case["events"]]
    assert kinds[:1] == ["opened"] and kinds[-4:] == ["assigned", "note", "contact", "promise"]

    # Every action is audited with the case before and after it.
    audited = ops.get("/ops/audit", target=f"case:{case_kept['case_id']}")["entries"]
    assert [(e["actor"], e["action"]) for e in audited] == [
        ("admin", "collections.assign"), ("collector1", "collections.note"),
        ("collector1", "collections.contact"), ("collector1", "collections.promise")]
    assert audited[0]["before"]["assignee"] is None
    assert audited[0]["after"]["assignee"] == "collector:collector1"

    # The other case: a small promise for today, not kept.
    other = f"/ops/collections/cases/{case_broken['case_id']}"
    assert ops.post(f"{other}/promises",
                    {"amount": 100, "promised_on": today.isoformat()}).status_code == 200

    # The borrower pays what was promised; end of day: kept and cured; the other broken.
    paid = repay(client, kept["loan_id"], owed)
    assert paid.status_code == 201, paid.text
    ops.close_until(today)
    closed = ops.get(base)
    assert (closed["case"]["status"], closed["case"]["close_reason"]) == ("closed", "cured")
    assert closed["case"]["promise"]["status"] == "kept"
    assert [e["kind"] for e in closed["events"]][-2:] == ["promise_kept", "closed"]
    assert ops.post(f"{base}/notes", {"text": "late"}).status_code == 404
    follow_ups = ops.cases(follow_up="due")
    assert [c["case_id"] for c in follow_ups] == [case_broken["case_id"]]
    assert follow_ups[0]["promise"]["status"] == "broken"
    summary = ops.get("/ops/collections/summary")
    assert summary["open_by_bucket"] == [
        {"bucket": "M1", "cases": 1, "overdue_amount": follow_ups[0]["overdue_amount"]}]
    assert summary["promises"] == {"kept": 1, "broken": 1}
    assert summary["closed_by_reason"] == {"cured": 1}
    assert summary["follow_ups_due"] == 1
    assert get_loan(client, kept["loan_id"])["dpd"] == 0
    assert reconciliation(ops.client)["reconciled"]
    balance = trial_balance(ops.client)
    assert balance["total_debit"] == balance["total_credit"]


def test_withholding_collects_the_installment_once(debiting: RunningSystem) -> None:
    ops, client = Ops(debiting), debiting.client()
    loan = new_loan(client, amount=500_000, product="CASH_EI_12", term=3)
    first = loan["schedule"][0]
    ops.close_until(FIRST_DUE - timedelta(days=1))
    (request,) = ops.requests(kind="withholding")
    assert (request["loan_id"], request["amount"], request["send_on"]) == (
        loan["loan_id"], first["total"], FIRST_DUE.isoformat())
    assert (request["status"], request["outcome"]) == ("succeeded", "debited")
    view = get_loan(client, loan["loan_id"])
    assert view["schedule"][0]["status"] == "paid"
    assert view["outstanding"]["principal"] == loan["principal"] - first["principal"]
    # A second drain applies nothing more: the request is no longer pending.
    assert ops.post("/ops/outbox/drain", None).json()["sent"] == {}
    applied = debiting.run(_repayments(debiting, request["request_id"]))
    assert applied == [(request["repayment_id"], first["total"])]
    ops.close_until(FIRST_DUE)
    assert ops.cases(status="open") == [] and ops.cases(status="closed") == []
    assert get_loan(client, loan["loan_id"])["dpd"] == 0
    assert reconciliation(ops.client)["reconciled"]


class _RecordingPayments(PaymentChannel):
    def __init__(self) -> None:
        self.debits: list[str] = []

    async def debit(self, request_id: str, customer_id: str, amount: int) -> str:
        self.debits.append(request_id)
        return "debited"


def test_a_withholding_whose_outcome_was_lost_is_not_debited_again(
    debiting: RunningSystem,
) -> None:
    ops, client = Ops(debiting), debiting.client()
    loan = new_loan(client, amount=500_000, product="CASH_EI_12", term=3)
    ops.close_until(FIRST_DUE - timedelta(days=1))
    (request,) = ops.requests(kind="withholding")
    assert request["status"] == "succeeded"
    # As if the drain had stopped after the shard applied the repayment and before it
    # recorded the outcome: the request is pending again, with an attempt behind it.
    debiting.run(debiting.pg().execute(
        "UPDATE connector_requests SET status = 'pending', outcome = NULL, "
        "repayment_id = NULL, attempts = 1 WHERE request_id = $1", request["request_id"]))
    payments = _RecordingPayments()
    assert debiting.system.outbox is not None
    debiting.system.outbox.payments = payments
    assert ops.post("/ops/outbox/drain", None).status_code == 200
    (again,) = ops.requests(kind="withholding")
    assert (again["status"], again["outcome"], again["repayment_id"]) == (
        "succeeded", "debited", request["repayment_id"])
    assert payments.debits == [], "the repayment it found was not debited a second time"
    assert len(debiting.run(_repayments(debiting, request["request_id"]))) == 1
    assert get_loan(client, loan["loan_id"])["schedule"][0]["status"] == "paid"


async def _repayments(system: RunningSystem, external_ref: str) -> list[tuple[str, int]]:
    rows = await system.pg().fetch(
        "SELECT repayment_id, amount FROM repayments WHERE external_ref = $1", external_ref)
    return [(r["repayment_id"], int(r["amount"])) for r in rows]
