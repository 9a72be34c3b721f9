"""Input validation at the edge, one rule set for both gateways (partner and operator API).

- Text: no field may hold a control character (Unicode category Cc: U+0000–U+001F and
  U+007F–U+009F, tab and line breaks included). Such a value is refused with 400
  `invalid_request` naming the field, whether it came in a JSON body (`decode_json`), a query
  parameter (`query_params`) or a path segment (`path_param`). Postgres cannot store U+0000
  at all, and the others have no business in names, ids, references or operators' notes.
- JSON bodies are decoded strictly by msgspec Structs; a refusal is worded in the API's own
  words (`<field> is required`, `<field> must be ≥ 1`, `body is not valid JSON`), never in
  the library's, and names the field as a dotted path (`applicant.phone`, `reasons[2]`).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from typing import Any, TypeVar
from urllib.parse import parse_qs

import msgspec

from gateway.http import HttpError, Scope

T = TypeVar("T")

_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")

# What msgspec says, and where: "... - at `$.applicant.phone`"; for a missing or unknown key
# also which: "Object contains unknown field `x` - at `$.applicant`".
_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]+)`$")
_WRONG_TYPE = re.compile(r"^Expected `([^`]+)`, got `([^`]+)`$")
_BOUND = re.compile(r"^Expected `(?:int|float)` (>=|<=|>|<) (\S+)$")
_LENGTH = re.compile(r"^Expected `(str|array|object)` of length (>=|<=) (\d+)$")
_PATTERN = re.compile(r"""^Expected `str` matching regex ('.*'|".*")$""")  # its repr
_ENUM = re.compile(r"^Invalid enum value ")
_DATE = re.compile(r"^Invalid RFC3339 encoded date$")
_OUT_OF_RANGE = re.compile(r"^Number out of range$")

_TYPE_WORDS = {
    "int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
    "object": "an object", "array": "an array", "null": "null", "date": "a date YYYY-MM-DD",
}
_BOUND_WORDS = {">=": "≥", "<=": "≤", ">": ">", "<": "<"}
_LENGTH_UNITS = {"str": ("character", "characters"), "array": ("item", "items"),
                 "object": ("entry", "entries")}


def refuse(field: str | None, message: str) -> HttpError:
    return HttpError(400, "invalid_request", message, field)


def check_text(value: str, field: str) -> str:
    """`value` unchanged, or 400 when it holds a control character."""
    if _CONTROL_CHARACTER.search(value):
        raise refuse(field, f"{field} must not contain control characters")
    return value


def check_strings(value: Any, path: str = "") -> None:
    """Apply `check_text` to every string (and mapping key) inside a decoded body."""
    for field, text in _strings(value, path):
        check_text(text, field or "body")


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            yield from _strings(getattr(value, name), f"{path}.{name}" if path else name)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            yield from _strings(key, name)
            yield from _strings(item, name)


def decode_json(decoder: msgspec.json.Decoder[T], raw: bytes) -> T:
    """Strict decode of a request body: 400 `invalid_request` in our words, naming the
    field; every string in it obeys `check_text`."""
    try:
        value = decoder.decode(raw)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: test it first
        raise describe_validation_error(str(exc), decoder.type) from exc
    except msgspec.DecodeError as exc:
        raise refuse(None, "body is not valid JSON") from exc
    if _may_hold_control_characters(raw):
        check_strings(value)
    return value


def _may_hold_control_characters(raw: bytes) -> bool:
    """Whether a body that decoded as JSON can hold a control character in a string: only
    through an escape (U+0000–U+001F must be escaped in JSON, and the decoder refuses them
    raw), as U+007F (byte 7F) or as U+0080–U+009F (C2 80–C2 9F in UTF-8). Most bodies have
    none of these bytes, and skip the walk over every decoded string."""
    return b"\\" in raw or b"\x7f" in raw or b"\xc2" in raw


def describe_validation_error(message: str, body_type: Any) -> HttpError:
    """msgspec's ValidationError message → our 400. Anything not recognised below still
    gets our wording (`<field> is invalid`): the library's text is never passed on."""
    at = _AT.search(message)
    path = at.group(1) if at else ""
    detail = message[:at.start()] if at else message
    if named := _MISSING.match(detail) or _UNKNOWN.match(detail):
        key = _join(path, named.group(1))
        missing = named.re is _MISSING
        return refuse(key, f"{key} is required" if missing else f"{key} is not allowed")
    return refuse(path or None, f"{path or 'body'} {_predicate(detail, body_type, path)}")


