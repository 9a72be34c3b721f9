"""Product center (产品中心): versioned product configuration loaded from TOML files.

Each `*.toml` file holds ONE version of one product, so a new version is a new file
(`CASH_EI_12.toml`, then `CASH_EI_12.v2.toml`) and a loan keeps the version it was booked
under. Every product is validated on load, including its worst-case APR against the cap.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from datetime import date
from pathlib import Path

import msgspec

from lending.apr import apr_bps, schedule_payments
from lending.calendar import MAX_TERM_MONTHS
from lending.schedules import FEELESS_METHODS, REPAYMENT_METHODS, build_schedule

LOAN_TYPES = ("cash", "installment_purchase")
ALLOCATIONS = ("oldest_first", "principal_interest_first")
FUNDING_MODELS = ("self", "assisted", "joint")
PAYMENT_MODES = ("self", "entrusted")
DEFAULT_APR_CAP_BPS = 2400
GUARANTOR_IS_PARTNER = "partner"  # the partner that brought the loan guarantees it
# Compensation comes before non-accrual (DOMAIN.md §3: past 90 DPD), so a compensated loan
# moves only on-balance receivables to its guarantor.
MAX_COMPENSATION_DPD = 90
MAX_GUARANTEE_FEE_BPS = 500
_FUNDER_ID = re.compile(r"[a-z0-9_]{1,32}")
MAX_GRACE_DAYS = 30
MAX_PENALTY_MULTIPLIER_PCT = 500
_CODE_PATTERN = re.compile(r"[A-Za-z0-9_]+")
# msgspec names the key: "Object contains unknown field `x`", "Object missing required
# field `x`" or "Expected `int`, got `str` - at `$.x`".
_MSGSPEC_FIELD = re.compile(r"(?:unknown|required) field `([^`]+)`|at `\$\.([A-Za-z0-9_]+)")
# Schedule amounts do not depend on the calendar (months are r = annual/12 each), so any
# date gives the same worst-case APR; a fixed one keeps validation clock-free.
_APR_CHECK_DATE = date(2000, 1, 1)


class FunderShare(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One funder of a funded product: `own` (the lender) or a partner bank's id."""

    funder: str
    ratio_bps: int  # of 10,000


