"""Golden servicing figures, worked by hand. Every expected number is a literal; each test's
docstring shows the computation that gives it (r = annual bps / 120,000 a month, daily rate
= annual / 360, half-up to the fen). These docstrings are the citation, except for the
equal-installment payment: it is the standard annuity payment, which any spreadsheet gives
as PMT(1.5%, 12, -1,000,000) = 91,679.99 → 91,680.

All loans are disbursed on 2026-11-29: due day 28, period k due on the 28th k months later.
"""

from __future__ import annotations

from datetime import date, timedelta

from loan_factory import DISBURSED, Journal, make_loan

from lending import ledger
from lending.daily import ServicingPolicy, close_day
from lending.loans import (
    KIND_PAYOFF,
    KIND_REDUCE_INSTALLMENT,
    KIND_REGULAR,
    KIND_SHORTEN_TERM,
    LOAN_PAID_OFF,
    Loan,
    apply_repayment,
    payoff_quote,
)
from lending.schedules import build_schedule

POLICY = ServicingPolicy()


def rows(loan: Loan) -> list[tuple[int, int, int]]:
    return [(i.principal, i.interest, i.fee) for i in loan.installments]


def close_through(loan: Loan, journal: Journal, last: date) -> Loan:
    day = loan.last_closed_on + timedelta(days=1) if loan.last_closed_on else loan.disbursed_on
    while day <= last:
        result = close_day(loan, day, POLICY)
        journal.add_all(result.postings, day, result.loan)
        loan = result.loan
        day += timedelta(days=1)
    return loan


# ---------------------------------------------------------------------------------------
# Schedules


def test_equal_installment_1_000_000_at_18_percent_over_12_months() -> None:
    """等额本息. r = 1800 / 120,000 = 0.015; 1.015^12 = 1.195618…;
    T = round(1,000,000 × 0.015 / (1 − 1.015^−12)) = round(15,000 / 0.163613…)
      = round(91,679.99) = 91,680.
    k  B_k        interest = round(B_k × 0.015)   principal = T − interest
    1  1,000,000  15,000                          76,680   (API.md example)
    2    923,320  13,849.80 → 13,850              77,830
    3    845,490  12,682.35 → 12,682              78,998
    4    766,492  11,497.38 → 11,497              80,183
    5    686,309  10,294.64 → 10,295              81,385
    6    604,924   9,073.86 →  9,074              82,606
    7    522,318   7,834.77 →  7,835              83,845
    8    438,473   6,577.10 →  6,577              85,103
    9    353,370   5,300.55 →  5,301              86,379
    10   266,991   4,004.87 →  4,005              87,675
    11   179,316   2,689.74 →  2,690              88,990
    12    90,326   1,354.89 →  1,355              last: B_12 = 90,326 (total 91,681)
    Total interest 100,161; principals sum to 1,000,000."""
    lines = build_schedule("equal_installment", 1_000_000, 1800, 12, DISBURSED)
    assert [(x.principal, x.interest) for x in lines] == [
        (76_680, 15_000), (77_830, 13_850), (78_998, 12_682), (80_183, 11_497),
        (81_385, 10_295), (82_606, 9_074), (83_845, 7_835), (85_103, 6_577),
        (86_379, 5_301), (87_675, 4_005), (88_990, 2_690), (90_326, 1_355)]
    assert [x.total for x in lines] == [91_680] * 11 + [91_681]
    assert sum(x.interest for x in lines) == 100_161
    assert lines[0].due_date == date(2026, 12, 28) and lines[-1].due_date == date(2027, 11, 28)


