"""Request bodies and HTTP helpers shared by the integration tests."""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import date, timedelta
from typing import Any

import httpx

from lending.commands import CustomerFacts, SubmitApplication
from lending.identity import make_id_number
from loadtests.client import PartnerClient

_sequence = itertools.count(100)
_rng = random.Random(uuid.uuid4().int)


# ---- ID numbers -------------------------------------------------------------------------------


def id_number(birth: date = date(1990, 3, 7), sequence: int | None = None) -> str:
    """A valid ID; sequences cycle through 100..899 (900–999 means a bad credit file)."""
    seq = next(_sequence) % 800 + 100 if sequence is None else sequence
    return make_id_number("110105", birth, seq)


def fresh_id(*, birth: date | None = None, sequence: int | None = None) -> str:
    """A valid ID number nobody else in the session uses (random birth date 1975–1999,
    random sequence 100..899), unless the birth date or the sequence is given."""
    if birth is None:
        birth = date(1975, 1, 1) + timedelta(days=_rng.randrange(365 * 25))
    if sequence is None:
        sequence = _rng.randrange(100, 900)
    return make_id_number("110105", birth, sequence)


def with_bad_check_digit(id_no: str) -> str:
    wrong = next(c for c in "0123456789X" if c != id_no[-1])
    return id_no[:-1] + wrong


def ref() -> str:
    """A fresh external_ref for a repayment."""
    return f"P-{uuid.uuid4().hex}"


# ---- shard commands (tests of the shard core without the gateway) ----------------------------


def application_command(ref: str) -> SubmitApplication:
    """An application as the gateway hands it to a shard: partner reference `ref`, its own
    customer, key and request hash (all derived from `ref`)."""
    facts = CustomerFacts(
        id_hash=f"hash-{ref}", id_number_enc=b"x", name_enc=b"x", phone_enc=b"x",
        id_number_masked="1101**********0017", name_masked="张*", phone_masked="138****8000",
        id_error=None, birth_date=date(1990, 3, 7), id_sequence=1, monthly_income=1_200_000,
        region_code="330100",
    )
    return SubmitApplication(
        "demo", f"key-{ref}", f"hash-{ref}", ref, "CASH_EI_12", 1_000_000, 12, facts,
        "d-1", "10.0.0.1", "consumption", None,
    )


# ---- request bodies ---------------------------------------------------------------------------


def application(
    *, amount: int = 1_000_000, term: int = 12, product: str = "CASH_EI_12",
    income: int = 1_200_000, id_no: str | None = None, phone: str | None = None,
    merchant_id: str | None = None, **overrides: Any,
) -> dict[str, Any]:
    """An application body. Phone, device and IP are fresh unless given: anti-fraud velocity
    (a device or IP seen in the last 24 h is not approved) must only trip when a test means it."""
    body: dict[str, Any] = {
        "partner_application_id": f"A-{uuid.uuid4().hex[:12]}",
        "product_code": product,
        "amount": amount,
        "term": term,
        "applicant": {
            "name": "张三", "id_number": id_no or id_number(), "phone": phone or fresh_phone(),
            "monthly_income": income, "region_code": "330100",
        },
        "device": fresh_device(),
        "purpose": "consumption",
        "merchant_id": merchant_id,
    }
    body.update(overrides)
    return body


def fresh_phone() -> str:
    return f"139{_rng.randrange(10**8):08d}"


def fresh_device() -> dict[str, str]:
    return {
        "device_id": f"d-{uuid.uuid4().hex}",
        "ip": f"10.{_rng.randrange(256)}.{_rng.randrange(256)}.{_rng.randrange(1, 255)}",
    }


def app_body(**kwargs: Any) -> dict[str, Any]:
    """An application body with a fresh applicant, phone, device and IP."""
    kwargs.setdefault("id_no", fresh_id())
    return application(**kwargs)


# ---- responses --------------------------------------------------------------------------------