class GuaranteeTerms(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An assisted-lending guarantee (助贷担保): who guarantees, when it compensates (代偿),
    and the guarantee fee (担保费) a month on the amount, charged with each installment."""

    compensation_dpd: int
    guarantor: str = GUARANTOR_IS_PARTNER  # or a partner id
    fee_monthly_bps: int = 0


class Product(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One version of a product. Amounts in fen, rates in bps a year, fee in bps a month."""

    code: str
    version: int
    name: str
    loan_type: str
    repayment_method: str
    amount_min: int
    amount_max: int
    terms: tuple[int, ...]
    rate_min_bps: int
    rate_max_bps: int
    default_rate_bps: int
    monthly_fee_bps: int = 0
    penalty_multiplier_pct: int = 150
    # Annual base rate of penalty interest before the multiplier; unset: the loan's own rate.
    # Products that charge no interest (installment_fee) set it, or they would charge none.
    penalty_base_rate_bps: int | None = None
    grace_days: int = 3
    compound_penalty: bool = False
    prepayment_fee_bps: int = 0
    allocation: str = "oldest_first"
    funding_model: str = "self"
    payment_mode: str = "self"
    eligibility_rule_set: str = "default"
    # Joint and assisted lending: who funds the loan, the lead (who takes every rounding
    # residue) first. Empty for self-funded products.
    funders: tuple[FunderShare, ...] = ()
    guarantee: GuaranteeTerms | None = None

    @property
    def schedule_fee_bps(self) -> int:
        """The monthly fee every installment carries: the product's own fee, or the
        guarantee fee."""
        guarantee_fee = self.guarantee.fee_monthly_bps if self.guarantee is not None else 0
        return self.monthly_fee_bps + guarantee_fee


class ProductError(ValueError):
    """Invalid product configuration. `field` names the offending field when there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def validate_product(p: Product, apr_cap_bps: int) -> None:
    """Raise ProductError naming the product, version and field of the first problem."""

    def fail(field: str, problem: str) -> ProductError:
        return ProductError(f"product {p.code} v{p.version}: {field} {problem}", field)

    for field, problem in _problems(p, apr_cap_bps):
        raise fail(field, problem)


def _problems(p: Product, apr_cap_bps: int) -> Iterable[tuple[str, str]]:
    """Yield (field, problem) pairs, cheapest checks first; the APR check runs last
    because it needs a consistent product to build schedules."""
    yield from _identity_problems(p)
    yield from _choice_problems(p)
    yield from _amount_and_term_problems(p)
    yield from _rate_and_fee_problems(p)
    yield from _servicing_problems(p)
    yield from _funding_problems(p)
    yield from _apr_problems(p, apr_cap_bps)


def _identity_problems(p: Product) -> Iterable[tuple[str, str]]:
    if not _CODE_PATTERN.fullmatch(p.code):
        yield "code", f"must be letters, digits or _, got {p.code!r}"
    if p.version < 1:
        yield "version", f"must be >= 1, got {p.version}"
    if not p.name.strip():
        yield "name", "must not be empty"
    if not p.eligibility_rule_set.strip():
        yield "eligibility_rule_set", "must not be empty"


def _choice_problems(p: Product) -> Iterable[tuple[str, str]]:
    choices = (
        ("loan_type", p.loan_type, LOAN_TYPES),
        ("repayment_method", p.repayment_method, REPAYMENT_METHODS),
        ("allocation", p.allocation, ALLOCATIONS),
        ("funding_model", p.funding_model, FUNDING_MODELS),
        ("payment_mode", p.payment_mode, PAYMENT_MODES),
    )
    for field, value, allowed in choices:
        if value not in allowed:
            yield field, f"must be one of {', '.join(allowed)}, got {value!r}"


def _amount_and_term_problems(p: Product) -> Iterable[tuple[str, str]]:
    if p.amount_min <= 0:
        yield "amount_min", f"must be > 0 fen, got {p.amount_min}"
    if p.amount_max < p.amount_min:
        yield "amount_max", f"must be >= amount_min {p.amount_min}, got {p.amount_max}"
    if not p.terms:
        yield "terms", "must not be empty"
    if any(not 1 <= t <= MAX_TERM_MONTHS for t in p.terms):
        yield "terms", f"must each be in 1..{MAX_TERM_MONTHS}, got {list(p.terms)}"
    if len(set(p.terms)) != len(p.terms):
        yield "terms", f"must be unique, got {list(p.terms)}"


def _rate_and_fee_problems(p: Product) -> Iterable[tuple[str, str]]:
    if p.rate_min_bps < 0:
        yield "rate_min_bps", f"must be >= 0, got {p.rate_min_bps}"
    if not p.rate_min_bps <= p.default_rate_bps <= p.rate_max_bps:
        yield "default_rate_bps", (f"must be within rate_min_bps..rate_max_bps "
                                   f"({p.rate_min_bps}..{p.rate_max_bps}), "
                                   f"got {p.default_rate_bps}")
    if p.rate_max_bps < p.rate_min_bps:
        yield "rate_max_bps", f"must be >= rate_min_bps {p.rate_min_bps}"
    if p.repayment_method == "installment_fee":
        if p.monthly_fee_bps <= 0:
            yield "monthly_fee_bps", "must be > 0 for installment_fee"
        if p.rate_max_bps != 0:
            # The method charges no interest: a non-zero rate would be disclosed but never
            # charged.
            yield "rate_max_bps", "must be 0 for installment_fee (the fee replaces interest)"
    elif p.monthly_fee_bps != 0:
        yield "monthly_fee_bps", f"is only allowed for installment_fee, got {p.monthly_fee_bps}"
    if not 0 <= p.prepayment_fee_bps <= 10_000:
        yield "prepayment_fee_bps", f"must be in 0..10000, got {p.prepayment_fee_bps}"


def _servicing_problems(p: Product) -> Iterable[tuple[str, str]]:
    if not 100 <= p.penalty_multiplier_pct <= MAX_PENALTY_MULTIPLIER_PCT:
        yield "penalty_multiplier_pct", (f"must be in 100..{MAX_PENALTY_MULTIPLIER_PCT}, "
                                         f"got {p.penalty_multiplier_pct}")
    if p.penalty_base_rate_bps is not None and not 0 <= p.penalty_base_rate_bps <= 10_000:
        yield "penalty_base_rate_bps", f"must be in 0..10000, got {p.penalty_base_rate_bps}"
    if not 0 <= p.grace_days <= MAX_GRACE_DAYS:
        yield "grace_days", f"must be in 0..{MAX_GRACE_DAYS}, got {p.grace_days}"


def _funding_problems(p: Product) -> Iterable[tuple[str, str]]:
    """Funders and guarantee (DOMAIN.md §7): ratios that add up exactly, known shapes."""
    if p.funding_model == "self":
        if p.funders:
            yield "funders", "must be empty for a self-funded product"
        if p.guarantee is not None:
            yield "guarantee", "needs an assisted or joint product"
        return
    funders = [share.funder for share in p.funders]
    minimum = 2 if p.funding_model == "joint" else 1
    if len(funders) < minimum:
        yield "funders", f"a {p.funding_model} product needs at least {minimum} funder(s)"
    if len(set(funders)) != len(funders):
        yield "funders", f"must be unique, got {funders}"
    for share in p.funders:
        if not _FUNDER_ID.fullmatch(share.funder):
            yield "funders", f"funder must be a-z, 0-9 or _ (1-32), got {share.funder!r}"
        if not 0 < share.ratio_bps <= 10_000:
            yield "funders", f"ratio_bps of {share.funder} must be in 1..10000"
    total = sum(share.ratio_bps for share in p.funders)
    if p.funders and total != 10_000:
        yield "funders", f"ratio_bps must sum to 10000 exactly, got {total}"
    if p.funding_model == "assisted" and "own" in funders:
        yield "funders", "assisted lending is funded by partner funders, not the lender"
    yield from _guarantee_problems(p)


def _guarantee_problems(p: Product) -> Iterable[tuple[str, str]]:
    terms = p.guarantee
    if terms is None:
        return
    if not 1 <= terms.compensation_dpd <= MAX_COMPENSATION_DPD:
        yield "guarantee", (f"compensation_dpd must be in 1..{MAX_COMPENSATION_DPD} "
                            f"(compensation precedes non-accrual), got {terms.compensation_dpd}")
    if terms.guarantor != GUARANTOR_IS_PARTNER and not _FUNDER_ID.fullmatch(terms.guarantor):
        yield "guarantee", (f"guarantor must be {GUARANTOR_IS_PARTNER!r} or a partner id, "
                            f"got {terms.guarantor!r}")
    if not 0 <= terms.fee_monthly_bps <= MAX_GUARANTEE_FEE_BPS:
        yield "guarantee", f"fee_monthly_bps must be in 0..{MAX_GUARANTEE_FEE_BPS}"
    if terms.fee_monthly_bps:
        # Every fee of the loan is then the guarantor's: no other fee may share its account.
        if p.monthly_fee_bps or p.prepayment_fee_bps:
            yield "guarantee", ("a guarantee fee needs monthly_fee_bps and prepayment_fee_bps "
                                "of 0 (every fee of the loan goes to the guarantor)")
        if p.repayment_method in FEELESS_METHODS:
            yield "guarantee", f"a guarantee fee does not apply to {p.repayment_method}"


def _apr_problems(p: Product, apr_cap_bps: int) -> Iterable[tuple[str, str]]:
    """Worst case: the highest rate on the smallest amount, for every allowed term."""
    for term in p.terms:
        lines = build_schedule(p.repayment_method, p.amount_min, p.rate_max_bps, term,
                               _APR_CHECK_DATE, p.schedule_fee_bps)
        apr = apr_bps(p.amount_min, schedule_payments(lines, term))
        if apr > apr_cap_bps:
            yield "rate_max_bps", (f"gives APR {apr} bps at term {term} and amount "
                                   f"{p.amount_min}, over the cap of {apr_cap_bps} bps")


class ProductCatalog:
    """All versions of all products, immutable once built."""

    def __init__(self, products: Iterable[Product]) -> None:
        self._versions: dict[str, dict[int, Product]] = {}
        for product in products:
            by_version = self._versions.setdefault(product.code, {})
            if product.version in by_version:
                raise ProductError(f"duplicate product {product.code} v{product.version}",
                                   "version")
            by_version[product.version] = product

    def get(self, code: str, version: int | None = None) -> Product:
        """A product version; `version=None` means the latest."""
        by_version = self._by_code(code)
        if version is None:
            return by_version[max(by_version)]
        if version not in by_version:
            raise KeyError(f"unknown version {version} of product {code!r}; known versions: "
                           f"{sorted(by_version)}")
        return by_version[version]

    def latest(self) -> list[Product]:
        """The latest version of every product, by code."""
        return [self.get(code) for code in sorted(self._versions)]

    def versions(self, code: str) -> list[int]:
        """Known versions of a product, ascending."""
        return sorted(self._by_code(code))

    def _by_code(self, code: str) -> dict[int, Product]:
        if code not in self._versions:
            raise KeyError(f"unknown product code {code!r}")
        return self._versions[code]


def load_catalog(directory: Path, apr_cap_bps: int = DEFAULT_APR_CAP_BPS) -> ProductCatalog:
    """Load and validate every `*.toml` product file of `directory`."""
    if not directory.is_dir():
        raise ProductError(f"product directory {directory} does not exist")
    paths = sorted(directory.glob("*.toml"))
    if not paths:
        raise ProductError(f"no *.toml product files in {directory}")
    seen: dict[tuple[str, int], Path] = {}
    products = []
    for path in paths:
        product = load_product_file(path, apr_cap_bps)
        key = (product.code, product.version)
        if key in seen:
            raise ProductError(f"{path.name}: product {product.code} v{product.version} is "
                               f"already defined in {seen[key].name}", "version")
        seen[key] = path
        products.append(product)
    return ProductCatalog(products)


def load_product_file(path: Path, apr_cap_bps: int = DEFAULT_APR_CAP_BPS) -> Product:
    """Decode (strictly) and validate one product file; errors name the file."""
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ProductError(f"{path.name}: invalid TOML: {exc}") from exc
    try:
        product = msgspec.convert(raw, Product, strict=True)
    except msgspec.ValidationError as exc:
        raise ProductError(f"{path.name}: {exc}", _field_of(exc)) from exc
    try:
        validate_product(product, apr_cap_bps)
    except ProductError as exc:
        raise ProductError(f"{path.name}: {exc}", exc.field) from exc
    return product


def _field_of(error: msgspec.ValidationError) -> str | None:
    match = _MSGSPEC_FIELD.search(str(error))
    if match is None:
        return None
    return match.group(1) or match.group(2)
