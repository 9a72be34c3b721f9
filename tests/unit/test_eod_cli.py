"""`lendcore eod`: its progress line from GET /ops/eod bodies, its summary of the report,
and the whole command against a stand-in operator API (tests/unit/fake_ops_api.py): the
default URL from LENDCORE_OPS_PORT, the question on a terminal, --yes, --json, and errors
that name the URL and the flag to change it."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator

import pytest
from fake_ops_api import BUSINESS_DATE, REPORT, TOKEN, FakeOpsApi, fake_ops_api

from cluster.eod_cli import EodOptions, main, progress_line, runs_a_date, summary


class Terminal(io.StringIO):
    """What the user types, on a stdin that is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def ops_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpsApi]:
    """The fake operator API; the command finds it through LENDCORE_OPS_PORT alone."""
    with fake_ops_api() as api:
        monkeypatch.setenv("LENDCORE_OPS_PORT", api.url.rsplit(":", 1)[1])
        monkeypatch.setenv("LENDCORE_OPS_TOKEN", TOKEN)
        yield api


def test_progress_line() -> None:
    assert progress_line({"business_date": "2026-11-29", "run": None}) == (
        "end of day 2026-11-29: starting")
    run = {"business_date": "2026-11-29", "shards_done": 1, "shards_total": 4,
           "loans_processed": 50, "loans_total": 200, "status": "running"}
    line = progress_line({"run": run})
    assert "[" + "#" * 8 + "-" * 22 + "]" in line and "50/200 loans" in line
    assert "1/4 shards" in line and line.endswith("running")
    line = progress_line({"run": {**run, "loans_total": None}})
    assert "50/? loans" in line and "25%" in line


def test_summary_is_a_few_lines_of_the_report() -> None:
    text = summary(REPORT)
    lines = text.splitlines()
    assert lines[0] == "end of day 2026-11-29 done: business date now 2026-11-30"
    assert len(lines) <= 10
    assert "203; interest accrued 123,456 fen, penalty 789 fen" in text
    assert "installments became overdue: 2, non-accrual started: 1" in text
    assert "C 193, M1 6, M2 3, M3 1" in text
    assert "10 cases opened" in text
    assert "17 SMS reminders, 4 withholdings of 366,720 fen" in text
    assert "own: debits = credits = 124,245 fen" in text
    assert "--json" in lines[-1]
    assert '"shards"' not in text and "sync_hosts_s" not in text


def test_summary_says_when_a_book_does_not_balance() -> None:
    report = {**REPORT, "gl_summary": {
        "own": {"total_debit": 10, "total_credit": 9, "balanced": False}}}
    assert "own: NOT BALANCED, debits 10 fen, credits 9 fen" in summary(report)


def test_summary_lists_the_settlement_files_when_there_are_some() -> None:
    assert "settlement files" not in summary({**REPORT, "settlements": {}})
    report = {**REPORT, "settlements": {
        "funder:bank_a": {"loans": 3, "net_cash": -700000, "sha256": "ab" * 32},
        "guarantor:demo": {"loans": 0, "net_cash": 0, "sha256": "cd" * 32}}}
    assert ("  settlement files    funder:bank_a 3 loans, net cash -700,000 fen; "
            "guarantor:demo 0 loans, net cash 0 fen") in summary(report).splitlines()


def test_only_a_run_of_the_current_date_is_asked_about() -> None:
    assert runs_a_date(None, BUSINESS_DATE)
    assert runs_a_date(BUSINESS_DATE, BUSINESS_DATE)
    assert not runs_a_date("2026-11-28", BUSINESS_DATE)  # closed: its stored report


def test_on_a_terminal_it_asks_and_yes_runs(
    ops_api: FakeOpsApi, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(EodOptions(), stdin=Terminal("y\n")) == 0
    captured = capsys.readouterr()
    assert f"Run end of day for business date {BUSINESS_DATE} on {ops_api.url}?" in captured.err
    assert ops_api.posts("/ops/eod") == [{}]
    assert captured.out == summary(REPORT) + "\n"


@pytest.mark.parametrize("answer", ["n\n", "\n", "", "whatever\n"])
def test_on_a_terminal_anything_but_yes_runs_nothing(
    ops_api: FakeOpsApi, capsys: pytest.CaptureFixture[str], answer: str
) -> None:
    assert main(EodOptions(), stdin=Terminal(answer)) == 1
    captured = capsys.readouterr()
    assert "not run" in captured.err and captured.out == ""
    assert ops_api.posts("/ops/eod") == []


def test_yes_skips_the_question(ops_api: FakeOpsApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(EodOptions(assume_yes=True), stdin=Terminal("")) == 0
    assert "Run end of day" not in capsys.readouterr().err
    assert ops_api.posts("/ops/eod") == [{}]


def test_a_script_is_not_asked(ops_api: FakeOpsApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(EodOptions(), stdin=io.StringIO("")) == 0  # stdin is no terminal
    assert "Run end of day" not in capsys.readouterr().err
    assert ops_api.posts("/ops/eod") == [{}]


def test_a_closed_date_is_not_asked_about(
    ops_api: FakeOpsApi, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(EodOptions(business_date="2026-11-28"), stdin=Terminal("")) == 0
    assert "Run end of day" not in capsys.readouterr().err
    assert ops_api.posts("/ops/eod") == [{"business_date": "2026-11-28"}]


def test_json_prints_the_whole_report(
    ops_api: FakeOpsApi, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(EodOptions(assume_yes=True, as_json=True)) == 0
    assert json.loads(capsys.readouterr().out) == REPORT


def test_flags_win_over_the_environment(
    ops_api: FakeOpsApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LENDCORE_OPS_PORT", str(_closed_port()))
    monkeypatch.setenv("LENDCORE_OPS_TOKEN", "not-the-token")
    assert main(EodOptions(ops_url=ops_api.url + "/", token=TOKEN, assume_yes=True)) == 0
    assert ops_api.posts("/ops/eod") == [{}]


def test_nothing_listening_names_the_url_and_the_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _closed_port()
    monkeypatch.setenv("LENDCORE_OPS_PORT", str(port))
    assert main(EodOptions(assume_yes=True)) == 1
    err = capsys.readouterr().err
    assert f"cannot connect to http://127.0.0.1:{port}" in err
    assert "--ops-url" in err and "LENDCORE_OPS_PORT" in err
    assert "Traceback" not in err


def test_a_refused_token_says_which_token_to_give(
    ops_api: FakeOpsApi, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LENDCORE_OPS_TOKEN", "wrong")
    assert main(EodOptions(assume_yes=True)) == 1
    err = capsys.readouterr().err
    assert "refused the token (HTTP 401)" in err and "--token" in err
    assert ops_api.posts("/ops/eod") == []


def test_a_url_that_is_not_http_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(EodOptions(ops_url="127.0.0.1:8081", assume_yes=True)) == 2
    assert "--ops-url must be an http:// or https:// URL" in capsys.readouterr().err


def test_a_broken_configuration_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LENDCORE_OPS_PORT", "eighty")
    assert main(EodOptions(assume_yes=True)) == 2
    err = capsys.readouterr().err
    assert err.startswith("lendcore eod: configuration error: LENDCORE_OPS_PORT='eighty'")


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