def test_equal_principal_1_000_000_at_18_percent_over_12_months() -> None:
    """等额本金. principal_k = round(1,000,000 / 12) = round(83,333.33) = 83,333; last =
    1,000,000 − 11 × 83,333 = 83,337. interest_k = round(B_k × 0.015):
    B_1 1,000,000 → 15,000; B_2 916,667 → 13,750.005 → 13,750; B_3 833,334 → 12,500.01
    → 12,500; … each period 1,250 less; B_12 83,337 → 1,250.055 → 1,250.
    Totals: 98,333 first, 97,083 second, 84,587 last; interest 97,500."""
    lines = build_schedule("equal_principal", 1_000_000, 1800, 12, DISBURSED)
    assert [x.principal for x in lines] == [83_333] * 11 + [83_337]
    assert [x.interest for x in lines] == [15_000 - 1_250 * k for k in range(12)]
    assert (lines[0].total, lines[1].total, lines[-1].total) == (98_333, 97_083, 84_587)
    assert sum(x.interest for x in lines) == 97_500


def test_interest_first_500_000_at_24_percent_over_6_months() -> None:
    """先息后本. r = 2400 / 120,000 = 0.02: interest round(500,000 × 0.02) = 10,000 every
    month; the principal 500,000 in period 6 (2027-05-28): 510,000."""
    lines = build_schedule("interest_first", 500_000, 2400, 6, DISBURSED)
    assert [(x.principal, x.interest) for x in lines] == [(0, 10_000)] * 5 + [
        (500_000, 10_000)]
    assert lines[-1].due_date == date(2027, 5, 28)


def test_bullet_300_000_at_18_percent_for_3_months() -> None:
    """到期一次还本付息. One installment at month 3 (2027-02-28): principal 300,000,
    interest round(300,000 × 0.015 × 3) = 13,500; total 313,500."""
    lines = build_schedule("bullet", 300_000, 1800, 3, DISBURSED)
    assert [(x.period, x.due_date, x.principal, x.interest, x.total) for x in lines] == [
        (1, date(2027, 2, 28), 300_000, 13_500, 313_500)]


def test_installment_fee_600_000_at_60_bps_a_month_over_6_months() -> None:
    """等本等费. principal round(600,000 / 6) = 100,000 each; fee round(600,000 × 60 /
    10,000) = 3,600 every period (on the original amount); no interest. Total fees 21,600."""
    lines = build_schedule("installment_fee", 600_000, 0, 6, DISBURSED, monthly_fee_bps=60)
    assert [(x.principal, x.interest, x.fee) for x in lines] == [(100_000, 0, 3_600)] * 6


# ---------------------------------------------------------------------------------------
# Payoff quotes


def test_payoff_quote_mid_period_1() -> None:
    """Paid off on 2026-12-10, 11 days after disbursement: interest to date
    round(1,000,000 × 0.18 / 360 × 11) = round(5,500) = 5,500; no fee, no penalty:
    total 1,005,500. On 2026-12-28 (period 1 due that day, with a 100 bps prepayment
    fee): interest 15,000 (period 1 due) + 0 (new period, 0 days); prepayment fee on the
    principal not yet due 1,000,000 − 76,680 = 923,320: round(9,233.2) = 9,233; total
    1,000,000 + 15,000 + 9,233 = 1,024,233."""
    quote = payoff_quote(make_loan(), date(2026, 12, 10))
    assert (quote.principal, quote.interest, quote.penalty, quote.fee,
            quote.prepayment_fee, quote.total) == (1_000_000, 5_500, 0, 0, 0, 1_005_500)
    quote = payoff_quote(make_loan(prepayment_fee_bps=100), date(2026, 12, 28))
    assert (quote.interest, quote.prepayment_fee, quote.total) == (15_000, 9_233, 1_024_233)


def test_payoff_quote_mid_period_3_after_two_installments() -> None:
    """Periods 1 and 2 paid on their due dates (91,680 each). On 2027-02-10, 13 days into
    period 3 (from 2027-01-28): principal 1,000,000 − 76,680 − 77,830 = 845,490; interest to
    date round(845,490 × 0.18 / 360 × 13) = round(5,495.685) = 5,496; total 850,986
    (period 3's scheduled 12,682 is not owed)."""
    loan = make_loan()
    loan = apply_repayment(loan, KIND_REGULAR, 91_680, date(2026, 12, 28)).loan
    loan = apply_repayment(loan, KIND_REGULAR, 91_680, date(2027, 1, 28)).loan
    quote = payoff_quote(loan, date(2027, 2, 10))
    assert (quote.principal, quote.interest, quote.total) == (845_490, 5_496, 850_986)
    result = apply_repayment(loan, KIND_PAYOFF, 850_986, date(2027, 2, 10))
    assert result.loan.status == LOAN_PAID_OFF
    assert rows(result.loan)[2] == (78_998, 5_496, 0)
    assert [i.interest for i in result.loan.installments[3:]] == [0] * 9


