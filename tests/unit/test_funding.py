"""Joint and assisted lending (lending/funding.py): every posting of a funded loan split into
one balanced posting per book, to the fen, whatever the amounts, ratios and history."""

from __future__ import annotations

from datetime import date, timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loan_factory import DISBURSED, make_loan

from lending import funding, ledger, reconcile
from lending.daily import ServicingPolicy, close_day
from lending.funding import (
    FULL_RATIO_BPS,
    Funding,
    FundingError,
    compensate,
    compensation_due,
    new_funding,
    split,
    split_by_ratio,
    split_decrease,
)
from lending.loans import (
    KIND_PAYOFF,
    KIND_REDUCE_INSTALLMENT,
    KIND_REGULAR,
    LOAN_PAID_OFF,
    Loan,
    RepaymentRefused,
    apply_repayment,
    disbursement_posting,
    payoff_quote,
    regular_payable,
)

POLICY = ServicingPolicy()


@st.composite
def ratios(draw: st.DrawFn) -> list[int]:
    """2 or 3 shares with positive ratios summing to 10,000 (the lead first)."""
    count = draw(st.integers(2, 3))
    cuts = sorted(draw(st.lists(st.integers(1, FULL_RATIO_BPS - 1), min_size=count - 1,
                                max_size=count - 1, unique=True)))
    bounds = [0, *cuts, FULL_RATIO_BPS]
    return [bounds[i + 1] - bounds[i] for i in range(count)]


@given(st.integers(0, 10**12), ratios())
def test_a_split_by_ratio_adds_up_and_gives_no_funder_more_than_its_ratio(
    amount: int, shares: list[int]
) -> None:
    parts = split_by_ratio(amount, shares)
    assert sum(parts) == amount
    assert all(part >= 0 for part in parts)
    for part, ratio in zip(parts[1:], shares[1:], strict=True):
        assert part * FULL_RATIO_BPS <= amount * ratio


@given(ratios(), st.lists(st.integers(0, 10**9), min_size=3, max_size=3), st.data())
def test_a_decrease_adds_up_never_overdraws_and_clears_at_zero(
    shares: list[int], holdings: list[int], data: st.DataObject
) -> None:
    holdings = holdings[: len(shares)]
    total = sum(holdings)
    amount = data.draw(st.integers(0, total))
    parts = split_decrease(amount, shares, holdings)
    assert sum(parts) == amount
    assert all(0 <= part <= held for part, held in zip(parts, holdings, strict=True))
    if amount == total:
        assert parts == holdings
    with pytest.raises(FundingError):
        split_decrease(total + 1, shares, holdings)


def test_the_issue_example_splits_30_70_with_the_residue_to_the_lead() -> None:
    joint = new_funding([("own", 3000), ("funder:bank_a", 7000)])
    loan = make_loan(principal=1_000_001)
    after, parts = split(joint, disbursement_posting(loan))
    by_book = {book: posting for book, posting in parts}
    assert by_book["funder:bank_a"].lines[0].debit == 700_000  # floor(1,000,001 × 0.7)
    assert by_book["own"].lines[0].debit == 300_001            # the residue fen
    assert after.shares[1].holding(ledger.PRINCIPAL_NORMAL) == 700_000


def test_funding_refuses_ratios_that_do_not_sum_to_the_whole() -> None:
    with pytest.raises(FundingError, match="sum to 10000"):
        new_funding([("own", 3000), ("funder:bank_a", 6999)])
    with pytest.raises(FundingError, match="twice"):
        new_funding([("own", 5000), ("own", 5000)])


# ---- whole histories -----------------------------------------------------------------