def _predicate(detail: str, body_type: Any, path: str) -> str:
    """What the value at `path` must be, in our words ("must be ≥ 1")."""
    if wrong := _WRONG_TYPE.match(detail):
        return "must be " + " or ".join(
            _TYPE_WORDS.get(name, name) for name in wrong.group(1).split(" | "))
    if bound := _BOUND.match(detail):
        return f"must be {_BOUND_WORDS[bound.group(1)]} {bound.group(2)}"
    if length := _LENGTH.match(detail):
        kind, op, count = length.groups()
        if kind == "str" and op == ">=" and count == "1":
            return "must not be empty"
        least = "at least" if op == ">=" else "at most"
        unit = _LENGTH_UNITS[kind][0 if count == "1" else 1]
        return f"must have {least} {count} {unit}"
    if pattern := _PATTERN.match(detail):
        return f"must match the pattern {ast.literal_eval(pattern.group(1))}"
    if _ENUM.match(detail) and (allowed := literal_values(body_type, path)):
        return f"must be one of {', '.join(allowed)}"
    if _DATE.match(detail):
        return "must be a date YYYY-MM-DD"
    if _OUT_OF_RANGE.match(detail):
        return "is out of range"
    return "is invalid"


def literal_values(body_type: Any, path: str) -> list[str]:
    """The allowed values of the Literal field at `path` ("decision", "items[0].kind") of
    `body_type`, or [] when there is no such Literal."""
    info: Any = msgspec.inspect.type_info(body_type)
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        info = _unwrap(info)
        if part.startswith("[") and isinstance(info, msgspec.inspect.ListType):
            info = info.item_type
        elif isinstance(info, msgspec.inspect.StructType):
            info = next((f.type for f in info.fields if f.encode_name == part), None)
        else:
            return []
    info = _unwrap(info)
    if isinstance(info, msgspec.inspect.LiteralType):
        return [str(value) for value in info.values]
    return []


def _unwrap(info: Any) -> Any:
    """The type inside `T | None` and `Annotated[T, ...]`."""
    while True:
        if isinstance(info, msgspec.inspect.Metadata):
            info = info.type
        elif isinstance(info, msgspec.inspect.UnionType):
            inner = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
            if len(inner) != 1:
                return info
            info = inner[0]
        else:
            return info


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# ---- query strings and path segments ---------------------------------------------------------


def query_params(scope: Scope) -> dict[str, list[str]]:
    """The query string as name → values, each obeying `check_text`; blank values kept
    (`?shard=` is an error, not "every shard")."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    for name, values in query.items():
        check_text(name, "query")
        for value in values:
            check_text(value, name)
    return query


def ascii_int(text: str, maximum: int) -> int | None:
    """`text` as an integer 0..maximum, or None when it is anything else. ASCII digits only
    (str.isdigit() also accepts "²" or "٣"); leading zeros aside, no more digits than
    `maximum` has, since int() refuses strings over 4,300 digits and Postgres integers have
    bounds of their own."""
    significant = text.lstrip("0")
    if not (text.isascii() and text.isdigit()) or len(significant) > len(str(maximum)):
        return None
    value = int(significant or "0")
    return value if value <= maximum else None


def path_param(value: str, field: str) -> str:
    """A value taken from the path (already percent-decoded), obeying `check_text`."""
    return check_text(value, field)


def choice_param(
    query: dict[str, list[str]], name: str, allowed: tuple[str, ...]
) -> str | None:
    """An optional parameter restricted to `allowed`: None when absent or blank."""
    value = query.get(name, [""])[0] or None
    if value is not None and value not in allowed:
        raise refuse(name, f"{name} must be one of {', '.join(allowed)}")
    return value
