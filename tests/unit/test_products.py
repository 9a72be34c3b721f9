"""Product center: the shipped sandbox products, validation and the TOML loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from lending.products import (
    Product,
    ProductCatalog,
    ProductError,
    load_catalog,
    validate_product,
)

PRODUCTS_DIR = Path(__file__).resolve().parents[2] / "config" / "products"

VALID = Product(
    code="TEST_EI",
    version=1,
    name="test product",
    loan_type="cash",
    repayment_method="equal_installment",
    amount_min=100_000,
    amount_max=1_000_000,
    terms=(3, 12),
    rate_min_bps=1000,
    rate_max_bps=2400,
    default_rate_bps=1800,
)

VALID_TOML = """\
code = "TEST_EI"
version = {version}
name = "test product"
loan_type = "cash"
repayment_method = "equal_installment"
amount_min = 100000
amount_max = 1000000
terms = [3, 12]
rate_min_bps = 1000
rate_max_bps = 2400
default_rate_bps = 1800
"""


def _write(directory: Path, filename: str, text: str) -> Path:
    path = directory / filename
    path.write_text(text, encoding="utf-8")
    return path


# --- The shipped sandbox catalog (API.md "Sandbox conventions") -----------------------------

SANDBOX = {
    # code: (method, terms, amount_min, amount_max, payment_mode)
    "CASH_EI_12": ("equal_installment", (3, 6, 12, 24), 100_000, 20_000_000, "self"),
    "CASH_EP_12": ("equal_principal", (6, 12, 24), 100_000, 20_000_000, "self"),
    "CASH_IF_12": ("interest_first", (3, 6, 12), 100_000, 20_000_000, "self"),
    "CASH_BL_3": ("bullet", (1, 3), 100_000, 5_000_000, "self"),
    "INST_FEE_12": ("installment_fee", (3, 6, 12), 100_000, 5_000_000, "entrusted"),
}


def test_shipped_products_load_and_match_the_sandbox_table() -> None:
    catalog = load_catalog(PRODUCTS_DIR)
    assert {p.code for p in catalog.latest()} >= set(SANDBOX)
    for code, (method, terms, low, high, payment_mode) in SANDBOX.items():
        product = catalog.get(code)
        assert catalog.versions(code) == [1]
        assert (product.repayment_method, product.terms) == (method, terms)
        assert (product.amount_min, product.amount_max) == (low, high)
        assert product.payment_mode == payment_mode
        assert (product.grace_days, product.penalty_multiplier_pct) == (3, 150)
        assert product.prepayment_fee_bps == 0
        assert product.allocation == "oldest_first"
        assert (product.monthly_fee_bps > 0) == (code == "INST_FEE_12")
        validate_product(product, 2400)


def test_shipped_cash_products_price_between_10_and_24_percent() -> None:
    """API.md's cash products; the assisted one charges a guarantee fee on top of its rate,
    so its rate stops at 18 % to keep the APR under the cap."""
    for product in load_catalog(PRODUCTS_DIR).latest():
        if product.loan_type == "cash" and product.guarantee is None:
            assert (product.rate_min_bps, product.default_rate_bps, product.rate_max_bps) == (
                1000, 1800, 2400)
    assisted = load_catalog(PRODUCTS_DIR).get("ASSIST_EI_12")
    assert assisted.guarantee is not None and assisted.guarantee.fee_monthly_bps == 20
    assert (assisted.rate_min_bps, assisted.default_rate_bps, assisted.rate_max_bps) == (
        1000, 1500, 1800)


def test_the_funded_sandbox_products_split_as_the_issue_says() -> None:
    catalog = load_catalog(PRODUCTS_DIR)
    joint = catalog.get("JOINT_EI_12")
    assert joint.funding_model == "joint"
    assert [(s.funder, s.ratio_bps) for s in joint.funders] == [("own", 3000), ("bank_a", 7000)]
    assisted = catalog.get("ASSIST_EI_12")
    assert assisted.funding_model == "assisted"
    assert [(s.funder, s.ratio_bps) for s in assisted.funders] == [("bank_b", 10000)]
    assert assisted.guarantee is not None
    assert (assisted.guarantee.guarantor, assisted.guarantee.compensation_dpd) == ("partner", 80)


def test_every_shipped_file_starts_with_a_comment() -> None:
    for path in PRODUCTS_DIR.glob("*.toml"):
        assert path.read_text(encoding="utf-8").startswith("# "), path.name


# --- validate_product ------------------------------------------------------------------------

INVALID_CASES: list[tuple[str, dict[str, Any]]] = [
    ("code", {"code": "BAD CODE"}),
    ("version", {"version": 0}),
    ("name", {"name": "  "}),
    ("loan_type", {"loan_type": "mortgage"}),
    ("repayment_method", {"repayment_method": "balloon"}),
    ("allocation", {"allocation": "newest_first"}),
    ("funding_model", {"funding_model": "crowd"}),
    ("payment_mode", {"payment_mode": "cash"}),
    ("eligibility_rule_set", {"eligibility_rule_set": ""}),
    ("amount_min", {"amount_min": 0}),
    ("amount_min", {"amount_min": -100}),
    ("amount_max", {"amount_max": 99_999}),
    ("terms", {"terms": ()}),
    ("terms", {"terms": (0, 12)}),
    ("terms", {"terms": (12, 361)}),
    ("terms", {"terms": (12, 12)}),
    ("rate_min_bps", {"rate_min_bps": -1, "default_rate_bps": 0}),
    ("default_rate_bps", {"default_rate_bps": 999}),
    ("default_rate_bps", {"default_rate_bps": 2401}),
    ("monthly_fee_bps", {"monthly_fee_bps": 10}),
    ("monthly_fee_bps", {"repayment_method": "installment_fee", "rate_min_bps": 0,
                         "default_rate_bps": 0, "rate_max_bps": 0}),
    ("rate_max_bps", {"repayment_method": "installment_fee", "monthly_fee_bps": 60}),
    ("prepayment_fee_bps", {"prepayment_fee_bps": -1}),
    ("penalty_multiplier_pct", {"penalty_multiplier_pct": 99}),
    ("grace_days", {"grace_days": -1}),
    ("grace_days", {"grace_days": 31}),
    ("rate_max_bps", {"rate_max_bps": 3600}),
]


@pytest.mark.parametrize(("field", "changes"), INVALID_CASES)
def test_invalid_products_name_the_field(field: str, changes: dict[str, Any]) -> None:
    product = msgspec.structs.replace(VALID, **changes)
    with pytest.raises(ProductError) as caught:
        validate_product(product, 2400)
    assert caught.value.field == field
    message = str(caught.value)
    assert field in message
    assert f"{product.code} v{product.version}" in message


def test_valid_product_passes() -> None:
    validate_product(VALID, 2400)


def test_apr_over_cap_is_refused() -> None:
    """At 2400 bps the equal-installment APR is 2400: fine under a 2400 cap, refused under
    a 2000 cap; the message gives the APR, the term and the amount."""
    validate_product(VALID, 2400)
    with pytest.raises(ProductError, match=r"APR 2400 bps at term 3 .* cap of 2000"):
        validate_product(VALID, 2000)


def test_installment_fee_apr_counts_the_fee() -> None:
    """A 1% monthly fee over 12 months is an APR of 2146 bps: refused under the 2000 cap
    although the product charges no interest at all."""
    fee_product = msgspec.structs.replace(
        VALID, repayment_method="installment_fee", rate_min_bps=0, default_rate_bps=0,
        rate_max_bps=0, monthly_fee_bps=100, terms=(3, 12))
    validate_product(fee_product, 2400)
    with pytest.raises(ProductError, match=r"APR 2146 bps at term 12"):
        validate_product(fee_product, 2000)


# --- Loader ----------------------------------------------------------------------------------

def test_loader_reads_versions_side_by_side(tmp_path: Path) -> None:
    _write(tmp_path, "TEST_EI.toml", VALID_TOML.format(version=1))
    _write(tmp_path, "TEST_EI.v2.toml", VALID_TOML.format(version=2).replace(
        "rate_max_bps = 2400", "rate_max_bps = 2000"))
    catalog = load_catalog(tmp_path)
    assert catalog.versions("TEST_EI") == [1, 2]
    assert catalog.get("TEST_EI").version == 2
    assert catalog.get("TEST_EI").rate_max_bps == 2000
    assert catalog.get("TEST_EI", 1).rate_max_bps == 2400
    assert [p.version for p in catalog.latest()] == [2]


def test_unknown_key_is_refused_naming_file_and_key(tmp_path: Path) -> None:
    _write(tmp_path, "TEST_EI.toml", VALID_TOML.format(version=1) + "interest_free_days = 7\n")
    with pytest.raises(ProductError, match=r"TEST_EI\.toml.*interest_free_days") as caught:
        load_catalog(tmp_path)
    assert caught.value.field == "interest_free_days"


@pytest.mark.parametrize(
    ("replace", "field"),
    [
        (("amount_min = 100000", 'amount_min = "100000"'), "amount_min"),
        (("amount_min = 100000", "amount_min = 1000.00"), "amount_min"),
        (("terms = [3, 12]", 'terms = [3, "12"]'), "terms"),
        (("version = 1", "version = true"), "version"),
        (('name = "test product"\n', ""), "name"),
    ],
)
def test_wrong_type_or_missing_key_is_refused(tmp_path: Path, replace: tuple[str, str],
                                              field: str) -> None:
    _write(tmp_path, "TEST_EI.toml", VALID_TOML.format(version=1).replace(*replace))
    with pytest.raises(ProductError, match=rf"TEST_EI\.toml.*{field}") as caught:
        load_catalog(tmp_path)
    assert caught.value.field == field


def test_invalid_values_in_a_file_name_the_file_and_field(tmp_path: Path) -> None:
    _write(tmp_path, "TEST_EI.toml",
           VALID_TOML.format(version=1).replace("amount_max = 1000000", "amount_max = 5"))
    with pytest.raises(ProductError, match=r"TEST_EI\.toml: product TEST_EI v1: amount_max"):
        load_catalog(tmp_path)


def test_duplicate_version_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, "TEST_EI.toml", VALID_TOML.format(version=1))
    _write(tmp_path, "TEST_EI.copy.toml", VALID_TOML.format(version=1))
    with pytest.raises(ProductError, match=r"TEST_EI v1 is already defined in TEST_EI\.copy"):
        load_catalog(tmp_path)


def test_duplicate_version_refused_by_catalog_too() -> None:
    with pytest.raises(ProductError, match="duplicate product TEST_EI v1"):
        ProductCatalog([VALID, VALID])


def test_apr_over_cap_file_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, "TEST_EI.toml", VALID_TOML.format(version=1))
    with pytest.raises(ProductError, match="over the cap"):
        load_catalog(tmp_path, apr_cap_bps=1800)


def test_bad_toml_and_empty_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ProductError, match=r"no \*\.toml"):
        load_catalog(tmp_path)
    with pytest.raises(ProductError, match="does not exist"):
        load_catalog(tmp_path / "missing")
    _write(tmp_path, "BROKEN.toml", "code = \n")
    with pytest.raises(ProductError, match=r"BROKEN\.toml: invalid TOML"):
        load_catalog(tmp_path)


def test_unknown_code_or_version_is_a_clear_key_error() -> None:
    catalog = ProductCatalog([VALID])
    with pytest.raises(KeyError, match="unknown product code 'NOPE'"):
        catalog.get("NOPE")
    with pytest.raises(KeyError, match="unknown version 7 of product 'TEST_EI'"):
        catalog.get("TEST_EI", 7)
    with pytest.raises(KeyError, match="NOPE"):
        catalog.versions("NOPE")


# --- Penalty terms ---------------------------------------------------------------------------

def test_penalty_base_rate_is_optional_and_bounded() -> None:
    """Unset, penalty is charged on the loan's own rate; set, it must be 0..10000 bps."""
    assert VALID.penalty_base_rate_bps is None
    for good in (0, 1300, 10_000):
        validate_product(msgspec.structs.replace(VALID, penalty_base_rate_bps=good), 2400)
    for bad in (-1, 10_001):
        product = msgspec.structs.replace(VALID, penalty_base_rate_bps=bad)
        with pytest.raises(ProductError, match=rf"penalty_base_rate_bps must be in 0\.\.10000, "
                                               rf"got {bad}") as caught:
            validate_product(product, 2400)
        assert caught.value.field == "penalty_base_rate_bps"