def test_penalty_day_and_payoff_of_an_overdue_loan() -> None:
    """Period 1 (76,680 + 15,000, due 2026-12-28) unpaid; end of day run through 2027-01-04.
    Penalty, grace 3: charged on 2027-01-01 .. 01-04 (days 4–7 overdue), each
    round(76,680 × 1800 × 1.5 / 360 / 10,000) = round(57.51) = 58: 232.
    Period 2 (interest 13,850 over the 31 days from 2026-12-28) has accrued
    round(13,850 × 8 / 31) = round(3,574.19) = 3,574 by the end of 2027-01-04.
    Payoff on 2027-01-05: interest = 15,000 (period 1) + round(923,320 × 0.18 / 360 × 8)
    = 15,000 + round(3,693.28) = 18,693; total 1,000,000 + 18,693 + 232 = 1,018,925.
    Posting: Dr cash 1,018,925 / Cr principal overdue 76,680, principal normal 923,320,
    interest receivable 15,000 + 3,574 = 18,574, interest income 3,693 − 3,574 = 119 (not
    yet accrued), penalty receivable 232."""
    loan = make_loan()
    journal = Journal(loan)
    loan = close_through(loan, journal, date(2027, 1, 4))
    assert loan.installments[0].penalty == 232
    assert loan.installments[1].interest_recognized == 3_574
    as_of = date(2027, 1, 5)
    quote = payoff_quote(loan, as_of)
    assert (quote.principal, quote.interest, quote.penalty, quote.total) == (
        1_000_000, 18_693, 232, 1_018_925)
    result = apply_repayment(loan, KIND_PAYOFF, 1_018_925, as_of)
    [posting] = result.postings
    assert sorted((x.account, x.debit, x.credit) for x in posting.lines) == sorted([
        (ledger.CASH, 1_018_925, 0),
        (ledger.PRINCIPAL_OVERDUE, 0, 76_680),
        (ledger.PRINCIPAL_NORMAL, 0, 923_320),
        (ledger.INTEREST_RECEIVABLE, 0, 18_574),
        (ledger.INTEREST_INCOME, 0, 119),
        (ledger.PENALTY_RECEIVABLE, 0, 232),
    ])
    journal.add_all(result.postings, as_of, loan)
    assert journal.differences(result.loan) == []


def test_penalty_day_on_an_installment_fee_loan() -> None:
    """INST_FEE_12-like contract: no interest, penalty base 1300 bps × 1.5. 600,000 over 6
    months: period 1 principal 100,000 unpaid; day 4 overdue (2027-01-01):
    round(100,000 × 1300 × 150 / 360,000,000) = round(54.17) = 54. The fee 3,600 was
    charged on the due date."""
    loan = make_loan("installment_fee", 600_000, 0, 6, monthly_fee_bps=60,
                     penalty_rate_bps=1300)
    journal = Journal(loan)
    loan = close_through(loan, journal, date(2026, 12, 31))
    assert (loan.installments[0].penalty, loan.installments[0].fee_recognized) == (0, 3_600)
    loan = close_through(loan, journal, date(2027, 1, 1))
    assert loan.installments[0].penalty == 54


# ---------------------------------------------------------------------------------------
# Partial prepayments


