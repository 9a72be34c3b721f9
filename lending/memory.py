"""How a shard keeps loans in memory: frozen (compact) while resident, thawed when used.

A shard host keeps every loan of its shards in memory. As plain Structs, every Installment
is an object of 13 slots, and each of its amounts and its due date is an object of its own.
The shard keeps a *frozen* loan instead: the same `Loan` Struct, its scalar fields
unchanged (end of day reads status, dates, bucket and classification without unpacking
anything), but with its installments packed into one plain `bytes` object (the msgpack of
the list, `pack_installments`).

* ShardState freezes every loan it keeps: `freeze_loan` for a loan a batch committed,
  `loan_from_row` for a loan read from Postgres (its installments are copied from the row
  as they are, never decoded). `thaw_loan` gives back a Loan whose installments are a plain
  list, the only form the servicing code (lending.loans, lending.daily, lending.views)
  computes on; ShardState.loan and the batch overlay thaw on read, so a batch works on
  thawed copies.
* Plain `bytes`, not a subclass: an instance of any class defined in Python is tracked by
  the cycle collector (16 bytes more per loan, and every full collection walks every loan
  of the shard); bytes are not tracked.
* A frozen loan cannot be changed in place (bytes have no mutating method), and code that
  forgot to thaw reads ints where it expects installments, which fails at once
  (`AttributeError`). Only `encode_loan_row` writes a frozen loan out.

The row (`loans.state`) is written from the frozen loan, so a committed loan's installments
are packed once for both memory and Postgres (`encode_loan_row`): Loan's fields as a
msgpack array, in Loan's field order, its installments inlined as the packed bytes are.
Rows written before (a msgpack map keyed by field name) still load (`loan_from_row` tells
them by their first byte); the next write of the loan rewrites it as an array. So Loan's
field order is part of the stored format: a new field goes at the end, with a default.

Frozen loans also share their repeated values: status, bucket, product code and other
short strings are interned, dates and rates come from tables of shared objects, so loans
read from Postgres (where every row decodes into fresh objects) cost what booked ones do.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from datetime import date
from typing import Any, cast, overload

import msgspec

from lending.loans import Installment, Loan

_PACK = msgspec.msgpack.Encoder()
_UNPACK = msgspec.msgpack.Decoder(list[Installment])


def pack_installments(installments: list[Installment]) -> bytes:
    """The msgpack of the list (Installment is array-like: ~37 bytes each)."""
    return _PACK.encode(installments)


def unpack_installments(packed: bytes) -> list[Installment]:
    """Fresh Installment objects, free to change (they are no longer the loan's)."""
    return _UNPACK.decode(packed)


def is_frozen(loan: Loan) -> bool:
    return isinstance(loan.installments, bytes)


def freeze_loan(loan: Loan) -> Loan:
    """The loan as a shard keeps it in memory: its installments packed."""
    if is_frozen(loan):
        return loan
    return msgspec.structs.replace(loan, installments=_as_field(
        pack_installments(loan.installments)))


def thaw_loan(loan: Loan) -> Loan:
    """A loan to compute on: its installments a plain list. A loan that is not frozen is
    returned as it is (the servicing code never mutates its input: see lending.loans)."""
    installments = loan.installments
    if not isinstance(installments, bytes):
        return loan
    return msgspec.structs.replace(loan, installments=unpack_installments(installments))


def _as_field(packed: bytes) -> list[Installment]:
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


# ---- rows (loans.state) -------------------------------------------------------------------
# `_LoanRow` is Loan with its installments left as raw msgpack (exactly the packed bytes), so
# neither loading nor writing a row decodes or encodes an installment. Loading is the time
# a restarted shard host takes to serve again (≤ 5 s for 100,000 loans), and decoding the
# installments was most of it; they are validated when first thawed instead. Loan has no
# Struct options that change decoding (rename, tag, forbid_unknown_fields);
# tests/unit/test_memory.py checks rows decode here as the plain Loan would.
_FIELDS = msgspec.structs.fields(Loan)


def _row_field(field: msgspec.structs.FieldInfo) -> tuple[Any, ...]:
    """Loan's field as defstruct takes it: same name and default; installments left raw."""
    kind = msgspec.Raw if field.name == "installments" else field.type
    if field.default_factory is not msgspec.NODEFAULT:
        return (field.name, kind, msgspec.field(default_factory=field.default_factory))
    if field.default is not msgspec.NODEFAULT:
        return (field.name, kind, field.default)
    return (field.name, kind)


_ROW_FIELDS = [_row_field(f) for f in _FIELDS]
# Written as an array: Loan's field names (375 bytes) were close to half of a map row, and
# Postgres's cost of rewriting every loan at end of day grows with the row (WAL and heap).
_LoanRow = msgspec.defstruct("_LoanRow", _ROW_FIELDS, array_like=True, gc=False)
_MapLoanRow = msgspec.defstruct("_MapLoanRow", _ROW_FIELDS, gc=False)  # rows of before
_ROW_ENCODER = msgspec.msgpack.Encoder()
_ARRAY_ROW = msgspec.msgpack.Decoder(_LoanRow)
_MAP_ROW = msgspec.msgpack.Decoder(_MapLoanRow)
_INSTALLMENTS_AT = [f.name for f in _FIELDS].index("installments")
_SHARED_AT = [(index, _LOAN_SHARED[f.name]) for index, f in enumerate(_FIELDS)
              if f.name in _LOAN_SHARED]
_MSGPACK_ARRAY_HEADS = (0xDC, 0xDD)  # array 16 and array 32; fixarray is 0x90-0x9F


def encode_loan_row(loan: Loan) -> bytes:
    """loans.state of a loan (frozen or thawed): its fields as a msgpack array."""
    values = list(msgspec.structs.astuple(freeze_loan(loan)))
    values[_INSTALLMENTS_AT] = msgspec.Raw(values[_INSTALLMENTS_AT])
    return _ROW_ENCODER.encode(_LoanRow(*values))


def _is_array_row(row: bytes) -> bool:
    head = row[0]
    return 0x90 <= head <= 0x9F or head in _MSGPACK_ARRAY_HEADS


def loan_from_row(row: bytes) -> Loan:
    """The frozen loan, values shared, of a loans.state row (either form)."""
    decoded = _ARRAY_ROW.decode(row) if _is_array_row(row) else _MAP_ROW.decode(row)
    values = list(msgspec.structs.astuple(decoded))
    values[_INSTALLMENTS_AT] = _as_field(bytes(values[_INSTALLMENTS_AT]))
    for index, share in _SHARED_AT:
        values[index] = share(values[index])
    return Loan(*values)


def decode_loan_row(row: bytes) -> Loan:
    """The loan of a loans.state row, thawed: for readers outside the shard (reports)."""
    return thaw_loan(loan_from_row(row))