def test_shipped_interest_free_product_sets_a_penalty_base_rate() -> None:
    """INST_FEE_12 charges no interest: without its own base (1300 bps) it would charge no
    penalty either. The interest-bearing products leave it unset."""
    catalog = load_catalog(PRODUCTS_DIR)
    assert catalog.get("INST_FEE_12").penalty_base_rate_bps == 1300
    for code in ("CASH_EI_12", "CASH_EP_12", "CASH_IF_12", "CASH_BL_3"):
        assert catalog.get(code).penalty_base_rate_bps is None


@pytest.mark.parametrize(("multiplier", "ok"), [(99, False), (100, True), (150, True),
                                                 (500, True), (501, False)])
def test_penalty_multiplier_is_between_100_and_500_percent(multiplier: int, ok: bool) -> None:
    product = msgspec.structs.replace(VALID, penalty_multiplier_pct=multiplier)
    if ok:
        validate_product(product, 2400)
        return
    with pytest.raises(ProductError, match=rf"penalty_multiplier_pct must be in 100\.\.500, "
                                           rf"got {multiplier}") as caught:
        validate_product(product, 2400)
    assert caught.value.field == "penalty_multiplier_pct"


def test_penalty_base_rate_in_a_file(tmp_path: Path) -> None:
    _write(tmp_path, "TEST_EI.toml",
           VALID_TOML.format(version=1) + "penalty_base_rate_bps = 1300\n")
    assert load_catalog(tmp_path).get("TEST_EI").penalty_base_rate_bps == 1300
    _write(tmp_path, "TEST_EI.toml",
           VALID_TOML.format(version=1) + 'penalty_base_rate_bps = "1300"\n')
    with pytest.raises(ProductError) as caught:
        load_catalog(tmp_path)
    assert caught.value.field == "penalty_base_rate_bps"
