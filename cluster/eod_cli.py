"""`lendcore eod`: run end of day through the operator API and watch it.

Reads the current business date first (which also proves the URL and the token), asks for
confirmation when run on a terminal (`--yes` skips the question; scripts, whose stdin is not
a terminal, are never asked), then POSTs /ops/eod in a thread (the call returns when the run
is over) while polling GET /ops/eod for per-shard progress, drawn as a text bar on stderr.
Prints a short summary of the report on stdout, or with `--json` the whole report. Exit 0
when the run finished, 1 when the API refused or failed it or the user said no, 2 for a
configuration or usage error.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

from cluster.cli_common import (
    OPERATOR_API,
    CommandError,
    chosen_base_url,
    load_command_settings,
    operator_token,
    ops_base_url,
    request_failed,
)

POLL_S = 0.5
BAR_WIDTH = 30
RUN_TIMEOUT_S = 3600.0
READ_TIMEOUT_S = 10.0
YES_ANSWERS = frozenset({"y", "yes"})


@dataclass(frozen=True)
class EodOptions:
    """The command line of `lendcore eod`."""

    ops_url: str | None = None  # None: from the settings (LENDCORE_OPS_PORT, [gateway])
    token: str | None = None  # None: $LENDCORE_OPS_TOKEN, else the configured admin
    business_date: str | None = None  # None: the current business date
    config_file: Path | None = None
    assume_yes: bool = False  # --yes: no question on a terminal
    as_json: bool = False  # --json: the whole report instead of the summary


def main(options: EodOptions, stdin: TextIO | None = None) -> int:
    stdin = sys.stdin if stdin is None else stdin
    try:
        settings = load_command_settings("eod", options.config_file)
        ops_url = chosen_base_url("eod", options.ops_url, ops_base_url(settings), OPERATOR_API)
        token = operator_token("eod", options.token, settings)
        current = current_business_date(ops_url, token)
    except CommandError as error:
        print(error, file=sys.stderr)
        return error.exit_code
    if (runs_a_date(options.business_date, current) and not options.assume_yes
            and stdin.isatty() and not confirmed(stdin, current, ops_url)):
        print("lendcore eod: not run", file=sys.stderr)
        return 1
    start = time.monotonic()
    code = run(ops_url, token, options.business_date, as_json=options.as_json)
    print(f"({time.monotonic() - start:.1f} s)", file=sys.stderr)
    return code


def current_business_date(ops_url: str, token: str) -> str:
    """GET /ops/business-date: the date a run would close."""
    url = f"{ops_url}/ops/business-date"
    try:
        response = httpx.get(url, headers=_auth(token), timeout=READ_TIMEOUT_S)
    except httpx.HTTPError as error:
        raise CommandError(request_failed("eod", ops_url, OPERATOR_API, error)) from error
    if response.status_code in (401, 403):
        raise CommandError(
            f"lendcore eod: {url} refused the token (HTTP {response.status_code}): pass "
            f"--token or set LENDCORE_OPS_TOKEN to an admin operator's token")
    if response.status_code != 200:
        raise CommandError(f"lendcore eod: {url}: HTTP {response.status_code}: {response.text}")
    return str(response.json()["business_date"])


def runs_a_date(requested: str | None, current: str) -> bool:
    """Whether POST /ops/eod would close a date: the current one. A closed date only
    returns its stored report, and a future one is refused, so neither needs a question."""
    return requested is None or requested == current


def confirmed(stdin: TextIO, business_date: str, ops_url: str) -> bool:
    """Ask on stderr (stdout carries the result) and read one answer; end of input is no."""
    print(f"Run end of day for business date {business_date} on {ops_url}? Every open loan "
          f"is closed for that date and the business date moves to the next day. [y/N] ",
          end="", file=sys.stderr, flush=True)
    answer = stdin.readline()
    return answer.strip().lower() in YES_ANSWERS


def progress_line(status: dict[str, Any]) -> str:
    """One line of progress from a GET /ops/eod body."""
    run = status.get("run") or {}
    if not run:
        return f"end of day {status.get('business_date')}: starting"
    done, shards = run["shards_done"], run["shards_total"]
    processed, total = run["loans_processed"], run["loans_total"]
    fraction = processed / total if total else done / shards if shards else 0.0
    filled = round(fraction * BAR_WIDTH)
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    loans = f"{processed}/{total if total is not None else '?'} loans"
    return (f"end of day {run['business_date']} [{bar}] {fraction:4.0%} "
            f"{loans}, {done}/{shards} shards, {run['status']}")


def summary(report: dict[str, Any]) -> str:
    """The few lines a person reads after a run; `--json` prints everything."""
    transitions = report["transitions"]
    collections = report["collections"]
    withholdings = report["withholdings"]
    buckets = ", ".join(f"{bucket} {count}" for bucket, count in report["buckets"].items())
    books = "; ".join(
        _book_line(book, totals) for book, totals in report["gl_summary"].items())
    settled = "; ".join(  # settlement files of the funders' and guarantors' books
        f"{book} {file['loans']} loans, net cash {_fen(file['net_cash'])}"
        for book, file in report.get("settlements", {}).items())
    return "\n".join([
        f"end of day {report['business_date']} done: business date now "
        f"{report['next_business_date']}",
        f"  loans processed     {report['loans_processed']}; interest accrued "
        f"{_fen(report['accrued_interest'])}, penalty {_fen(report['accrued_penalty'])}",
        f"  transitions         installments became overdue: {transitions['became_overdue']}, "
        f"non-accrual started: {transitions['non_accrual_started']}, "
        f"written off: {transitions['written_off']}",
        f"  open loans          {buckets or 'none'} (by bucket)",
        f"  collections         {collections['cases_opened']} cases opened, "
        f"{collections['cases_closed']} closed, {collections['cases_escalated']} escalated; "
        f"promises {collections['promises_kept']} kept, {collections['promises_broken']} broken",
        f"  planned next day    {report['reminders']['planned']} SMS reminders, "
        f"{withholdings['planned']} withholdings of {_fen(withholdings['amount'])}",
        f"  day's journal       {books or 'no lines'}",
        *([f"  settlement files    {settled}"] if settled else []),
        "(--json prints the whole report)",
    ])


def run(ops_url: str, token: str, business_date: str | None = None, *,
        as_json: bool = False) -> int:
    """POST /ops/eod with a progress bar; the summary (or JSON) on stdout. 0 when done."""
    outcome: dict[str, Any] = {}

    def post() -> None:
        body = {"business_date": business_date} if business_date else {}
        try:
            with httpx.Client(base_url=ops_url, timeout=RUN_TIMEOUT_S) as client:
                outcome["response"] = client.post("/ops/eod", json=body, headers=_auth(token))
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=post, daemon=True)
    worker.start()
    _draw_progress(ops_url, token, worker)
    if "error" in outcome:
        print(request_failed("eod", ops_url, OPERATOR_API, outcome["error"]), file=sys.stderr)
        return 1
    response = outcome["response"]
    if response.status_code != 200:
        print(f"lendcore eod: HTTP {response.status_code}: {response.text}", file=sys.stderr)
        return 1
    report = response.json()
    print(json.dumps(report, indent=2) if as_json else summary(report), flush=True)
    return 0


def _draw_progress(ops_url: str, token: str, worker: threading.Thread) -> None:
    """Poll GET /ops/eod while the POST runs; one line per change (redrawn on a terminal)."""
    tty = sys.stderr.isatty()
    last = ""
    with httpx.Client(base_url=ops_url, timeout=READ_TIMEOUT_S) as client:
        while worker.is_alive():
            try:
                response = client.get("/ops/eod", headers=_auth(token))
            except httpx.HTTPError:
                # Only the bar misses a frame: the POST's own answer says how the run went.
                response = None
            if response is not None and response.status_code == 200:
                line = progress_line(response.json())
                if line != last:
                    print(("\r" if tty else "") + line, end="" if tty else "\n",
                          file=sys.stderr, flush=True)
                    last = line
            worker.join(POLL_S)
    if tty and last:
        print(file=sys.stderr)


def _book_line(book: str, totals: dict[str, Any]) -> str:
    debit, credit = _fen(totals["total_debit"]), _fen(totals["total_credit"])
    if totals["balanced"]:
        return f"{book}: debits = credits = {debit}"
    return f"{book}: NOT BALANCED, debits {debit}, credits {credit}"


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _fen(amount: int) -> str:
    return f"{amount:,} fen"
