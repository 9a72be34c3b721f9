"""PRC resident identity numbers (GB 11643-1999), mobile numbers and PII masking.

An ID number is 18 characters: 6-digit region code, 8-digit birth date YYYYMMDD, 3-digit
sequence (odd = male) and an ISO 7064 MOD 11-2 check character (0-9 or X).
"""

from __future__ import annotations

import re
from datetime import date

import msgspec

_CHECK_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CHARS = "10X98765432"  # indexed by (weighted sum mod 11)
# ASCII classes on purpose: \d would also accept non-ASCII digits such as "١".
_ID_SHAPE = re.compile(r"[0-9]{17}[0-9X]")
_DIGITS17 = re.compile(r"[0-9]{17}")
_REGION = re.compile(r"[0-9]{6}")
_MOBILE = re.compile(r"1[3-9][0-9]{9}")
# Nobody born before 1900 applies for a loan; earlier dates are typos or forgeries.
_MIN_BIRTH_YEAR = 1900
_MIN_MASKED_ID_LENGTH = 12
_MIN_MASKED_PHONE_LENGTH = 11


class IdNumberError(ValueError):
    """Invalid ID number. `code` is a stable reason code: "id_format" or "id_checksum"."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class IdInfo(msgspec.Struct, frozen=True):
    """What an ID number says about its holder."""

    region_code: str
    birth_date: date
    sequence: int
    is_male: bool


def check_digit(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of the first 17 digits."""
    if not _DIGITS17.fullmatch(first17):
        raise IdNumberError("id_format", "expected exactly 17 ASCII digits")
    total = sum(int(ch) * weight for ch, weight in zip(first17, _CHECK_WEIGHTS, strict=True))
    return _CHECK_CHARS[total % 11]


def parse_id_number(id_number: str) -> IdInfo:
    """Validate an 18-character ID number (lowercase x accepted) and decode it.

    Error messages never repeat the number: it is personal data and they may be logged.
    """
    normalized = id_number.upper() if isinstance(id_number, str) else ""
    if not _ID_SHAPE.fullmatch(normalized):
        raise IdNumberError("id_format", "ID number must be 17 digits followed by a digit or X")
    birth_date = _birth_date(normalized[6:14])
    if check_digit(normalized[:17]) != normalized[17]:
        raise IdNumberError("id_checksum", "ID number check character does not match")
    sequence = int(normalized[14:17])
    return IdInfo(
        region_code=normalized[:6],
        birth_date=birth_date,
        sequence=sequence,
        is_male=sequence % 2 == 1,
    )


def _birth_date(yyyymmdd: str) -> date:
    try:
        born = date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:]))
    except ValueError as exc:
        raise IdNumberError("id_format", "ID number birth date is not a calendar date") from exc
    if born.year < _MIN_BIRTH_YEAR:
        raise IdNumberError("id_format", f"ID number birth year is before {_MIN_BIRTH_YEAR}")
    return born


def age_on(birth_date: date, on: date) -> int:
    """Age in full years (周岁) on date `on`.

    Someone born on 29 February turns a year older on 1 March in common years.
    """
    if on < birth_date:
        raise ValueError(f"date {on} is before the birth date")
    had_birthday = (on.month, on.day) >= (birth_date.month, birth_date.day)
    return on.year - birth_date.year - (0 if had_birthday else 1)


def make_id_number(region_code: str, birth_date: date, sequence: int) -> str:
    """Build a valid ID number (tests, simulators and load generators)."""
    if not _REGION.fullmatch(region_code):
        raise ValueError("region_code must be 6 ASCII digits")
    if not _MIN_BIRTH_YEAR <= birth_date.year <= 9999:
        raise ValueError(f"birth year must be in {_MIN_BIRTH_YEAR}..9999")
    if isinstance(sequence, bool) or not isinstance(sequence, int) or not 0 <= sequence <= 999:
        raise ValueError(f"sequence must be an int in 0..999, got {sequence!r}")
    first17 = f"{region_code}{birth_date:%Y%m%d}{sequence:03d}"
    return first17 + check_digit(first17)


def is_valid_mobile(phone: str) -> bool:
    """Mainland China mobile number: 11 digits, 1 then 3-9 then 9 digits."""
    return isinstance(phone, str) and _MOBILE.fullmatch(phone) is not None


def mask_id_number(s: str) -> str:
    """First 4 and last 4 characters kept, the rest starred: 3301**********1234.

    Shorter inputs are refused: keeping 8 characters of them would reveal most of it.
    """
    _require_length(s, _MIN_MASKED_ID_LENGTH, "ID number")
    return s[:4] + "*" * (len(s) - 8) + s[-4:]


def mask_phone(s: str) -> str:
    """First 3 and last 4 characters kept, the rest starred: 138****5678."""
    _require_length(s, _MIN_MASKED_PHONE_LENGTH, "phone number")
    return s[:3] + "*" * (len(s) - 7) + s[-4:]


def mask_name(s: str) -> str:
    """First character kept, one star per other character: 张三 → 张*; a one-character
    name becomes * (keeping it would reveal it all)."""
    if not isinstance(s, str) or not s:
        raise ValueError("name to mask must be a non-empty string")
    if len(s) == 1:
        return "*"
    return s[0] + "*" * (len(s) - 1)


def _require_length(s: str, minimum: int, what: str) -> None:
    if not isinstance(s, str) or len(s) < minimum:
        raise ValueError(f"{what} to mask must be a string of at least {minimum} characters")
