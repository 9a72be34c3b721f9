"""A loan funded by several books (DOMAIN.md §7): joint lending (联合贷款) and assisted
lending (助贷) with a guarantor's compensation (代偿).

A self-funded loan posts every entry in one book and carries no `Funding`. A funded loan
carries one `Share` per book that holds part of it: the lender's own book and the funders'
(`funder:<id>`), and for a guaranteed loan the guarantor's (`guarantor:<partner>`). Every
posting of the loan is split into one posting per book, each balanced on its own, so that
every book's trial balance balances and the books add up to the whole loan line by line.

How an amount is split, to the fen (docs/domain-choices.md, "Joint lending"):
* A posting is split move by move (`ledger.Move`: one amount from a credit role to a debit
  role); each book gets the same part on both sides of a move, so each book balances.
* An amount that ADDS to a loan's balance (a disbursement, an accrual) is split by ratio:
  every funder but the lead gets floor(amount × ratio), the lead (`shares[0]`, the lender
  in joint lending) gets the remainder. So a funder never gets more than its ratio.
* An amount that TAKES from a balance (a repayment, a reclassification, a write-off) is
  split so that, afterwards, each funder holds floor(balance after × ratio) where it can
  (never more than it held, never more than the amount); the lead takes the rest. So the
  parts always add up to the amount, no book's balance ever goes negative, and when the
  loan's balance reaches 0 every book's does: the residue of the rounding never strands a
  fen in one book.
* Each share keeps what it holds (`Share.held`) of every per-loan balance, so a book's part
  of a loan reconciles on its own (`expected_in_book`).

Assisted lending: the funder holds the loan (ratio 100 %); the guarantee fee charged with
each installment is the guarantor's, so every fee move goes to the guarantor's share. When
the loan reaches the guarantor's DPD, `compensate` pays the funder what it holds (Dr cash,
Cr each receivable, in the funder's book) and gives the guarantor the claim (Dr guarantee
receivable, Cr cash, in the guarantor's book). From then on the guarantor's share holds the
whole loan, and its receivables are posted as the guarantee receivable (应收代偿款).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import msgspec

from lending import ledger
from lending.ledger import Move, Posting, PostingBuilder
from lending.products import GUARANTOR_IS_PARTNER, Product

OWN_FUNDER = "own"  # the lender itself, in a product's funders list
FULL_RATIO_BPS = 10_000

# Per-loan balances a share holds, in this order. The flow accounts (cash, and the merchant
# clearing of an entrusted disbursement) as the share's net debit (signed: kept so that a
# book's part of a loan reconciles on its own), every other role on its normal side (never
# negative).
FLOW_ROLES = (ledger.CASH, ledger.MERCHANT_CLEARING)
HELD_ROLES = (
    *FLOW_ROLES,
    ledger.PRINCIPAL_NORMAL,
    ledger.PRINCIPAL_OVERDUE,
    ledger.INTEREST_RECEIVABLE,
    ledger.PENALTY_RECEIVABLE,
    ledger.FEE_RECEIVABLE,
    ledger.OFF_BALANCE_INTEREST,
    ledger.OFF_BALANCE_INTEREST_CONTRA,
    ledger.WRITTEN_OFF,
    ledger.WRITTEN_OFF_CONTRA,
)
_SLOT = {role: slot for slot, role in enumerate(HELD_ROLES)}
_CASH_SLOT = _SLOT[ledger.CASH]
_FLOW = frozenset(FLOW_ROLES)
_BALANCES = HELD_ROLES[len(FLOW_ROLES):]
_DEBIT_NORMAL = frozenset(role for role in _BALANCES if ledger.ROLE_SIDES[role] == "debit")
_CREDIT_NORMAL = frozenset(role for role in _BALANCES if ledger.ROLE_SIDES[role] == "credit")
# What the guarantor compensates, and what its book then holds as the guarantee receivable.
COMPENSATED_ROLES = (
    ledger.PRINCIPAL_NORMAL,
    ledger.PRINCIPAL_OVERDUE,
    ledger.INTEREST_RECEIVABLE,
    ledger.PENALTY_RECEIVABLE,
    ledger.FEE_RECEIVABLE,
)
_MEMO_ROLES = tuple(role for role in HELD_ROLES if role.startswith(("off_", "written_")))
_FEE_ROLES = frozenset({ledger.FEE_RECEIVABLE, ledger.FEE_INCOME})
_NOTHING_HELD = (0,) * len(HELD_ROLES)


class FundingError(ValueError):
    """A split that would break the books (a posting without moves, a balance taken below
    zero): a defect in the caller, never a business refusal."""


class Share(msgspec.Struct, frozen=True, array_like=True, gc=False):
    book: str
    ratio_bps: int  # of 10,000; 0 for a book that holds the loan only through fees or history
    held: tuple[int, ...] = _NOTHING_HELD  # per HELD_ROLES

    def holding(self, role: str) -> int:
        return self.held[_SLOT[role]]


class Funding(msgspec.Struct, frozen=True, array_like=True, gc=False):
    shares: tuple[Share, ...]  # shares[0] is the lead: it takes every rounding residue
    fee_share: int = -1  # index of the share every fee move goes to (-1: split like the rest)
    guarantor_book: str = ""  # "" when nobody guarantees the loan
    compensation_dpd: int = 0  # the DPD at which the guarantor compensates (0: never)
    compensated_on: date | None = None

    def share_of(self, book: str) -> Share | None:
        for share in self.shares:
            if share.book == book:
                return share
        return None

    def books(self) -> tuple[str, ...]:
        return tuple(share.book for share in self.shares)


def funder_book(funder: str) -> str:
    """The book of a funder named in a product: the lender's own, or `funder:<id>`."""
    return ledger.OWN_BOOK if funder == OWN_FUNDER else f"funder:{funder}"


