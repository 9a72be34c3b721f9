"""How a shard keeps loans in memory: frozen (compact) while resident, thawed when used.

A shard host keeps every loan of its shards in memory. As plain Structs, every Installment
is an object of 13 slots, and each of its amounts and its due date is an object of its own.
The shard keeps a *frozen* loan instead: the same `Loan` Struct, its scalar fields
unchanged (end of day reads status, dates, bucket and classification without unpacking
anything), but with its installments packed into one bytes object (`PackedInstallments`,
the msgpack of the list).

* ShardState freezes every loan it keeps: `freeze_loan` for a loan a batch committed,
  `loan_from_row` for a loan read from Postgres (its installments are copied from the row
  as they are, never decoded). `thaw_loan` gives back a Loan whose installments are a plain
  list, the only form the servicing code (lending.loans, lending.daily, lending.views)
  computes on; ShardState.loan and the batch overlay thaw on read, so a batch works on
  thawed copies exactly as before.
* A frozen loan cannot be changed in place: PackedInstallments has no mutating method, so a
  write that forgot to thaw fails loudly. Copy-on-write already forbade such writes.
* msgspec refuses to encode a frozen loan (PackedInstallments is not a type it knows), so it
  can never be written to Postgres or to a response by mistake: the Diff holds thawed loans.
* Reading a frozen loan's installments directly still works (they unpack on every access),
  but costs an unpack each time: thaw once and read the list.

Frozen loans also share their repeated values: status, bucket, product code and other
short strings are interned, dates and rates come from tables of shared objects, so loans
read from Postgres (where every row decodes into fresh objects) cost what booked ones do.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import date
from typing import Any, cast, overload

import msgspec

from lending.loans import Installment, Loan

_PACK = msgspec.msgpack.Encoder()
_UNPACK = msgspec.msgpack.Decoder(list[Installment])


class PackedInstallments(bytes):
    """A loan's installments, packed: the msgpack of `list[Installment]` (the same bytes the
    loan's Postgres row holds for them). Read-only; iterating or indexing unpacks them.

    A bytes subclass rather than a wrapper holding bytes: one object per loan, not two."""

    __slots__ = ()

    @classmethod
    def pack(cls, installments: list[Installment]) -> PackedInstallments:
        return cls(_PACK.encode(installments))

    def unpack(self) -> list[Installment]:
        """Fresh Installment objects, free to change (they are no longer the loan's)."""
        return _UNPACK.decode(self)

    def __iter__(self) -> Iterator[Installment]:  # type: ignore[override]
        return iter(self.unpack())

    def __len__(self) -> int:
        return len(self.unpack())

    @overload  # type: ignore[override]
    def __getitem__(self, index: int) -> Installment: ...
    @overload
    def __getitem__(self, index: slice) -> list[Installment]: ...
    def __getitem__(self, index: int | slice) -> Installment | list[Installment]:
        return self.unpack()[index]

    def __repr__(self) -> str:
        return f"PackedInstallments({self.unpack()!r})"


def is_frozen(loan: Loan) -> bool:
    return isinstance(loan.installments, PackedInstallments)


def freeze_loan(loan: Loan) -> Loan:
    """The loan as a shard keeps it in memory: its installments packed."""
    if is_frozen(loan):
        return loan
    return msgspec.structs.replace(loan, installments=_as_field(
        PackedInstallments.pack(loan.installments)))


def thaw_loan(loan: Loan) -> Loan:
    """A loan to compute on: its installments a plain list. A loan that is not frozen is
    returned as it is (the servicing code never mutates its input: see lending.loans)."""
    installments = loan.installments
    if not isinstance(installments, PackedInstallments):
        return loan
    return msgspec.structs.replace(loan, installments=installments.unpack())


def _as_field(packed: PackedInstallments) -> list[Installment]:
    # A frozen loan is a Loan whose installments are packed: the field keeps its declared
    # type for the code that only ever sees thawed loans.
    return cast(list[Installment], packed)


# ---- shared values --------------------------------------------------------------------------


class _SharedObjects(dict[Any, Any]):
    """value → the process's one object equal to it (the first one seen). A table per type
    (one table for ints and booleans would turn True into 1); their domains are small: the
    days of a book, rates in basis points, sets of partner ids. Indexing one is a C call,
    which matters when 100,000 loans load."""

    def __missing__(self, value: Any) -> Any:
        self[value] = value
        return value


_DATES = _SharedObjects({None: None})
_RATES = _SharedObjects({None: None})
_STRING_TUPLES = _SharedObjects()


@overload
def shared_date(day: date) -> date: ...
@overload
def shared_date(day: date | None) -> date | None: ...
def shared_date(day: date | None) -> date | None:
    """The process's one object for this date (None stays None)."""
    return cast(date | None, _DATES[day])


@overload
def shared_rate(bps: int) -> int: ...
@overload
def shared_rate(bps: int | None) -> int | None: ...
def shared_rate(bps: int | None) -> int | None:
    """The process's one object for this rate (ints above 256 are objects of their own;
    None stays None)."""
    return cast(int | None, _RATES[bps])


def shared_strings(values: Iterable[str]) -> tuple[str, ...]:
    """A tuple of a few repeated strings (a customer's partners), one object per value."""
    return cast(tuple[str, ...], _STRING_TUPLES[tuple(map(sys.intern, values))])


# The loan fields whose values repeat across loans, and how to share each.
_LOAN_SHARED: dict[str, Callable[[Any], Any]] = {
    **dict.fromkeys(
        ("partner_id", "product_code", "book", "repayment_method", "allocation", "payee",
         "status", "bucket", "classification"),
        sys.intern,
    ),
    **dict.fromkeys(("disbursed_on", "written_off_on", "last_closed_on"), _DATES.__getitem__),
    **dict.fromkeys(
        ("annual_rate_bps", "apr_bps", "prepayment_fee_bps", "monthly_fee_bps",
         "penalty_rate_bps"),
        _RATES.__getitem__,
    ),
}


def with_shared_values(loan: Loan) -> Loan:
    """The loan with its repeated values replaced by the process's shared objects. Worth it
    when a loan enters memory; its later versions keep these objects (thawing and servicing
    copy them over, and set only constants)."""
    return msgspec.structs.replace(
        loan, **{name: share(getattr(loan, name)) for name, share in _LOAN_SHARED.items()})


# ---- loading ------------------------------------------------------------------------------
# A loan row (loans.state) decodes into `_LoanRow`: Loan's fields in Loan's order, but the
# installments left as the raw msgpack the row holds, which is exactly PackedInstallments.
# Loading is the time a restarted shard host takes to serve again (≤ 5 s for 100,000 loans),
# and decoding the installments was most of it. They are validated when first thawed instead.
# Loan has no Struct options that change decoding (rename, tag, forbid_unknown_fields);
# tests/unit/test_memory.py checks rows decode here as with a Decoder(Loan).
_FIELDS = msgspec.structs.fields(Loan)


def _row_field(field: msgspec.structs.FieldInfo) -> tuple[Any, ...]:
    """Loan's field as defstruct takes it: same name and default; installments left raw."""
    kind = msgspec.Raw if field.name == "installments" else field.type
    if field.default_factory is not msgspec.NODEFAULT:
        return (field.name, kind, msgspec.field(default_factory=field.default_factory))
    if field.default is not msgspec.NODEFAULT:
        return (field.name, kind, field.default)
    return (field.name, kind)


_LoanRow = msgspec.defstruct("_LoanRow", [_row_field(f) for f in _FIELDS], gc=False)
_LOAN_ROW = msgspec.msgpack.Decoder(_LoanRow)
_INSTALLMENTS_AT = [f.name for f in _FIELDS].index("installments")
_SHARED_AT = [(index, _LOAN_SHARED[f.name]) for index, f in enumerate(_FIELDS)
              if f.name in _LOAN_SHARED]


def loan_from_row(row: bytes) -> Loan:
    """The frozen loan, values shared, of a loans.state row (the msgpack of a Loan)."""
    values = list(msgspec.structs.astuple(_LOAN_ROW.decode(row)))
    values[_INSTALLMENTS_AT] = _as_field(PackedInstallments(values[_INSTALLMENTS_AT]))
    for index, share in _SHARED_AT:
        values[index] = share(values[index])
    return Loan(*values)