class Books:
    """A funded loan's journal the way the shard writes it (_Batch.post): every posting
    split over the books, plus the unsplit postings to compare against."""

    def __init__(self, loan: Loan) -> None:
        self.lines: list[tuple[str, ledger.Posting]] = []
        self.whole: dict[str, int] = {}
        self.loan = self.post(loan, [disbursement_posting(loan)])

    def post(self, loan: Loan, postings: tuple[ledger.Posting, ...] | list[ledger.Posting]
             ) -> Loan:
        assert loan.funding is not None
        held = loan.funding
        for posting in postings:
            held, parts = split(held, posting)
            for book, part in parts:
                assert sum(x.debit for x in part.lines) == sum(x.credit for x in part.lines)
                self.lines.append((book, part))
            for line in posting.lines:
                role = line.account
                if held.compensated_on is not None and role in funding.COMPENSATED_ROLES:
                    role = ledger.GUARANTEE_RECEIVABLE
                self.whole[role] = self.whole.get(role, 0) + line.debit - line.credit
        return msgspec.structs.replace(loan, funding=held)

    def compensate(self, loan: Loan, day: date) -> Loan:
        assert loan.funding is not None
        taken_over, parts, _ = compensate(loan.funding, day)
        self.lines.extend(parts)
        return msgspec.structs.replace(loan, funding=taken_over)

    def net(self, book: str | None = None) -> dict[str, int]:
        net: dict[str, int] = {}
        for line_book, posting in self.lines:
            if book is None or line_book == book:
                for line in posting.lines:
                    net[line.account] = net.get(line.account, 0) + line.debit - line.credit
        return net

    def check(self, loan: Loan) -> None:
        assert loan.funding is not None
        # The books together are the loan: line by line, and against its state.
        together = {role: amount for role, amount in self.net().items() if amount}
        whole = {role: amount for role, amount in self.whole.items() if amount}
        if loan.funding.compensated_on is None:
            assert together == whole
        assert reconcile.differences(loan, self.net()) == []
        for book in loan.funding.books():
            assert reconcile.differences(loan, self.net(book), book) == [], book
        for book in {book for book, _ in self.lines}:
            debit = sum(x.debit for b, p in self.lines if b == book for x in p.lines)
            credit = sum(x.credit for b, p in self.lines if b == book for x in p.lines)
            assert debit == credit, book


def _funded(loan: Loan, funded: Funding) -> Loan:
    return msgspec.structs.replace(loan, funding=funded)


actions = st.lists(
    st.tuples(st.sampled_from(["days", "regular", "prepay", "payoff"]),
              st.integers(1, 45), st.integers(1, 10**9)),
    min_size=1, max_size=14,
)


def _run(books: Books, loan: Loan, steps: list[tuple[str, int, int]]) -> Loan:
    day = DISBURSED
    for action, days, amount in steps:
        if loan.status == LOAN_PAID_OFF:
            break
        if action == "days":
            for _ in range(days):
                result = close_day(loan, day, POLICY)
                closed = books.post(result.loan, result.postings)
                assert closed.funding is not None
                if compensation_due(closed.funding, loan.dpd, closed.dpd):
                    closed = books.compensate(closed, day)
                loan = closed
                day += timedelta(days=1)
                books.check(loan)
            continue
        try:
            if action == "regular":
                payable = regular_payable(loan, day)
                if payable <= 0:
                    continue
                result_r = apply_repayment(loan, KIND_REGULAR, 1 + amount % payable, day)
            elif action == "prepay":
                result_r = apply_repayment(loan, KIND_REDUCE_INSTALLMENT, 1 + amount % 300_000,
                                           day)
            else:
                quote = payoff_quote(loan, day)
                result_r = apply_repayment(loan, KIND_PAYOFF, quote.total, day)
        except RepaymentRefused:
            continue
        loan = books.post(result_r.loan, result_r.postings)
        books.check(loan)
    return loan