def guarantor_book(guarantor: str) -> str:
    return f"guarantor:{guarantor}"


def new_funding(
    parts: Sequence[tuple[str, int]], *, guarantor: str = "", compensation_dpd: int = 0,
    fee_to_guarantor: bool = False,
) -> Funding:
    """The funding of a new loan: (book, ratio_bps) pairs, the lead first, ratios summing to
    10,000; a guarantor's book joins with ratio 0 (it holds nothing until it compensates,
    but the guarantee fees when `fee_to_guarantor`)."""
    books = [book for book, _ in parts]
    if len(set(books)) != len(books):
        raise FundingError(f"a book appears twice among {books}")
    if sum(ratio for _, ratio in parts) != FULL_RATIO_BPS or any(r < 0 for _, r in parts):
        raise FundingError(f"ratios {[r for _, r in parts]} must be >= 0 and sum to 10000")
    shares = [Share(book, ratio) for book, ratio in parts]
    fee_share = -1
    if guarantor:
        book = guarantor_book(guarantor)
        if book not in books:
            shares.append(Share(book, 0))
        if fee_to_guarantor:
            fee_share = [share.book for share in shares].index(book)
        guarantor = book
    return Funding(tuple(shares), fee_share, guarantor, compensation_dpd)


# ---------------------------------------------------------------------------------------
# Splitting a posting


def split(funding: Funding, posting: Posting) -> tuple[Funding, list[tuple[str, Posting]]]:
    """The posting's part in each book (books with no part left out), and the funding
    with every share's holdings after it."""
    if not posting.moves:
        raise FundingError(f"{posting.kind}: a split posting needs its moves")
    held = [list(share.held) for share in funding.shares]
    remap = funding.compensated_on is not None
    builders: dict[int, PostingBuilder] = {}
    for move in posting.moves:
        for index, part in enumerate(_parts(funding, held, move)):
            if not part:
                continue
            _hold(held[index], move, part)
            debit, credit = move.debit, move.credit
            if remap:
                debit, credit = _as_guaranteed(debit), _as_guaranteed(credit)
            if debit != credit:  # a reclass inside the guarantee receivable moves nothing
                builder = builders.setdefault(index, PostingBuilder(posting.kind))
                builder.move(debit, credit, part)
    _check_held(posting.kind, held)
    shares = tuple(msgspec.structs.replace(share, held=tuple(held[index]))
                   for index, share in enumerate(funding.shares))
    parts = [(funding.shares[index].book, builder.build())
             for index, builder in sorted(builders.items()) if not builder.is_empty()]
    return msgspec.structs.replace(funding, shares=shares), parts


