"""Chart of accounts (科目表) loaded from configuration and validated.

Servicing code posts to roles (`lending.ledger.ROLE_SIDES`); the chart assigns each role its
code, name and normal side. Validation is strict so that a typo can never drop a posting:
every role must appear exactly once, codes are unique, sides match the role's nature.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec

from lending.ledger import ROLE_SIDES


class Account(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    code: str
    role: str
    name: str
    side: str  # "debit" or "credit": the side on which the balance is normally positive


class _ChartFile(msgspec.Struct, forbid_unknown_fields=True):
    accounts: list[Account]


class ChartError(ValueError):
    pass


class Chart:
    """Role ↔ code mapping of a validated chart."""

    def __init__(self, accounts: list[Account]) -> None:
        problems = list(_problems(accounts))
        if problems:
            raise ChartError("; ".join(problems))
        self.accounts = sorted(accounts, key=lambda a: a.code)
        self._by_role = {a.role: a for a in accounts}
        self._by_code = {a.code: a for a in accounts}

    def code(self, role: str) -> str:
        return self._by_role[role].code

    def by_code(self, code: str) -> Account:
        if code not in self._by_code:
            raise ChartError(f"account code {code!r} is not in the chart of accounts")
        return self._by_code[code]

    def role_codes(self) -> dict[str, str]:
        return {role: account.code for role, account in self._by_role.items()}


def _problems(accounts: list[Account]) -> list[str]:
    problems: list[str] = []
    seen_roles: set[str] = set()
    seen_codes: set[str] = set()
    for account in accounts:
        where = f"account {account.code!r}"
        if not account.code.isdigit():
            problems.append(f"{where}: code must be digits")
        if account.code in seen_codes:
            problems.append(f"{where}: duplicate code")
        seen_codes.add(account.code)
        if account.role not in ROLE_SIDES:
            problems.append(f"{where}: unknown role {account.role!r}; known roles: "
                            f"{', '.join(sorted(ROLE_SIDES))}")
            continue
        if account.role in seen_roles:
            problems.append(f"{where}: role {account.role} appears twice")
        seen_roles.add(account.role)
        if account.side != ROLE_SIDES[account.role]:
            problems.append(f"{where}: side must be {ROLE_SIDES[account.role]} for role "
                            f"{account.role}, got {account.side!r}")
        if not account.name.strip():
            problems.append(f"{where}: name must not be empty")
    missing = sorted(set(ROLE_SIDES) - seen_roles)
    if missing:
        problems.append(f"missing roles: {', '.join(missing)}")
    return problems


def load_chart(path: Path) -> Chart:
    """Load and validate a chart file; errors name the file and the account."""
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ChartError(f"{path}: chart of accounts file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ChartError(f"{path}: invalid TOML: {exc}") from exc
    try:
        parsed = msgspec.convert(raw, _ChartFile, strict=True)
        return Chart(parsed.accounts)
    except (msgspec.ValidationError, ChartError) as exc:
        raise ChartError(f"{path}: {exc}") from exc