@settings(max_examples=60, deadline=None)
@given(st.integers(100_000, 20_000_000), ratios(), st.integers(1000, 2400), actions)
def test_joint_loans_split_every_posting_exactly_through_any_history(
    principal: int, shares: list[int], rate: int, steps: list[tuple[str, int, int]]
) -> None:
    books_of = ["own", "funder:bank_a", "funder:bank_c"][: len(shares)]
    loan = _funded(make_loan(principal=principal, rate=rate),
                   new_funding(list(zip(books_of, shares, strict=True))))
    books = Books(loan)
    loan = _run(books, books.loan, steps)
    if loan.status == LOAN_PAID_OFF:
        assert loan.funding is not None
        for share in loan.funding.shares:  # nothing stranded in any book
            assert all(amount == 0 for amount in share.held[len(funding.FLOW_ROLES):])


@settings(max_examples=40, deadline=None)
@given(st.integers(100_000, 20_000_000), st.integers(1000, 1800), st.integers(1, 60),
       actions)
def test_assisted_loans_compensate_and_recover_in_the_guarantors_book(
    principal: int, rate: int, dpd: int, steps: list[tuple[str, int, int]]
) -> None:
    assisted = new_funding([("funder:bank_b", FULL_RATIO_BPS)], guarantor="demo",
                           compensation_dpd=dpd, fee_to_guarantor=True)
    loan = _funded(make_loan(principal=principal, rate=rate, monthly_fee_bps=20), assisted)
    books = Books(loan)
    loan = _run(books, books.loan, [("days", 45, 0), *steps, ("days", 45, 0), ("days", 45, 0)])
    assert loan.funding is not None
    if loan.funding.compensated_on is not None:
        bank = loan.funding.share_of("funder:bank_b")
        assert bank is not None
        assert all(amount == 0 for amount in bank.held[len(funding.FLOW_ROLES):])
        net = books.net("guarantor:demo")
        assert net.get(ledger.PRINCIPAL_NORMAL, 0) == net.get(ledger.PRINCIPAL_OVERDUE, 0) == 0


def test_an_assisted_loan_is_compensated_the_day_it_reaches_dpd_80() -> None:
    assisted = new_funding([("funder:bank_b", FULL_RATIO_BPS)], guarantor="demo",
                           compensation_dpd=80, fee_to_guarantor=True)
    loan = _funded(make_loan(principal=1_200_000, rate=1500, monthly_fee_bps=20), assisted)
    books = Books(loan)
    day = DISBURSED
    loan = books.loan
    while loan.funding is not None and loan.funding.compensated_on is None:
        result = close_day(loan, day, POLICY)
        closed = books.post(result.loan, result.postings)
        assert closed.funding is not None
        if compensation_due(closed.funding, loan.dpd, closed.dpd):
            closed = books.compensate(closed, day)
            assert closed.dpd == 80
        loan = closed
        day += timedelta(days=1)
        books.check(loan)
    bank = books.net("funder:bank_b")
    # The bank got its principal back in cash: it holds nothing of the loan any more.
    assert bank.get(ledger.PRINCIPAL_NORMAL, 0) == bank.get(ledger.PRINCIPAL_OVERDUE, 0) == 0
    assert bank.get(ledger.INTEREST_RECEIVABLE, 0) == 0
    guarantor = books.net("guarantor:demo")
    # It holds what the borrower owes today: principal, and what was recognised of interest,
    # penalty and (its own) guarantee fees; not the interest and fees of periods to come.
    owed = loan.outstanding_principal() + loan.outstanding_interest() + \
        loan.outstanding_penalty() + loan.outstanding_fee()
    assert 0 < owed < loan.unpaid_total()
    assert guarantor[ledger.GUARANTEE_RECEIVABLE] == owed
    # The borrower pays it all back: it goes to the guarantor, whose claim closes.
    quote = payoff_quote(loan, day)
    paid = apply_repayment(loan, KIND_PAYOFF, quote.total, day)
    loan = books.post(paid.loan, paid.postings)
    books.check(loan)
    assert books.net("guarantor:demo").get(ledger.GUARANTEE_RECEIVABLE, 0) == 0
    assert {book for book, _ in books.lines[-len(paid.postings):]} == {"guarantor:demo"}