def _parts(funding: Funding, held: list[list[int]], move: Move) -> list[int]:
    amount = move.amount
    if funding.fee_share >= 0 and (move.debit in _FEE_ROLES or move.credit in _FEE_ROLES):
        parts = [0] * len(held)
        parts[funding.fee_share] = amount
        return parts
    if move.credit in _DEBIT_NORMAL:
        taken: str | None = move.credit
    elif move.debit in _CREDIT_NORMAL:
        taken = move.debit
    else:
        taken = None
    ratios = [share.ratio_bps for share in funding.shares]
    if taken is None:
        return split_by_ratio(amount, ratios)
    slot = _SLOT[taken]
    return split_decrease(amount, ratios, [h[slot] for h in held], taken)


def split_by_ratio(amount: int, ratios: Sequence[int]) -> list[int]:
    """floor(amount × ratio) to every share but the lead, the remainder to the lead."""
    parts = [amount * ratio // FULL_RATIO_BPS for ratio in ratios]
    parts[0] = amount - sum(parts[1:])
    return parts


def split_decrease(
    amount: int, ratios: Sequence[int], holdings: Sequence[int], role: str = "balance"
) -> list[int]:
    """An amount taken from a balance the shares hold: each funder keeps floor(balance
    after × ratio) where it can, the lead gives the rest; no part exceeds its holding."""
    total = sum(holdings)
    if amount > total:
        raise FundingError(f"taking {amount} from {role} of which the books hold {total}")
    after = total - amount
    parts = [0] * len(holdings)
    left = amount
    for index in range(1, len(holdings)):
        keep = after * ratios[index] // FULL_RATIO_BPS
        part = min(max(holdings[index] - keep, 0), left)
        parts[index] = part
        left -= part
    if left > holdings[0]:  # the lead holds too little: the funders give the difference
        excess = left - holdings[0]
        left = holdings[0]
        for index in range(1, len(holdings)):
            more = min(excess, holdings[index] - parts[index])
            parts[index] += more
            excess -= more
    parts[0] = left
    return parts


def _hold(held: list[int], move: Move, part: int) -> None:
    """A share's holdings after its part of a move (normal sides; flows as net debit)."""
    for role, sign in ((move.debit, 1), (move.credit, -1)):
        if role in _FLOW or role in _DEBIT_NORMAL:
            held[_SLOT[role]] += sign * part
        elif role in _CREDIT_NORMAL:
            held[_SLOT[role]] -= sign * part


def _check_held(kind: str, held: list[list[int]]) -> None:
    for holdings in held:
        for slot, amount in enumerate(holdings):
            if amount < 0 and HELD_ROLES[slot] not in _FLOW:
                raise FundingError(f"{kind}: a book's {HELD_ROLES[slot]} would be {amount}")


def _as_guaranteed(role: str) -> str:
    return ledger.GUARANTEE_RECEIVABLE if role in COMPENSATED_ROLES else role


# ---------------------------------------------------------------------------------------
# Compensation (代偿)


def compensation_due(funding: Funding, dpd_before: int, dpd_after: int) -> bool:
    """True the day a guaranteed, uncompensated loan reaches the guarantor's DPD."""
    return (bool(funding.guarantor_book) and funding.compensated_on is None
            and funding.compensation_dpd > 0
            and dpd_before < funding.compensation_dpd <= dpd_after)


def compensate(funding: Funding, day: date) -> tuple[Funding, list[tuple[str, Posting]], int]:
    """代偿: the guarantor pays every other book what it holds of the loan's receivables
    and takes the whole loan over. Returns the new funding, the postings per book, and the
    amount compensated."""
    if not funding.guarantor_book or funding.compensated_on is not None:
        raise FundingError("compensating a loan nobody guarantees, or twice")
    guarantor = funding.books().index(funding.guarantor_book)
    held = [list(share.held) for share in funding.shares]
    postings: list[tuple[str, Posting]] = []
    total = 0
    for index, share in enumerate(funding.shares):
        if index == guarantor:
            continue
        if any(held[index][_SLOT[role]] for role in _MEMO_ROLES):
            raise FundingError(f"{share.book} holds memo balances: compensate before "
                               "non-accrual and write-off")
        builder = PostingBuilder(ledger.GUARANTEE_COMPENSATION)
        for role in COMPENSATED_ROLES:
            amount = held[index][_SLOT[role]]
            builder.move(ledger.CASH, role, amount)
            held[index][_SLOT[role]] = 0
            held[guarantor][_SLOT[role]] += amount
            held[index][_CASH_SLOT] += amount
            held[guarantor][_CASH_SLOT] -= amount
            total += amount
        if not builder.is_empty():
            postings.append((share.book, builder.build()))
    builder = PostingBuilder(ledger.GUARANTEE_COMPENSATION)
    builder.move(ledger.GUARANTEE_RECEIVABLE, ledger.CASH, total)
    for role in COMPENSATED_ROLES:
        # What the guarantor already held (its guarantee fees) joins the same claim.
        own = funding.shares[guarantor].held[_SLOT[role]]
        builder.move(ledger.GUARANTEE_RECEIVABLE, role, own)
    if not builder.is_empty():
        postings.append((funding.guarantor_book, builder.build()))
    # The guarantor becomes the lead with the whole ratio; the others keep their history.
    order = [guarantor] + [i for i in range(len(funding.shares)) if i != guarantor]
    shares = tuple(
        Share(funding.shares[i].book, FULL_RATIO_BPS if i == guarantor else 0, tuple(held[i]))
        for i in order)
    taken_over = Funding(shares, -1, funding.guarantor_book, funding.compensation_dpd, day)
    return taken_over, postings, total


# ---------------------------------------------------------------------------------------
# Reconciliation


def expected_in_book(funding: Funding, book: str) -> dict[str, int]:
    """role → net debit the loan's lines in `book` must show: the share's holdings."""
    share = funding.share_of(book)
    expected = dict.fromkeys((*HELD_ROLES, ledger.GUARANTEE_RECEIVABLE), 0)
    if share is None:
        return expected
    for role, amount in zip(HELD_ROLES, share.held, strict=True):
        expected[role] = -amount if role in _CREDIT_NORMAL else amount
    if funding.compensated_on is not None:
        for role in COMPENSATED_ROLES:
            expected[ledger.GUARANTEE_RECEIVABLE] += expected[role]
            expected[role] = 0
    return expected


def held_totals(funding: Funding) -> dict[str, int]:
    """role → what all the shares hold together (normal side; flows as net debit)."""
    return {role: sum(share.held[slot] for share in funding.shares)
            for slot, role in enumerate(HELD_ROLES)}


# ---------------------------------------------------------------------------------------
# From the product


def funding_for(product: Product, partner_id: str) -> tuple[str, Funding | None]:
    """(the loan's book, its funding) under `product` when `partner_id` brings it: a
    self-funded product posts in the lender's own book and needs no Funding; a funded one
    names its lead's book and a Funding with its funders and guarantor."""
    if product.funding_model == "self":
        return ledger.OWN_BOOK, None
    parts = [(funder_book(share.funder), share.ratio_bps) for share in product.funders]
    terms = product.guarantee
    if terms is None:
        return parts[0][0], new_funding(parts)
    guarantor = partner_id if terms.guarantor == GUARANTOR_IS_PARTNER else terms.guarantor
    return parts[0][0], new_funding(
        parts, guarantor=guarantor, compensation_dpd=terms.compensation_dpd,
        fee_to_guarantor=terms.fee_monthly_bps > 0)


def product_books(products: Sequence[Product]) -> frozenset[str]:
    """The books these products post to that are known before any loan is booked (a
    guarantor that is "the partner" is known once it guarantees a loan)."""
    books = {ledger.OWN_BOOK}
    for product in products:
        books.update(funder_book(share.funder) for share in product.funders)
        terms = product.guarantee
        if terms is not None and terms.guarantor != GUARANTOR_IS_PARTNER:
            books.add(guarantor_book(terms.guarantor))
    return frozenset(books)
