"""Resident ID numbers (GB 11643-1999), ages, mobile numbers and masking."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lending.identity import (
    IdNumberError,
    age_on,
    check_digit,
    is_valid_mobile,
    make_id_number,
    mask_id_number,
    mask_name,
    mask_phone,
    parse_id_number,
)

regions = st.text(alphabet="0123456789", min_size=6, max_size=6)
births = st.dates(min_value=date(1900, 1, 1), max_value=date(2099, 12, 31))
sequences = st.integers(min_value=0, max_value=999)


def _is_calendar_date(yyyymmdd: str) -> bool:
    try:
        born = date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:]))
    except ValueError:
        return False
    return born.year >= 1900


@given(regions, births, sequences)
def test_made_numbers_parse_and_round_trip(region: str, born: date, sequence: int) -> None:
    number = make_id_number(region, born, sequence)
    info = parse_id_number(number)
    assert len(number) == 18
    assert (info.region_code, info.birth_date, info.sequence) == (region, born, sequence)
    assert info.is_male == (sequence % 2 == 1)
    assert parse_id_number(number.lower()) == info


@given(regions, births, sequences, st.integers(min_value=0, max_value=16),
       st.integers(min_value=1, max_value=9))
def test_any_single_digit_change_is_caught(region: str, born: date, sequence: int,
                                           position: int, shift: int) -> None:
    """MOD 11-2 weights are non-zero mod 11 (a prime), so a one-digit change always moves
    the weighted sum mod 11: the check character no longer matches."""
    number = make_id_number(region, born, sequence)
    digit = str((int(number[position]) + shift) % 10)
    changed = number[:position] + digit + number[position + 1:]
    with pytest.raises(IdNumberError) as caught:
        parse_id_number(changed)
    birth_still_valid = _is_calendar_date(changed[6:14])
    assert caught.value.code == ("id_checksum" if birth_still_valid else "id_format")


@given(regions, births, sequences)
def test_a_wrong_check_character_is_id_checksum(region: str, born: date, sequence: int) -> None:
    number = make_id_number(region, born, sequence)
    for wrong in "0123456789X":
        if wrong != number[17]:
            with pytest.raises(IdNumberError) as caught:
                parse_id_number(number[:17] + wrong)
            assert caught.value.code == "id_checksum"


def test_known_numbers() -> None:
    """11010519491231002X is the classic valid example: weighted sum 167, 167 mod 11 = 2,
    "10X98765432"[2] = X. The API.md example 11010519900307001X is NOT valid: its weighted
    sum is 170, 170 mod 11 = 5, so the check character must be "7"."""
    info = parse_id_number("11010519491231002X")
    assert info.birth_date == date(1949, 12, 31)
    assert info.sequence == 2
    assert info.is_male is False
    assert check_digit("11010519900307001") == "7"
    with pytest.raises(IdNumberError) as caught:
        parse_id_number("11010519900307001X")
    assert caught.value.code == "id_checksum"
    assert parse_id_number("110105199003070017").is_male is True


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "11010519491231002",  # 17 characters
        "11010519491231002X1",  # 19 characters
        "1101051949123100XX",  # X not last
        "11010519491231A02X",  # letter
        "11010519491231002Y",
        " 11010519491231002X",
        "11010519491231002X\n",
        "１１０１０５１９４９１２３１００２Ｘ",  # full-width digits
        "١١٠١٠٥١٩٤٩١٢٣١٠٠٢X",  # Arabic-Indic digits
        "110105199013010010",  # month 13
        "110105199002300010",  # 30 February
        "110105189912310010",  # before 1900
    ],
)
def test_bad_format_is_id_format(bad: str) -> None:
    with pytest.raises(IdNumberError) as caught:
        parse_id_number(bad)
    assert caught.value.code == "id_format"
    assert isinstance(caught.value, ValueError)


def test_check_digit_needs_17_digits() -> None:
    with pytest.raises(IdNumberError):
        check_digit("1234")


@pytest.mark.parametrize(
    ("region", "born", "sequence"),
    [("11010", date(1990, 1, 1), 1), ("110105", date(1899, 12, 31), 1),
     ("110105", date(1990, 1, 1), 1000), ("110105", date(1990, 1, 1), -1),
     ("11010a", date(1990, 1, 1), 1)],
)
def test_make_id_number_refuses_bad_parts(region: str, born: date, sequence: int) -> None:
    with pytest.raises(ValueError):
        make_id_number(region, born, sequence)


@given(births, st.integers(min_value=0, max_value=120))
def test_age_changes_on_the_birthday(born: date, years: int) -> None:
    try:
        birthday = born.replace(year=born.year + years)
    except ValueError:  # 29 February in a common year: the birthday is 1 March
        birthday = date(born.year + years, 3, 1)
    assert age_on(born, birthday) == years
    if birthday > born:
        assert age_on(born, birthday - timedelta(days=1)) == years - 1


@given(births, st.integers(min_value=0, max_value=50_000), st.integers(min_value=0,
                                                                       max_value=5_000))
def test_age_is_monotone(born: date, days: int, more: int) -> None:
    earlier = born + timedelta(days=days)
    later = earlier + timedelta(days=more)
    assert 0 <= age_on(born, earlier) <= age_on(born, later)


def test_age_examples() -> None:
    assert age_on(date(2000, 2, 29), date(2018, 2, 28)) == 17
    assert age_on(date(2000, 2, 29), date(2018, 3, 1)) == 18
    assert age_on(date(2000, 2, 29), date(2020, 2, 29)) == 20
    assert age_on(date(2004, 11, 29), date(2026, 11, 29)) == 22
    assert age_on(date(2004, 11, 30), date(2026, 11, 29)) == 21
    with pytest.raises(ValueError):
        age_on(date(2000, 1, 2), date(2000, 1, 1))


@given(regions, births, sequences)
def test_masked_id_keeps_only_first_and_last_four(region: str, born: date,
                                                  sequence: int) -> None:
    number = make_id_number(region, born, sequence)
    masked = mask_id_number(number)
    assert len(masked) == 18
    assert masked[:4] == number[:4]
    assert masked[-4:] == number[-4:]
    assert masked[4:14] == "*" * 10


def test_mask_examples() -> None:
    assert mask_id_number("330102199001011234") == "3301**********1234"
    assert mask_phone("13812345678") == "138****5678"
    assert mask_name("张三") == "张*"
    assert mask_name("欧阳娜娜") == "欧***"
    assert mask_name("王") == "*"


@given(st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True))
def test_masked_phone_format(phone: str) -> None:
    masked = mask_phone(phone)
    assert len(masked) == 11
    assert masked == phone[:3] + "****" + phone[-4:]


@given(st.text(min_size=1, max_size=20))
def test_masked_name_reveals_at_most_the_first_character(name: str) -> None:
    masked = mask_name(name)
    assert len(masked) == len(name)
    assert set(masked[1:]) <= {"*"}
    assert masked[0] == ("*" if len(name) == 1 else name[0])


@pytest.mark.parametrize(
    ("call", "value"),
    [(mask_id_number, "1234567890"), (mask_phone, "1381234"), (mask_name, "")],
)
def test_masking_refuses_too_short_input(call: Callable[[str], str], value: str) -> None:
    with pytest.raises(ValueError):
        call(value)


@pytest.mark.parametrize(
    ("phone", "valid"),
    [
        ("13800138000", True),
        ("19912345678", True),
        ("15012345678", True),
        ("12012345678", False),  # second digit 2
        ("10012345678", False),
        ("23800138000", False),
        ("1380013800", False),  # 10 digits
        ("138001380001", False),  # 12 digits
        ("+8613800138000", False),
        ("1380013800a", False),
        ("13800138000\n", False),
        ("１３８００１３８０００", False),  # full-width
        ("", False),
    ],
)
def test_mobile_validation(phone: str, valid: bool) -> None:
    assert is_valid_mobile(phone) is valid


@given(st.text(max_size=14))
def test_mobile_validation_accepts_only_the_pattern(text: str) -> None:
    expected = (len(text) == 11 and text[0] == "1" and text[1] in "3456789"
                and all(c in "0123456789" for c in text))
    assert is_valid_mobile(text) is expected


def test_error_messages_do_not_leak_the_number() -> None:
    number = make_id_number("330102", date(1990, 1, 1), 123)
    bad = number[:17] + ("0" if number[17] != "0" else "1")
    with pytest.raises(IdNumberError) as caught:
        parse_id_number(bad)
    assert number[:17] not in str(caught.value)
