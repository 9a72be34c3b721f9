"""Settlement files (DOMAIN.md §7; docs/operations.md "Settlement files") on the real system:
built by end of day, read through GET /ops/settlements and
GET /ops/settlements/{book}/{business_date}.

One book of five loans lives 37 business dates (2026-11-29 .. 2027-01-04), every
withholding declined so that loans are paid only as the test says:
* joint loans (JOINT_EI_12, the lender 30 %, funder bank_a 70 %; this test's copy of the
  product charges a 1 % prepayment fee): J1 pays its first installment on its due date; J2
  pays nothing until it is overdue and charged penalty, then pays off (penalty, interest,
  principal, prepayment fee); J3 is booked on day 2 and prepays part of its principal;
* assisted loans (ASSIST_EI_12, funder bank_b 100 %, guaranteed by partner demo, whose
  guarantee fee comes with each installment; this test's copy compensates at DPD 3): A2
  pays its first installment with the fee on time; A1 pays nothing, is compensated (代偿)
  by the guarantor, then pays the guarantor off;
* a self-funded loan S1, which no file may show.

Checked for every date and every file, against the ledger read independently (journal
lines and the daily GL summary):
* each book other than `own` has exactly one file per date from its first posting on, and
  `own` none; the download is the stored bytes (text/csv), its X-Checksum-SHA256 header is
  SHA-256 of every byte before the checksum record, which states the same digest;
* the totals record sums the loan records, and equals the book's movements of the day: the
  cash (1001) debits are the collections plus the compensation received, the cash credits
  the disbursements plus the compensation paid; every collected component is what that
  day's repayment and prepayment-fee entries credit to its accounts;
* the loan records are exactly the loans with a line in the book that day, each loan's
  closing balances are its journal lines summed up to that day, and the latest closing of
  every loan of the book, summed, is the book's closing in the daily GL summary;
* hand figures: the disbursed 70 % (floor) and 100 % shares, each repayment's
  allocation = the funder's collected components + the lender's own-book part, the
  compensation = what the borrower owed the bank, the guarantor's recovery = the payoff;
* a closed date asked again, and a crash in the middle of building (some shards' rows,
  some files and the report's record lost), give the same bytes;
* bad input (a malformed date, an unknown book, a date not closed, a bad limit) is a
  clear 4xx and changes nothing; only viewers (and admins) may read the files.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import BUSINESS_DATE, RunningSystem, fresh_system
from factories import OpsClient, assert_error, get_loan, new_loan, ops_auth, payoff_quote, repay

from gateway.ops_api import Operator, OpsApi
from lending import ledger
from lending.settlement import AMOUNT_COLUMNS, BALANCE_ROLES, ParsedFile, parse

PROJECT = Path(__file__).resolve().parents[2]
D0 = date.fromisoformat(BUSINESS_DATE)  # 2026-11-29
LAST = date(2027, 1, 4)
BANK_A, BANK_B, GUARANTOR = "funder:bank_a", "funder:bank_b", "guarantor:demo"
PRINCIPAL = ("principal_receivable_normal", "principal_receivable_overdue",
             "credit_loss_expense")
COMPONENT_ROLES = {
    "collected_principal": PRINCIPAL,
    "collected_interest": ("interest_receivable", "interest_income"),
    "collected_fee": ("fee_receivable", "fee_income"),
    "collected_penalty": ("penalty_receivable", "penalty_income"),
    "collected_guarantee_receivable": ("guarantee_receivable",),
}
VIEWER_TOKEN = "settlement-viewer-token"
OPERATOR_TOKEN = "settlement-operator-token"


@dataclass
class Story:
    system: RunningSystem
    ops: OpsClient
    loans: dict[str, dict[str, Any]] = field(default_factory=dict)
    repayments: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → response
    repaid_on: dict[str, date] = field(default_factory=dict)
    compensated_on: date | None = None
    compensated_view: dict[str, Any] = field(default_factory=dict)
    reports: dict[date, dict[str, Any]] = field(default_factory=dict)

    def sql(self, query: str, *args: Any) -> list[Any]:
        rows: list[Any] = self.system.run(self.system.pg().fetch(query, *args))
        return rows

    def role(self, code: str) -> str:
        return self.system.system.chart.by_code(code).role

    def download(self, book: str, day: date) -> tuple[bytes, str]:
        response = self.ops.client.get(f"/ops/settlements/{book}/{day}", headers=ops_auth())
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert response.headers["content-disposition"] == (
            f'attachment; filename="settlement_{book.replace(":", "_")}_{day}.csv"')
        return response.content, response.headers["x-checksum-sha256"]

    def listing(self, day: date) -> dict[str, dict[str, Any]]:
        body = self.ops.get("/ops/settlements", business_date=day.isoformat())
        assert body["business_date"] == day.isoformat() and body["book"] is None
        return {f["book"]: f for f in body["files"]}

    def loan_id(self, name: str) -> str:
        return str(self.loans[name]["loan_id"])


def _products(directory: Path) -> Path:
    products = directory / "products"
    shutil.copytree(PROJECT / "config" / "products", products)
    for name, old, new in (("ASSIST_EI_12", "compensation_dpd = 80", "compensation_dpd = 3"),
                           ("JOINT_EI_12", "prepayment_fee_bps = 0", "prepayment_fee_bps = 100")):
        path = products / f"{name}.toml"
        text = path.read_text()
        assert old in text, (name, old)
        path.write_text(text.replace(old, new))
    return products


@pytest.fixture(scope="module")
def story(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    directory = tmp_path_factory.mktemp("settlement")
    config = directory / "settlement.toml"
    config.write_text(f'[paths]\nproducts_dir = "{_products(directory)}"\n'
                      "[eod]\nchunk_loans = 3\nshard_concurrency = 2\n"
                      "[outbox]\npayment_decline_per_mille = 1000\n")
    with fresh_system(config) as running:
        app = next(server.config.app for server in running.system._servers
                   if isinstance(server.config.app, OpsApi))
        app.operators.extend([Operator("finance", VIEWER_TOKEN, ["viewer"]),
                              Operator("lead", OPERATOR_TOKEN, ["operator"])])
        story = Story(running, OpsClient(running.system.ops_url, timeout=300))
        _live(story)
        yield story


def _live(story: Story) -> None:
    client = story.system.client()
    ops = story.ops
    day = D0
    while day <= LAST:
        assert ops.business_date() == day
        if day == D0:
            story.loans["J1"] = new_loan(client, amount=1_000_001, product="JOINT_EI_12",
                                         term=12)
            story.loans["J2"] = new_loan(client, amount=500_000, product="JOINT_EI_12", term=6)
            story.loans["A1"] = new_loan(client, amount=1_200_000, product="ASSIST_EI_12",
                                         term=12)
            story.loans["A2"] = new_loan(client, amount=600_000, product="ASSIST_EI_12",
                                         term=6)
            story.loans["S1"] = new_loan(client, amount=300_000, product="CASH_EI_12", term=12)
        if day == D0 + timedelta(days=1):
            story.loans["J3"] = new_loan(client, amount=800_000, product="JOINT_EI_12", term=3)
        if day == D0 + timedelta(days=2):
            _pay(story, "J3", day, 200_000, "prepay_reduce_installment")
        due = date.fromisoformat(story.loans["J1"]["schedule"][0]["due_date"])
        if day == due:
            _pay(story, "J1", day, story.loans["J1"]["schedule"][0]["total"])
            _pay(story, "A2", day, story.loans["A2"]["schedule"][0]["total"])
        if story.compensated_on is not None and day == story.compensated_on + timedelta(days=1):
            _pay(story, "A1", day, payoff_quote(client, story.loan_id("A1"))["total"], "payoff")
        if day == date(2027, 1, 3):
            _pay(story, "J2", day, payoff_quote(client, story.loan_id("J2"))["total"], "payoff")
        response = ops.eod()
        assert response.status_code == 200, response.text
        story.reports[day] = response.json()
        if story.compensated_on is None:
            view = get_loan(client, story.loan_id("A1"))
            if view["funding"]["compensated_on"] is not None:
                assert view["funding"]["compensated_on"] == day.isoformat()
                story.compensated_on, story.compensated_view = day, view
        day += timedelta(days=1)
    client.close()
    assert story.compensated_on is not None, "A1 was never compensated"
    assert set(story.repaid_on) == {"J1", "J2", "J3", "A1", "A2"}


def _pay(story: Story, name: str, day: date, amount: int, kind: str = "regular") -> None:
    client = story.system.client()
    response = repay(client, story.loan_id(name), amount, kind)
    client.close()
    assert response.status_code == 201, response.text
    story.repayments[name] = response.json()
    story.repaid_on[name] = day


# ---- every date, every file, against the ledger ----------------------------------------------


def test_every_book_has_one_verified_file_a_date_and_own_none(story: Story) -> None:
    first_posting = {r["book"]: r["first"] for r in story.sql(
        "SELECT book, min(business_date) AS first FROM journal_lines WHERE book <> 'own' "
        "GROUP BY book")}
    assert set(first_posting) == {BANK_A, BANK_B, GUARANTOR}
    assert first_posting[BANK_A] == first_posting[BANK_B] == D0
    day = D0
    while day <= LAST:
        files = story.listing(day)
        assert set(files) == {book for book, first in first_posting.items() if first <= day}
        assert story.reports[day]["settlements"] == {
            book: {"loans": f["loans"], "net_cash": f["totals"]["net_cash"],
                   "sha256": f["sha256"]} for book, f in files.items()}
        for book, summary in files.items():
            content, header = story.download(book, day)
            assert len(content) == summary["bytes"]
            cut = content.rstrip(b"\n").rfind(b"\n") + 1
            assert hashlib.sha256(content[:cut]).hexdigest() == header == summary["sha256"]
            assert content[cut:] == f"checksum,sha256,{header}\n".encode()
            parsed = parse(content)  # verifies the checksum and that the total sums the rows
            assert (parsed.business_date, parsed.book) == (day, book)
            assert parsed.totals == summary["totals"] and parsed.loans == summary["loans"]
        day += timedelta(days=1)
    assert_error(story.ops.client.get(f"/ops/settlements/own/{D0}", headers=ops_auth()),
                 404, "not_found", "book")


def _file(story: Story, book: str, day: date) -> ParsedFile:
    content, _ = story.download(book, day)
    return parse(content)


def test_the_totals_are_the_books_movements_and_the_balances_its_ledger(story: Story) -> None:
    checked = check_files_against_the_ledger(story, LAST)
    assert checked >= 2 * 37 + 1  # both banks every date, the guarantor from its fee on


def check_files_against_the_ledger(story: Story, last: date) -> int:
    """Every file of every date D0..last against the ledger; returns how many."""
    latest: dict[str, dict[str, tuple[int, ...]]] = {}  # book → loan → latest closing
    checked_days = 0
    day = D0
    while day <= last:
        for book in story.listing(day):
            parsed = _file(story, book, day)
            totals = parsed.totals
            # cash: the day's debits and credits of 1001 in the daily GL summary
            summary = story.ops.get("/ops/ledger/daily-summary", business_date=day.isoformat(),
                                    book=book)
            accounts = {a["role"]: a for a in summary["accounts"]}
            cash = accounts.get(ledger.CASH, {"debit": 0, "credit": 0})
            assert cash["debit"] == (totals["collected_total"] + totals["compensation_received"]
                                     + totals["other_cash_in"]), (book, day)
            assert cash["credit"] == (totals["disbursed_principal"] + totals["compensation_paid"]
                                      + totals["other_cash_out"]), (book, day)
            assert totals["net_cash"] == cash["debit"] - cash["credit"]
            assert totals["other_cash_in"] == totals["other_cash_out"] == 0
            # components: what the day's entries of each kind credit to its accounts
            by_kind: dict[tuple[str, str], int] = {}
            for r in story.sql(
                    "SELECT kind, account, sum(credit - debit)::int8 AS net FROM journal_lines "
                    "WHERE book = $1 AND business_date = $2 GROUP BY kind, account", book, day):
                key = (r["kind"], story.role(r["account"]))
                by_kind[key] = by_kind.get(key, 0) + int(r["net"])
            for column, roles in COMPONENT_ROLES.items():
                assert totals[column] == sum(by_kind.get((ledger.REPAYMENT, role), 0)
                                             for role in roles), (book, day, column)
            assert totals["collected_prepayment_fee"] == -by_kind.get(
                (ledger.PREPAYMENT_FEE, ledger.CASH), 0)
            assert totals["disbursed_principal"] == by_kind.get(
                (ledger.DISBURSEMENT, ledger.CASH), 0)
            # the records: exactly the loans moved in the book that day, each closing = its
            # journal lines up to the day
            moved = {r["loan_id"] for r in story.sql(
                "SELECT DISTINCT loan_id FROM journal_lines WHERE book = $1 "
                "AND business_date = $2", book, day)}
            assert {row.loan_id for row in parsed.rows} == moved, (book, day)
            assert story.loan_id("S1") not in moved
            balances: dict[str, dict[str, int]] = {}
            for r in story.sql(
                    "SELECT loan_id, account, sum(debit - credit)::int8 AS net "
                    "FROM journal_lines WHERE book = $1 AND business_date <= $2 "
                    "AND loan_id = ANY($3::text[]) GROUP BY loan_id, account",
                    book, day, sorted(moved)):
                balances.setdefault(r["loan_id"], {})[story.role(r["account"])] = int(r["net"])
            for row in parsed.rows:
                expected = tuple(balances[row.loan_id].get(role, 0) for role in BALANCE_ROLES)
                assert row.closing == expected, (book, day, row.loan_id)
                latest.setdefault(book, {})[row.loan_id] = row.closing
            # the book's closing: every loan's latest closing, summed
            for slot, role in enumerate(BALANCE_ROLES):
                total = sum(closing[slot] for closing in latest.get(book, {}).values())
                assert total == accounts.get(role, {"closing": 0})["closing"], (book, day, role)
            checked_days += 1
        day += timedelta(days=1)
    return checked_days


def _row(story: Story, book: str, day: date, name: str) -> dict[str, int]:
    parsed = _file(story, book, day)
    rows = {row.loan_id: row for row in parsed.rows}
    row = rows[story.loan_id(name)]
    return dict(zip(AMOUNT_COLUMNS, row.amounts(), strict=True))


def _own_part(story: Story, name: str, day: date, kind: str) -> dict[str, int]:
    """What the lender's own book collected of a joint loan's repayment that day."""
    parts = dict.fromkeys(COMPONENT_ROLES, 0)
    for r in story.sql(
            "SELECT account, sum(credit - debit)::int8 AS net FROM journal_lines "
            "WHERE book = 'own' AND loan_id = $1 AND business_date = $2 AND kind = $3 "
            "GROUP BY account", story.loan_id(name), day, kind):
        for column, roles in COMPONENT_ROLES.items():
            if story.role(r["account"]) in roles:
                parts[column] += int(r["net"])
    return parts


def test_hand_figures_of_each_model(story: Story) -> None:
    # disbursements: floor(70 %) to bank_a, 100 % to bank_b
    assert _row(story, BANK_A, D0, "J1")["disbursed_principal"] == 700_000
    assert _row(story, BANK_A, D0, "J2")["disbursed_principal"] == 350_000
    assert _row(story, BANK_B, D0, "A1")["disbursed_principal"] == 1_200_000
    assert _row(story, BANK_B, D0, "A2")["disbursed_principal"] == 600_000
    assert _row(story, BANK_A, D0, "J1")["closing_principal_normal"] == 700_000
    # a repayment of a joint loan: the funder's components + the lender's = the allocation
    for name, kind_of_day in (("J1", "regular"), ("J3", "prepay"), ("J2", "payoff")):
        day = story.repaid_on[name]
        row = _row(story, BANK_A, day, name)
        own = _own_part(story, name, day, ledger.REPAYMENT)
        allocation = story.repayments[name]["allocation"]
        for component in ("principal", "interest", "penalty"):
            assert (row[f"collected_{component}"] + own[f"collected_{component}"]
                    == allocation[component]), (name, component)
        assert row["collected_principal"] > 0, name
        fee = story.repayments[name]["prepayment_fee"]
        if kind_of_day in ("prepay", "payoff"):
            own_fee = sum(int(r["net"] or 0) for r in story.sql(
                "SELECT sum(debit - credit)::int8 AS net FROM journal_lines WHERE book = 'own' "
                "AND loan_id = $1 AND business_date = $2 AND kind = $3 AND account = $4",
                story.loan_id(name), day, ledger.PREPAYMENT_FEE,
                story.system.system.chart.code(ledger.CASH)))
            assert fee > 0 and row["collected_prepayment_fee"] + own_fee == fee, name
            assert row["collected_prepayment_fee"] > 0, name
        else:
            assert fee == row["collected_prepayment_fee"] == 0, name
    assert _row(story, BANK_A, story.repaid_on["J2"], "J2")["collected_penalty"] > 0
    # J2 paid off: nothing left in bank_a's book
    assert all(v == 0 for k, v in _row(story, BANK_A, story.repaid_on["J2"], "J2").items()
               if k.startswith("closing_"))
    # the assisted loan paid on time: principal and interest to the bank, the fee to the
    # guarantor, together the installment
    day = story.repaid_on["A2"]
    bank, guarantor = _row(story, BANK_B, day, "A2"), _row(story, GUARANTOR, day, "A2")
    allocation = story.repayments["A2"]["allocation"]
    assert (bank["collected_principal"], bank["collected_interest"], bank["collected_fee"]) == (
        allocation["principal"], allocation["interest"], 0)
    assert guarantor["collected_fee"] == allocation["fee"] == 1_200  # 0.20 % of 600,000
    assert guarantor["collected_total"] == guarantor["net_cash"] == 1_200
    # compensation: the guarantor pays the bank what the borrower owed it (not the fee,
    # which was the guarantor's)
    assert story.compensated_on is not None
    day = story.compensated_on
    bank, guarantor = _row(story, BANK_B, day, "A1"), _row(story, GUARANTOR, day, "A1")
    outstanding = story.compensated_view["outstanding"]
    owed_to_bank = sum(outstanding.values()) - outstanding["fee"]
    assert bank["compensation_received"] == guarantor["compensation_paid"] == owed_to_bank
    assert bank["net_cash"] == owed_to_bank and guarantor["net_cash"] == -owed_to_bank
    assert all(v == 0 for k, v in bank.items() if k.startswith("closing_"))
    assert guarantor["closing_guarantee_receivable"] == sum(outstanding.values())
    # then the borrower pays the guarantor off
    day = story.repaid_on["A1"]
    assert story.loan_id("A1") not in {r.loan_id for r in _file(story, BANK_B, day).rows}
    recovered = _row(story, GUARANTOR, day, "A1")
    paid = sum(story.repayments["A1"]["allocation"].values())
    assert recovered["collected_total"] == recovered["net_cash"] == paid > 0
    assert recovered["collected_guarantee_receivable"] > 0
    assert recovered["closing_guarantee_receivable"] == 0


# ---- the same bytes, whatever happens -------------------------------------------------------


def _all_bytes(story: Story, day: date) -> dict[str, bytes]:
    return {book: story.download(book, day)[0] for book in story.listing(day)}


def test_a_closed_date_asked_again_and_a_crash_mid_build_give_the_same_bytes(
    story: Story,
) -> None:
    day = story.compensated_on
    assert day is not None
    before = _all_bytes(story, day)
    next_day = _all_bytes(story, day + timedelta(days=1))
    assert set(before) == {BANK_A, BANK_B, GUARANTOR}
    again = story.ops.eod(day.isoformat())
    assert again.status_code == 200, again.text
    assert again.json() == story.reports[day]
    assert _all_bytes(story, day) == before
    # a crash: half the shards' rows and claims, two of the three files and the report's
    # record of the files lost (a crash leaves at most that much undone)
    shards = [r["shard_id"] for r in story.sql(
        "SELECT shard_id FROM settlement_shard_days WHERE business_date = $1 ORDER BY 1", day)]
    assert len(shards) >= 2
    lost = shards[::2]
    story.sql("DELETE FROM settlement_lines WHERE business_date = $1 "
              "AND shard_id = ANY($2::int[])", day, lost)
    story.sql("DELETE FROM settlement_shard_days WHERE business_date = $1 "
              "AND shard_id = ANY($2::int[])", day, lost)
    story.sql("DELETE FROM settlement_files WHERE business_date = $1 AND book <> $2",
              day, GUARANTOR)
    story.sql("UPDATE eod_runs SET report = report - 'settlements' WHERE business_date = $1",
              day)
    assert_error(story.ops.client.get(f"/ops/settlements/{BANK_A}/{day}",
                                      headers=ops_auth()), 404, "not_found", "business_date")
    rebuilt = story.ops.eod(day.isoformat())
    assert rebuilt.status_code == 200, rebuilt.text
    assert rebuilt.json()["settlements"] == story.reports[day]["settlements"]
    assert _all_bytes(story, day) == before
    assert _all_bytes(story, day + timedelta(days=1)) == next_day
    # the rows rebuilt are those the next date's rows were built on
    rows = story.sql("SELECT count(*) AS n FROM settlement_lines WHERE business_date = $1", day)
    assert rows[0]["n"] == sum(parse(content).loans for content in before.values())


# ---- bad input, roles ------------------------------------------------------------------------


def _state(story: Story) -> list[dict[str, Any]]:
    return [dict(r) for r in story.sql(
        "SELECT (SELECT count(*) FROM settlement_files) AS files, "
        "(SELECT count(*) FROM settlement_lines) AS lines, "
        "(SELECT string_agg(sha256, ',' ORDER BY business_date, book) FROM settlement_files) "
        "AS digests, (SELECT max(business_date) FROM eod_runs) AS last_run")]


def test_bad_input_is_a_clear_4xx_and_changes_nothing(story: Story) -> None:
    before = _state(story)
    client, auth = story.ops.client, ops_auth()
    for path, status, code, field_name in (
        (f"/ops/settlements/{BANK_A}/2026-13-01", 400, "invalid_request", "business_date"),
        (f"/ops/settlements/{BANK_A}/20261129", 400, "invalid_request", "business_date"),
        (f"/ops/settlements/{BANK_A}/{LAST}x", 400, "invalid_request", "business_date"),
        (f"/ops/settlements/funder:nobody/{D0}", 404, "not_found", "book"),
        (f"/ops/settlements/bank_a/{D0}", 404, "not_found", "book"),
        (f"/ops/settlements/{BANK_A}/2030-01-01", 404, "not_found", "business_date"),
        (f"/ops/settlements/{BANK_A}/{D0 - timedelta(days=1)}", 404, "not_found",
         "business_date"),
        (f"/ops/settlements/{GUARANTOR}/{D0}", 404, "not_found", "business_date"),
        ("/ops/settlements?business_date=yesterday", 400, "invalid_request", "business_date"),
        ("/ops/settlements?book=funder:nobody", 404, "not_found", "book"),
        ("/ops/settlements?business_date=2030-01-01", 404, "not_found", "business_date"),
        ("/ops/settlements?limit=0", 400, "invalid_request", "limit"),
        ("/ops/settlements?limit=1001", 400, "invalid_request", "limit"),
        ("/ops/settlements?book=%01", 400, "invalid_request", "book"),
    ):
        error = assert_error(client.get(path, headers=auth), status, code, field_name)
        assert error["message"], path
    assert_error(client.get(f"/ops/settlements/{BANK_A}/{D0}"), 401, "unauthenticated")
    assert _state(story) == before
    # the listing: one book, newest first, bounded
    body = story.ops.get("/ops/settlements", book=BANK_A, limit="5")
    assert [f["business_date"] for f in body["files"]] == [
        (LAST - timedelta(days=i)).isoformat() for i in range(5)]
    assert {f["book"] for f in body["files"]} == {BANK_A}
    assert body["files"][0]["download"] == f"/ops/settlements/{BANK_A}/{LAST}"


@pytest.mark.parametrize(("token", "allowed"), [
    (VIEWER_TOKEN, True), (OPERATOR_TOKEN, False),
    ("dev-officer2-token-change-me", False), ("dev-collector1-token-change-me", False),
])
def test_only_viewers_and_admins_read_the_files(story: Story, token: str, allowed: bool) -> None:
    for path in ("/ops/settlements", f"/ops/settlements/{BANK_A}/{D0}"):
        response = story.ops.client.get(path, headers=ops_auth(token))
        if allowed:
            assert response.status_code == 200, response.text
        else:
            assert_error(response, 403, "forbidden")


# ---- last: moves the business date on ------------------------------------------------------


def test_the_next_run_builds_a_date_a_crash_left_without_files(story: Story) -> None:
    """A run that died after advancing the date, before any settlement file of its date was
    stored: the next date's run builds them first (the chain needs them), then its own."""
    day = story.ops.business_date() - timedelta(days=1)  # the last closed date
    before = _all_bytes(story, day)
    for statement in (
        "DELETE FROM settlement_lines WHERE business_date = $1",
        "DELETE FROM settlement_shard_days WHERE business_date = $1",
        "DELETE FROM settlement_files WHERE business_date = $1",
        "UPDATE eod_runs SET report = report - 'settlements' WHERE business_date = $1",
    ):
        story.sql(statement, day)
    response = story.ops.eod()
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["business_date"] == (day + timedelta(days=1)).isoformat()
    assert set(report["settlements"]) == {BANK_A, BANK_B, GUARANTOR}
    assert _all_bytes(story, day) == before
    assert check_files_against_the_ledger(story, day + timedelta(days=1)) >= 2 * 38 + 1