def test_prepay_reduce_installment_rebuilds_the_schedule() -> None:
    """300,000 paid on 2026-12-10 with a 100 bps prepayment fee.
    Interest to date: 11 days, round(1,000,000 × 0.18 / 360 × 11) = 5,500.
    Rest R = 300,000 − 5,500 = 294,500 = X + 1 % X: fee = round(294,500 × 100 / 10,100)
    = round(2,915.84) = 2,916, principal prepaid X = 291,584. Balance B′ = 708,416.
    New installment over the same 12 dates: T′ = round(708,416 × 0.015 / (1 − 1.015^−12))
    = round(64,947.57) = 64,948.
    Period 1 (the current one): principal = 291,584 prepaid + (T′ − round(708,416 × 0.015))
    = 291,584 + (64,948 − 10,626) = 345,906; interest = 5,500 (to date, paid now)
    + round(708,416 × 0.18 / 360 × 18 days left) = 5,500 + round(6,375.74) = 11,876.
    Periods 2–12 (B, interest = round(B × 0.015), principal = 64,948 − interest):
    654,094 9,811 55,137 | 598,957 8,984 55,964 | 542,993 8,145 56,803 |
    486,190 7,293 57,655 | 428,535 6,428 58,520 | 370,015 5,550 59,398 |
    310,617 4,659 60,289 | 250,328 3,755 61,193 | 189,135 2,837 62,111 |
    127,024 1,905 63,043 | last: 63,981 interest round(959.715) = 960 (total 64,941).
    Principals: 345,906 + 654,094 = 1,000,000."""
    loan = make_loan(prepayment_fee_bps=100)
    result = apply_repayment(loan, KIND_REDUCE_INSTALLMENT, 300_000, date(2026, 12, 10))
    assert (result.allocation.interest, result.allocation.principal,
            result.allocation.fee, result.prepayment_fee) == (5_500, 291_584, 2_916, 2_916)
    assert rows(result.loan) == [
        (345_906, 11_876, 0), (55_137, 9_811, 0), (55_964, 8_984, 0), (56_803, 8_145, 0),
        (57_655, 7_293, 0), (58_520, 6_428, 0), (59_398, 5_550, 0), (60_289, 4_659, 0),
        (61_193, 3_755, 0), (62_111, 2_837, 0), (63_043, 1_905, 0), (63_981, 960, 0)]
    first = result.loan.installments[0]
    assert (first.paid_principal, first.paid_interest) == (291_584, 5_500)
    assert result.loan.outstanding_principal() == 708_416
    assert result.loan.installment_in_force == 64_948


def test_prepay_shorten_term_rebuilds_the_schedule() -> None:
    """The same 300,000 on 2026-12-10 (interest 5,500, fee 2,916, principal 291,584,
    B′ = 708,416), keeping the installment 91,680:
    Period 1: principal 291,584 + (91,680 − round(708,416 × 0.015) = 91,680 − 10,626 =
    81,054) = 372,638; interest 5,500 + 6,376 = 11,876 (as with reduce_installment).
    Then B, interest = round(B × 0.015), principal = 91,680 − interest:
    627,362 9,410 82,270 | 545,092 8,176 83,504 | 461,588 6,924 84,756 |
    376,832 5,652 86,028 | 290,804 4,362 87,318 | 203,486 3,052 88,628 |
    114,858 1,723 89,957 | period 9 (2027-08-28): the 24,901 left, interest
    round(373.515) = 374, total 25,275. Periods 10–12 are gone: 9 installments."""
    loan = make_loan(prepayment_fee_bps=100)
    result = apply_repayment(loan, KIND_SHORTEN_TERM, 300_000, date(2026, 12, 10))
    assert rows(result.loan) == [
        (372_638, 11_876, 0), (82_270, 9_410, 0), (83_504, 8_176, 0), (84_756, 6_924, 0),
        (86_028, 5_652, 0), (87_318, 4_362, 0), (88_628, 3_052, 0), (89_957, 1_723, 0),
        (24_901, 374, 0)]
    assert result.loan.installments[-1].due_date == date(2027, 8, 28)
    assert [i.principal + i.interest for i in result.loan.installments[1:8]] == [91_680] * 7
    assert result.prepayment_fee == 2_916