def assert_error(
    response: httpx.Response, status: int, code: str, field: str | None = None
) -> dict[str, Any]:
    """API.md "Errors": {"error": {"code", "message", "field"}}, `field` always there (null
    when no one field is at fault)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json", response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "field"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["field"] is None or isinstance(error["field"], str), error
    if field is not None:
        assert error["field"] == field, error
    return error


# ---- partner API calls ------------------------------------------------------------------------


def submit(client: PartnerClient, body: dict[str, Any]) -> dict[str, Any]:
    """POST an application body; it must be created (201), whatever the decision."""
    response = client.post("/v1/applications", body)
    assert response.status_code == 201, response.text
    return response.json()


def approved(client: PartnerClient, **kwargs: Any) -> dict[str, Any]:
    """An application of app_body(**kwargs) that must be created and approved."""
    got = submit(client, app_body(**kwargs))
    assert got["status"] == "approved", got
    return got


def book(client: PartnerClient, application_id: str) -> httpx.Response:
    return client.post("/v1/loans", {"application_id": application_id})


def new_loan(
    client: PartnerClient, amount: int = 1_000_000, id_no: str | None = None, **kwargs: Any
) -> dict[str, Any]:
    """An approved application of a fresh applicant (unless id_no is given), booked."""
    app = approved(client, amount=amount, id_no=id_no or fresh_id(), **kwargs)
    booked = book(client, app["application_id"])
    assert booked.status_code == 201, booked.text
    return booked.json()


def get_loan(client: PartnerClient, loan_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/loans/{loan_id}")
    assert response.status_code == 200, response.text
    return response.json()


def repay(
    client: PartnerClient, loan_id: str, amount: Any, kind: str = "regular",
    external_ref: str | None = None, key: str | None = None,
) -> httpx.Response:
    body = {"amount": amount, "external_ref": external_ref or ref(), "kind": kind}
    return client.post(f"/v1/loans/{loan_id}/repayments", body, key=key)


def payoff_quote(client: PartnerClient, loan_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/loans/{loan_id}/payoff")
    assert response.status_code == 200, response.text
    return response.json()


def repay_batch(client: PartnerClient, items: Any, key: str | None = None) -> httpx.Response:
    return client.post("/v1/repayments/batch", {"items": items}, key=key)


# ---- operator API -----------------------------------------------------------------------------

ADMIN_TOKEN = "dev-admin-token-change-me"  # the dev config's admin (API.md)
RECONCILIATION_KEYS = {
    "book", "shards", "loans_checked", "loans_with_differences", "differences", "reconciled",
}


def ops_auth(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def trial_balance(ops: httpx.Client, query: str = "") -> dict[str, Any]:
    """GET /ops/ledger/trial-balance: 200, and its totals are those of its accounts."""
    response = ops.get(f"/ops/ledger/trial-balance{query}", headers=ops_auth())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total_debit"] == body["total_credit"], body
    assert body["balanced"] is True, body
    assert body["total_debit"] == sum(a["debit"] for a in body["accounts"])
    assert body["total_credit"] == sum(a["credit"] for a in body["accounts"])
    return body


def reconciliation(ops: httpx.Client, query: str = "") -> dict[str, Any]:
    """GET /ops/ledger/reconciliation: 200 with a self-consistent report (not necessarily
    reconciled: the caller asserts that)."""
    response = ops.get(f"/ops/ledger/reconciliation{query}", headers=ops_auth())
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == RECONCILIATION_KEYS, body
    assert body["reconciled"] is (body["loans_with_differences"] == 0), body
    assert (body["differences"] == []) is body["reconciled"], body
    assert len({d["loan_id"] for d in body["differences"]}) <= body["loans_with_differences"]
    return body


# ---- origination: ages and decision traces ----------------------------------------------------


def years_before(on: date, years: int) -> date:
    """The same calendar day `years` earlier (28 February for a 29 February)."""
    try:
        return on.replace(year=on.year - years)
    except ValueError:
        return on.replace(year=on.year - years, day=28)


def birth_for_age(on: date, age: int, *, oldest: bool = False) -> date:
    """A birth date of someone exactly `age` (周岁) on `on`: the youngest such person (whose
    birthday is `on`), or with oldest=True the oldest (turning age + 1 the next day)."""
    if oldest:
        return years_before(on, age + 1) + timedelta(days=1)
    return years_before(on, age)


def application_record(system: Any, application_id: str) -> dict[str, Any]:
    """The stored application (Postgres, the truth) with its decision trace, as operators
    read it (storage.applications_store.application_detail)."""
    from lending.shard_state import shard_of_id
    from storage.applications_store import application_detail

    shard = shard_of_id("application", application_id)
    assert shard is not None, application_id
    detail: dict[str, Any] | None = system.run(
        application_detail(system.pg(), shard, application_id))
    assert detail is not None, f"application {application_id} is not stored"
    return detail


class OpsClient:
    """The operator API as the integration tests use it (admin token unless told)."""

    def __init__(self, ops_url: str, timeout: float = 120) -> None:
        self.client = httpx.Client(base_url=ops_url, timeout=timeout)

    def get(self, path: str, auth: dict[str, str] | None = None, **params: Any) -> Any:
        response = self.client.get(path, params=params, headers=auth or ops_auth())
        assert response.status_code == 200, response.text
        return response.json()

    def post(self, path: str, body: Any, auth: dict[str, str] | None = None) -> httpx.Response:
        return self.client.post(path, json=body, headers=auth or ops_auth())

    def eod(self, business_date: str | None = None) -> httpx.Response:
        return self.post("/ops/eod", {} if business_date is None
                         else {"business_date": business_date})

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.get("/ops/eod")
        return status

    def business_date(self) -> date:
        return date.fromisoformat(self.get("/ops/business-date")["business_date"])
