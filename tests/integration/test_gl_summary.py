"""The daily GL summary (DOMAIN.md §5) on the real system: built by POST /ops/eod, read by
GET /ops/ledger/daily-summary.

* several days of bookings, repayments and accruals: after each end of day D
  - the summary's day debits and credits per account are those of the journal lines dated D
    (read straight from Postgres), and each book balances;
  - closing = opening ± the day's movement, on the account's normal side;
  - opening of D = closing of D − 1, accounts without movement on D included;
  - closing of D = the trial balance right after the run (no partner request in between),
    and the sum over days of the summaries' debits and credits = the trial balance's;
  - the run report carries the per-book totals and the step's time;
* idempotency and repair: a closed date asked again answers the same report; a summary that
  a crash lost (rows and report totals) is rebuilt by asking for its date, or by the next
  date's run, identical to the first; without the previous day's summary the opening is
  summed from the whole journal, with the same result;
* a summary that disagrees with the ledger is refused (500 gl_summary_mismatch), the date
  having moved on; once the ledger is right, asking for the date again builds it;
* bad input: 400 for a malformed date, 404 for an unknown book or a date not closed, 401
  without a token.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import BUSINESS_DATE, RunningSystem, fresh_system
from factories import assert_error, new_loan, ops_auth, repay, trial_balance

from loadtests.client import PartnerClient

D0 = date.fromisoformat(BUSINESS_DATE)


def _config(directory: Path) -> Path:
    config = directory / "gl.toml"
    config.write_text("[eod]\nchunk_loans = 2\nshard_concurrency = 2\nlock_ttl_s = 5\n")
    return config


@pytest.fixture
def new_system(ray_cluster: None, tmp_path: Path) -> Iterator[RunningSystem]:
    """A system of its own, on a new database (the first day's opening is zero)."""
    with fresh_system(_config(tmp_path)) as running:
        yield running


@pytest.fixture(scope="module")
def gl_system(
    ray_cluster: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSystem]:
    """One system for the tests that work from whatever date it is at."""
    with fresh_system(_config(tmp_path_factory.mktemp("gl"))) as running:
        yield running


class Ops:
    def __init__(self, system: RunningSystem) -> None:
        self.system = system
        self.client = httpx.Client(base_url=system.system.ops_url, timeout=300)

    def eod(self, business_date: date | None = None) -> httpx.Response:
        body = {} if business_date is None else {"business_date": business_date.isoformat()}
        return self.client.post("/ops/eod", json=body, headers=ops_auth())

    def eod_ok(self, business_date: date | None = None) -> dict[str, Any]:
        response = self.eod(business_date)
        assert response.status_code == 200, response.text
        report: dict[str, Any] = response.json()
        return report

    def business_date(self) -> date:
        response = self.client.get("/ops/business-date", headers=ops_auth())
        return date.fromisoformat(response.json()["business_date"])

    def summary_response(self, query: str, token: str | None = None) -> httpx.Response:
        headers = ops_auth(token) if token else ops_auth()
        return self.client.get(f"/ops/ledger/daily-summary{query}", headers=headers)

    def summary(self, day: date, book: str | None = None) -> dict[str, Any]:
        """GET the summary of `day` (200) and check it is consistent in itself."""
        query = f"?business_date={day.isoformat()}" + (f"&book={book}" if book else "")
        response = self.summary_response(query)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        assert body["book"] == book and body["business_date"] == day.isoformat()
        accounts = body["accounts"]
        assert [a["code"] for a in accounts] == sorted(a["code"] for a in accounts)
        assert body["total_debit"] == sum(a["debit"] for a in accounts)
        assert body["total_credit"] == sum(a["credit"] for a in accounts)
        assert body["balanced"] is (body["total_debit"] == body["total_credit"])
        chart = self.system.system.chart
        for account in accounts:
            assert account["name"] == chart.by_code(account["code"]).name
            movement = account["debit"] - account["credit"]
            if chart.by_code(account["code"]).side == "credit":
                movement = -movement
            assert account["closing"] == account["opening"] + movement, account
        return body

    def journal_of(self, day: date) -> dict[str, tuple[int, int]]:
        """The day's debits and credits per account, summed from journal_lines directly."""
        rows = self.system.run(self.system.pg().fetch(
            "SELECT account, sum(debit)::int8 AS debit, sum(credit)::int8 AS credit "
            "FROM journal_lines WHERE business_date = $1 GROUP BY account", day))
        return {r["account"]: (int(r["debit"]), int(r["credit"])) for r in rows}

    def movements_match_journal(self) -> bool:
        """gl_daily_movements (kept by each commit) is the journal summed per shard, date,
        book and account, row for row."""
        differ = self.system.run(self.system.pg().fetchval(
            "SELECT count(*) FROM (SELECT shard_id, business_date, book, account, "
            "sum(debit)::int8 AS debit, sum(credit)::int8 AS credit FROM journal_lines "
            "GROUP BY 1, 2, 3, 4) AS j FULL JOIN gl_daily_movements AS m "
            "USING (shard_id, business_date, book, account) "
            "WHERE m.debit IS DISTINCT FROM j.debit OR m.credit IS DISTINCT FROM j.credit"))
        return differ == 0

    def execute(self, sql: str, *args: Any) -> str:
        result: str = self.system.run(self.system.pg().execute(sql, *args))
        return result


def by_code(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["code"]: a for a in body["accounts"]}


def forget_summary(ops: Ops, day: date) -> None:
    """What a crash between advancing the date and storing the summary leaves behind (or
    less: the rows of some shards may have committed; here none did)."""
    assert ops.execute("DELETE FROM gl_daily_summary WHERE business_date = $1", day) != (
        "DELETE 0")
    assert ops.execute(
        "UPDATE eod_runs SET report = report - 'gl_summary' WHERE business_date = $1", day
    ) == "UPDATE 1"


def without_step_time(report: dict[str, Any]) -> dict[str, Any]:
    steps = {k: v for k, v in report["steps"].items() if k != "gl_summary_s"}
    return {**report, "steps": steps}


# ---- several days, checked against the journal and the trial balance ---------------------


def _partner_activity(client: PartnerClient, day_index: int, loans: list[dict[str, Any]]) -> None:
    """Bookings on days 0, 1 and 3; repayments on days 1 and 3; nothing else on days 2, 4:
    on those, cash and principal do not move (accruals only)."""
    if day_index in (0, 1, 3):
        loans.append(new_loan(client, amount=500_000 + 100_000 * day_index))
    if day_index == 0:
        loans.append(new_loan(client, amount=800_000, product="CASH_EP_12", term=6))
    if day_index in (1, 3):
        response = repay(client, loans[0]["loan_id"], 30_000 + day_index,
                         "prepay_reduce_installment")
        assert response.status_code == 201, response.text


def test_days_of_summaries_add_up_to_the_trial_balance(new_system: RunningSystem) -> None:
    ops = Ops(new_system)
    client = new_system.client()
    assert ops.business_date() == D0
    loans: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    reports: list[dict[str, Any]] = []
    cumulative: dict[str, list[int]] = {}
    for day_index in range(5):
        day = D0 + timedelta(days=day_index)
        _partner_activity(client, day_index, loans)
        report = ops.eod_ok()
        assert report["business_date"] == day.isoformat()
        balance = trial_balance(ops.client, "?book=own")  # nothing was posted since the run
        body = ops.summary(day, "own")
        accounts = by_code(body)
        # the day's movement is the journal's
        assert {c: (a["debit"], a["credit"]) for c, a in accounts.items()
                if a["debit"] or a["credit"]} == ops.journal_of(day)
        assert body["balanced"] and body["total_debit"] > 0
        assert ops.movements_match_journal()
        # closing = the trial balance at the end of the day; sums over days = its totals
        assert {c: a["closing"] for c, a in accounts.items()} == {
            a["code"]: a["balance"] for a in balance["accounts"]}
        for code, account in accounts.items():
            total = cumulative.setdefault(code, [0, 0])
            total[0] += account["debit"]
            total[1] += account["credit"]
        assert {c: tuple(t) for c, t in cumulative.items()} == {
            a["code"]: (a["debit"], a["credit"]) for a in balance["accounts"]}
        # opening = the previous day's closing, for every account, moved today or not
        if summaries:
            previous = by_code(summaries[-1])
            assert set(previous) <= set(accounts)
            for code, account in accounts.items():
                opening = previous[code]["closing"] if code in previous else 0
                assert account["opening"] == opening, (day, code)
        else:
            assert all(a["opening"] == 0 for a in accounts.values()), "the first day"
        # the report: per-book totals of the summary, and the step's time
        assert report["gl_summary"] == {"own": {
            "total_debit": body["total_debit"], "total_credit": body["total_credit"],
            "balanced": True}}
        assert report["steps"]["gl_summary_s"] >= 0
        # one book only: all books summed is the same summary
        assert {**ops.summary(day), "book": "own"} == body
        summaries.append(body)
        reports.append(report)
    # Days 2 and 4 had no booking or repayment: cash and principal did not move, and are
    # still listed, with opening = closing.
    for quiet in (2, 4):
        cash = by_code(summaries[quiet])["1001"]
        assert (cash["debit"], cash["credit"]) == (0, 0)
        assert cash["opening"] == cash["closing"] != 0
    assert by_code(summaries[1])["1001"]["debit"] > 0  # a repayment day: cash moved

    # A closed date asked again: the same report, the same summary.
    assert ops.eod_ok(D0 + timedelta(days=2)) == reports[2]
    assert ops.summary(D0 + timedelta(days=2), "own") == summaries[2]

    # A crash lost day 3's summary: asking for the date rebuilds it, identical; the other
    # figures of its report are left as they were.
    day3 = D0 + timedelta(days=3)
    forget_summary(ops, day3)
    assert ops.summary_response(f"?business_date={day3}").status_code == 404
    rebuilt = ops.eod_ok(day3)
    assert without_step_time(rebuilt) == without_step_time(reports[3])
    assert ops.eod_ok(day3) == rebuilt, "the rebuilt report is the one stored"
    assert ops.summary(day3, "own") == summaries[3]

    # Without the summary of the day before, the opening is summed from the whole journal.
    day2 = D0 + timedelta(days=2)
    ops.execute("DELETE FROM gl_daily_summary WHERE business_date = $1", day2)
    forget_summary(ops, day3)
    assert ops.eod_ok(day3)["gl_summary"] == reports[3]["gl_summary"]
    assert ops.summary(day3, "own") == summaries[3]
    ops.execute("UPDATE eod_runs SET report = report - 'gl_summary' WHERE business_date = $1",
                day2)
    assert ops.eod_ok(day2)["gl_summary"] == reports[2]["gl_summary"]
    assert ops.summary(day2, "own") == summaries[2]

    # A run that died after advancing day 4, before its summary: the next run (day 5,
    # with a repayment) builds day 4's first, and day 5 opens on its closing.
    day4, day5 = D0 + timedelta(days=4), D0 + timedelta(days=5)
    forget_summary(ops, day4)
    response = repay(client, loans[1]["loan_id"], 12_345, "prepay_reduce_installment")
    assert response.status_code == 201, response.text
    assert ops.eod_ok()["business_date"] == day5.isoformat()
    assert ops.summary(day4, "own") == summaries[4]
    assert ops.eod_ok(day4)["gl_summary"] == reports[4]["gl_summary"]
    fifth = by_code(ops.summary(day5, "own"))
    assert {c: a["opening"] for c, a in fifth.items()} == {
        c: a["closing"] for c, a in by_code(summaries[4]).items()}
    assert fifth["1001"]["debit"] == 12_345
    assert {c: a["closing"] for c, a in fifth.items()} == {
        a["code"]: a["balance"] for a in trial_balance(ops.client, "?book=own")["accounts"]}
    client.close()


# ---- a summary that disagrees with the ledger -----------------------------------------------


def test_a_summary_that_disagrees_with_the_ledger_is_refused(gl_system: RunningSystem) -> None:
    ops = Ops(gl_system)
    client = gl_system.client()
    new_loan(client, amount=300_000)
    day = ops.business_date()
    ops.eod_ok()
    next_day = day + timedelta(days=1)
    # Break the chain: one shard's closing of `day` is off by 1 fen (as a summary built
    # while a line of the day was still committing would be).
    shard = ops.system.run(ops.system.pg().fetchval(
        "SELECT min(shard_id) FROM gl_daily_summary WHERE business_date = $1 "
        "AND account_code = '1001'", day))
    ops.execute("UPDATE gl_daily_summary SET debit = debit + 1 WHERE business_date = $1 "
                "AND account_code = '1001' AND shard_id = $2", day, shard)
    refused = ops.eod()
    assert refused.status_code == 500, refused.text
    error = refused.json()["error"]
    assert error["code"] == "gl_summary_mismatch"
    assert f"shard {shard}" in error["message"] and "own/1001" in error["message"]
    assert ops.business_date() == next_day + timedelta(days=1), "the date moved on"
    assert ops.summary_response(f"?business_date={next_day}").status_code == 404
    # The ledger was right; the summary of `day` was not. Once it is, the date builds.
    ops.execute("UPDATE gl_daily_summary SET debit = debit - 1 WHERE business_date = $1 "
                "AND account_code = '1001' AND shard_id = $2", day, shard)
    report = ops.eod_ok(next_day)
    assert report["gl_summary"]["own"]["balanced"] is True
    closing = {a["code"]: a["closing"] for a in ops.summary(next_day, "own")["accounts"]}
    assert closing == {
        a["code"]: a["balance"] for a in trial_balance(ops.client, "?book=own")["accounts"]}
    client.close()


# ---- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("query, field", [
    ("", "business_date"),
    ("?business_date=", "business_date"),
    ("?business_date=20261129", "business_date"),
    ("?business_date=2026-13-01", "business_date"),
    ("?business_date=2027-02-29", "business_date"),
    ("?business_date=2026-11-29T00:00", "business_date"),
])
def test_bad_input_is_400(gl_system: RunningSystem, query: str, field: str) -> None:
    ops = Ops(gl_system)
    response = ops.summary_response(query)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_request", field)


def test_an_unknown_book_is_404(gl_system: RunningSystem) -> None:
    response = Ops(gl_system).summary_response("?business_date=2026-11-29&book=no-such-funder")
    assert_error(response, 404, "not_found", "book")


def test_a_date_not_closed_is_404_and_a_token_is_required(gl_system: RunningSystem) -> None:
    ops = Ops(gl_system)
    today = ops.business_date()
    for day in (today, today + timedelta(days=30), date(2020, 1, 1)):
        response = ops.summary_response(f"?business_date={day}&book=own")
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "not_found"
    anonymous = ops.client.get(f"/ops/ledger/daily-summary?business_date={today}")
    assert anonymous.status_code == 401
    paths = ops.client.get("/openapi.json").json()["paths"]
    operation = paths["/ops/ledger/daily-summary"]["get"]
    assert {p["name"]: p["required"] for p in operation["parameters"]} == {
        "business_date": True, "book": False}