def test_prepay_shorten_term_after_reduce_keeps_the_reduced_installment() -> None:
    """After the reduce_installment above (installment now 64,948, balance 708,416), pay
    period 1 on its due date (the rest of it: 345,906 − 291,584 = 54,322 principal +
    11,876 − 5,500 = 6,376 interest = 60,698). On 2027-01-28, the day period 2 falls due,
    shorten_term with 100,000: period 2 (55,137 + 9,811 = 64,948) is paid first; period 3
    starts today, so its interest to date is 0 (0 days). Rest 35,052: fee
    round(35,052 × 100 / 10,100) = round(347.05) = 347, principal prepaid 34,705.
    Balance ahead: 654,094 − 55,137 − 34,705 = 564,252, kept at 64,948 a period:
    period 3 (current): principal 34,705 + (64,948 − round(564,252 × 0.015) = 64,948 −
    8,464 = 56,484) = 91,189; interest 0 + round(564,252 × 0.18 / 360 × 31 days) =
    round(8,745.91) = 8,746.
    Then B, interest = round(B × 0.015), principal = 64,948 − interest:
    507,768 7,617 57,331 | 450,437 6,757 58,191 | 392,246 5,884 59,064 |
    333,182 4,998 59,950 | 273,232 4,098 60,850 | 212,382 3,186 61,762 |
    150,620 2,259 62,689 | 87,931 1,319 63,629 | last (period 12): 24,302, interest
    round(364.53) = 365. Still 12 periods (34,705 is less than the last period's 63,981),
    and the installment kept is the reduced 64,948, not the booked 91,680."""
    loan = make_loan(prepayment_fee_bps=100)
    loan = apply_repayment(loan, KIND_REDUCE_INSTALLMENT, 300_000, date(2026, 12, 10)).loan
    loan = apply_repayment(loan, KIND_REGULAR, 60_698, date(2026, 12, 28)).loan
    assert loan.installments[0].unpaid_total() == 0
    result = apply_repayment(loan, KIND_SHORTEN_TERM, 100_000, date(2027, 1, 28))
    assert (result.allocation.principal, result.allocation.interest, result.prepayment_fee) == (
        55_137 + 34_705, 9_811, 347)
    assert rows(result.loan)[2:] == [
        (91_189, 8_746, 0), (57_331, 7_617, 0), (58_191, 6_757, 0), (59_064, 5_884, 0),
        (59_950, 4_998, 0), (60_850, 4_098, 0), (61_762, 3_186, 0), (62_689, 2_259, 0),
        (63_629, 1_319, 0), (24_302, 365, 0)]
    assert result.loan.outstanding_principal() == 564_252


def test_installment_fee_reduce_then_shorten_keeps_the_reduced_fee() -> None:
    """等本等费 1,200,000 at 60 bps a month over 12 months: principal 100,000 and fee
    round(1,200,000 × 0.006) = 7,200 a period; no interest, so nothing accrues to date.
    2026-12-09, reduce_installment 600,000 (no prepayment fee): all principal, balance
    600,000 over the same 12 dates: principal round(600,000 / 12) = 50,000, fee on the new
    balance round(600,000 × 0.006) = 3,600 from period 2 on; period 1 keeps its fee 7,200
    and records the 600,000 prepaid: principal 650,000.
    2026-12-10, shorten_term 100,000: balance 500,000, kept at 50,000 a period → 10
    periods (period 1 + 9 more of 50,000, fee 3,600); periods 11 and 12 are gone. The fee
    of the later periods stays the reduced 3,600, not period 1's 7,200."""
    loan = make_loan("installment_fee", 1_200_000, 0, 12, monthly_fee_bps=60,
                     penalty_rate_bps=1300)
    assert rows(loan) == [(100_000, 0, 7_200)] * 12
    loan = apply_repayment(loan, KIND_REDUCE_INSTALLMENT, 600_000, date(2026, 12, 9)).loan
    assert rows(loan) == [(650_000, 0, 7_200)] + [(50_000, 0, 3_600)] * 11
    result = apply_repayment(loan, KIND_SHORTEN_TERM, 100_000, date(2026, 12, 10))
    assert rows(result.loan) == [(750_000, 0, 7_200)] + [(50_000, 0, 3_600)] * 9
    assert result.loan.installments[-1].due_date == date(2027, 9, 28)
