"""Shared helpers of the servicing tests: loans booked like the shard books them, and a small
journal that accumulates postings the way storage does (one entry per posting)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Any

import msgspec

from lending import ledger, reconcile
from lending.daily import ServicingPolicy
from lending.decision import RiskPolicy
from lending.loans import ALLOCATION_OLDEST_FIRST, Loan, disbursement_posting, new_loan
from lending.products import load_catalog
from lending.schedules import build_schedule
from lending.shard_state import ApplyContext

# Due day 28 (the disbursement day capped at 28): period 1 is due 2026-12-28, 29 days later.
DISBURSED = date(2026, 11, 29)


def shard_context(day: date) -> ApplyContext:
    """What a shard applies commands with on `day`: the repository's product catalogue, the
    default risk and servicing policies."""
    root = Path(__file__).resolve().parents[2]
    return ApplyContext(day, load_catalog(root / "config" / "products", 2400),
                        RiskPolicy(2400, 7), ServicingPolicy())


def make_loan(
    method: str = "equal_installment",
    principal: int = 1_000_000,
    rate: int = 1800,
    term: int = 12,
    *,
    allocation: str = ALLOCATION_OLDEST_FIRST,
    monthly_fee_bps: int = 0,
    prepayment_fee_bps: int = 0,
    penalty_rate_bps: int | None = None,
    penalty_multiplier_pct: int = 150,
    grace_days: int = 3,
    compound_penalty: bool = False,
    disbursed_on: date = DISBURSED,
) -> Loan:
    schedule = build_schedule(method, principal, rate, term, disbursed_on, monthly_fee_bps)
    return new_loan(
        loan_id="LN-0000-0000000001", application_id="AP-0000-0000000001",
        customer_id="CU-0000-0000000001", partner_id="demo", product_code="P",
        product_version=1, book=ledger.OWN_BOOK, annual_rate_bps=rate, apr_bps=rate,
        repayment_method=method, allocation=allocation, prepayment_fee_bps=prepayment_fee_bps,
        disbursed_on=disbursed_on, payee="borrower", term=term, schedule=schedule,
        monthly_fee_bps=monthly_fee_bps, penalty_rate_bps=penalty_rate_bps,
        penalty_multiplier_pct=penalty_multiplier_pct, grace_days=grace_days,
        compound_penalty=compound_penalty,
    )


def snapshot(loan: Loan) -> Any:
    """Everything a loan holds, as plain data (to prove nothing was mutated)."""
    return msgspec.to_builtins(loan)


def posting_sides(posting: ledger.Posting) -> tuple[int, int]:
    return (sum(line.debit for line in posting.lines),
            sum(line.credit for line in posting.lines))


def net_of(postings: Iterable[ledger.Posting]) -> dict[str, int]:
    """role → debit − credit over the postings."""
    net: dict[str, int] = {}
    for posting in postings:
        for line in posting.lines:
            net[line.account] = net.get(line.account, 0) + line.debit - line.credit
    return net


class Journal:
    """The journal entries of one loan, booked from its disbursement on."""

    def __init__(self, loan: Loan) -> None:
        self.entries: list[ledger.JournalEntry] = []
        self.add(disbursement_posting(loan), loan.disbursed_on, loan)

    def add(self, posting: ledger.Posting, day: date, loan: Loan) -> None:
        entry_id = f"JE-{len(self.entries):06d}"
        self.entries.append(
            ledger.make_entry(entry_id, day, loan.book, loan.loan_id, "test", posting)
        )

    def add_all(self, postings: Iterable[ledger.Posting], day: date, loan: Loan) -> None:
        for posting in postings:
            self.add(posting, day, loan)

    def net(self) -> dict[str, int]:
        return ledger.net_debits(self.entries)

    def differences(self, loan: Loan) -> list[reconcile.Difference]:
        return reconcile.differences(loan, self.net())

    def trial_balance_ok(self) -> bool:
        """Per book, total debits == total credits."""
        books: dict[str, list[int]] = {}
        for (book, _role), (debit, credit) in ledger.balance_deltas(self.entries).items():
            totals = books.setdefault(book, [0, 0])
            totals[0] += debit
            totals[1] += credit
        return all(debit == credit for debit, credit in books.values())
