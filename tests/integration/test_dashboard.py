"""The operator dashboard over HTTP, without a browser (gateway/dashboard, issue 13):
sign-in and sessions, CSRF, every dashboard route × every role against the route table
(gateway/ops_access.py DASHBOARD_ROUTES, whose rows take their roles from the operator
API's), what each role's page shows, and the two operator reads the dashboard added
(GET /ops/loans/{loan_id}, GET /ops/business-summary).

Runs against the session's system, with one operator per role added for the module. No
request here writes: the allowed POSTs carry a body their handler refuses or name an object
that does not exist (the browser test, test_dashboard_browser.py, does the real work)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from factories import ADMIN_TOKEN, assert_error, new_loan, ops_auth, repay

from gateway.dashboard import app as app_module
from gateway.dashboard.app import Dashboard
from gateway.ops_access import (
    ADMIN,
    DASHBOARD_ROUTES,
    OPS_ROUTES,
    PUBLIC,
    ROLES,
    SIGNED_IN,
    DashboardRoute,
)
from gateway.ops_api import Operator, OpsApi
from loadtests.client import PartnerClient

TOKENS = {role: f"dash-{role}-{uuid.uuid4().hex}" for role in ROLES}
UNKNOWN_LOAN = "LN-0000-9999999999"
UNKNOWN_APPLICATION = "AP-0000-9999999999"
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')

# One request per dashboard route: (path, form). Allowed POSTs are refused by their
# handler (a bad date, an unknown application, a bad kind), so nothing is written.
REQUESTS: dict[tuple[str, str], tuple[str, dict[str, str] | None]] = {
    ("GET", "/dashboard/login"): ("/dashboard/login", None),
    ("POST", "/dashboard/login"): ("/dashboard/login", {"token": "wrong"}),
    ("GET", "/dashboard/static/{file}"): ("/dashboard/static/dashboard.css", None),
    ("GET", "/dashboard/"): ("/dashboard/", None),
    ("POST", "/dashboard/logout"): ("/dashboard/logout", {}),
    ("GET", "/dashboard/search"): ("/dashboard/search?id=nothing", None),
    ("GET", "/dashboard/panels/header"): ("/dashboard/panels/header", None),
    ("GET", "/dashboard/panels/cluster"): ("/dashboard/panels/cluster", None),
    ("GET", "/dashboard/charts"): ("/dashboard/charts", None),
    ("GET", "/dashboard/panels/business"): ("/dashboard/panels/business", None),
    ("GET", "/dashboard/panels/eod"): ("/dashboard/panels/eod", None),
    ("POST", "/dashboard/eod/run"): ("/dashboard/eod/run", {"business_date": "not-a-date"}),
    ("GET", "/dashboard/panels/collections"): ("/dashboard/panels/collections", None),
    ("GET", "/dashboard/panels/cases"): ("/dashboard/panels/cases", None),
    ("GET", "/dashboard/panels/reviews"): ("/dashboard/panels/reviews", None),
    ("POST", "/dashboard/reviews/{application_id}/claim"):
        (f"/dashboard/reviews/{UNKNOWN_APPLICATION}/claim", {}),
    ("POST", "/dashboard/reviews/{application_id}/release"):
        (f"/dashboard/reviews/{UNKNOWN_APPLICATION}/release", {}),
    ("POST", "/dashboard/reviews/{application_id}/decision"):
        (f"/dashboard/reviews/{UNKNOWN_APPLICATION}/decision", {"decision": "maybe"}),
    ("GET", "/dashboard/panels/blacklist"): ("/dashboard/panels/blacklist", None),
    ("POST", "/dashboard/blacklist"):
        ("/dashboard/blacklist", {"kind": "passport", "value": "x", "reason": "r"}),
    ("GET", "/dashboard/loans/{loan_id}"): (f"/dashboard/loans/{UNKNOWN_LOAN}", None),
    ("GET", "/dashboard/applications/{application_id}"):
        (f"/dashboard/applications/{UNKNOWN_APPLICATION}", None),
}


@pytest.fixture(scope="module")
def one_role_each(system: Any) -> Iterator[None]:
    app = ops_app(system)
    added = [Operator(f"dash-only-{role}", token, [role]) for role, token in TOKENS.items()]
    app.operators.extend(added)
    yield
    for operator in added:
        app.operators.remove(operator)


def ops_app(system: Any) -> OpsApi:
    return next(server.config.app for server in system.system._servers
                if isinstance(server.config.app, OpsApi))


class Browser:
    """An httpx client that keeps the session cookie, as a browser does."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30, follow_redirects=False)
        self.csrf = ""

    def sign_in(self, token: str) -> httpx.Response:
        response = self.http.post("/dashboard/login", data={"token": token})
        if response.status_code == 303:
            page = self.http.get("/dashboard/")
            self.csrf = CSRF_META.search(page.text).group(1)  # type: ignore[union-attr]
        return response

    def call(self, method: str, path: str, form: dict[str, str] | None = None,
             **headers: str) -> httpx.Response:
        sent = {"X-CSRF-Token": self.csrf, "HX-Request": "true", **headers}
        return self.http.request(method, path, data=form, headers=sent)

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def browser(system: Any) -> Iterator[Browser]:
    client = Browser(system.system.ops_url)
    yield client
    client.close()


# ---- the route table --------------------------------------------------------------------


def test_every_dashboard_route_has_a_request_here_and_a_handler() -> None:
    assert {(r.method, r.pattern) for r in DASHBOARD_ROUTES} == set(REQUESTS)
    # Dashboard() refuses to start when its handlers and the table differ; the system of
    # this session started, so they agree (checked again here on the class's table).
    assert all(isinstance(route, DashboardRoute) for route in DASHBOARD_ROUTES)


def test_each_panel_takes_the_roles_of_the_operator_route_it_mirrors() -> None:
    for route in DASHBOARD_ROUTES:
        if route.mirrors in (PUBLIC, SIGNED_IN):
            assert route.roles == frozenset(ROLES), route
        else:
            assert route.mirrors in OPS_ROUTES, route
            assert route.roles == route.mirrors.roles, route  # type: ignore[union-attr]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("route", DASHBOARD_ROUTES, ids=lambda r: f"{r.method} {r.pattern}")
def test_each_role_gets_exactly_the_dashboard_routes_of_its_row(
    browser: Browser, one_role_each: None, route: DashboardRoute, role: str
) -> None:
    assert browser.sign_in(TOKENS[role]).status_code == 303
    path, form = REQUESTS[(route.method, route.pattern)]
    response = browser.call(route.method, path, form)
    if role in route.roles:
        assert response.status_code != 403, response.text
        assert response.status_code < 500, response.text
    else:
        assert response.status_code == 403, response.text
        assert "forbidden" in response.text
        assert all(needed in response.text for needed in route.roles - {ADMIN})


@pytest.mark.parametrize(("role", "shown", "hidden"), [
    ("viewer", ["cluster-section", "business-section", "eod-section", "search-id"],
     ["reviews-section", "blacklist-section", "collections-section", "cases-section"]),
    ("risk_officer", ["reviews-section", "blacklist-section", "business-section",
                      "search-id", "blacklist-add"],
     ["cluster-section", "eod-section", "cases-section", "collections-section"]),
    ("operator", ["collections-section", "cases-section", "search-id"],
     ["cluster-section", "business-section", "eod-section", "reviews-section"]),
    ("collector", ["cases-section"],
     ["cluster-section", "business-section", "eod-section", "reviews-section",
      "blacklist-section", "collections-section", "search-id"]),
])
def test_the_page_shows_a_role_only_what_it_may_do(
    browser: Browser, one_role_each: None, role: str, shown: list[str], hidden: list[str]
) -> None:
    browser.sign_in(TOKENS[role])
    page = browser.http.get("/dashboard/").text
    assert all(f'id="{element}"' in page for element in shown), role
    assert not any(f'id="{element}"' in page for element in hidden), role


def test_the_run_button_is_shown_to_admin_only(browser: Browser, one_role_each: None) -> None:
    browser.sign_in(TOKENS["viewer"])
    assert 'id="run-eod"' not in browser.call("GET", "/dashboard/panels/eod").text
    browser.sign_in(ADMIN_TOKEN)
    panel = browser.call("GET", "/dashboard/panels/eod").text
    assert 'id="run-eod"' in panel and "hx-confirm=" in panel


# ---- sign-in, sessions, CSRF ------------------------------------------------------------


def test_signing_in_sets_a_random_http_only_strict_session_cookie(browser: Browser) -> None:
    response = browser.sign_in(ADMIN_TOKEN)
    assert response.status_code == 303 and response.headers["location"] == "/dashboard/"
    cookie = response.headers["set-cookie"]
    assert re.fullmatch(r"lendcore_dashboard=[A-Za-z0-9_-]{43}; Path=/dashboard; HttpOnly; "
                        r"SameSite=Strict", cookie), cookie
    assert ADMIN_TOKEN not in cookie
    page = browser.http.get("/dashboard/")
    assert page.status_code == 200 and ADMIN_TOKEN not in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"


def test_a_wrong_token_is_refused_without_a_session(browser: Browser) -> None:
    response = browser.sign_in("not-a-token")
    assert response.status_code == 401 and "set-cookie" not in response.headers
    assert "unknown token" in response.text and "not-a-token" not in response.text


def test_without_a_session_pages_go_to_sign_in_and_fragments_say_401(
    browser: Browser,
) -> None:
    page = browser.http.get("/dashboard/")
    assert page.status_code == 303 and page.headers["location"] == "/dashboard/login"
    fragment = browser.http.get("/dashboard/panels/cluster", headers={"HX-Request": "true"})
    assert fragment.status_code == 401
    assert fragment.headers["hx-redirect"] == "/dashboard/login"
    forged = browser.http.get("/dashboard/", cookies={"lendcore_dashboard": "forged"})
    assert forged.status_code == 303


def test_a_post_needs_the_session_csrf_token_and_this_origin(browser: Browser) -> None:
    browser.sign_in(ADMIN_TOKEN)
    missing = browser.http.post("/dashboard/logout", headers={"HX-Request": "true"})
    assert missing.status_code == 403 and "CSRF" in missing.text
    wrong = browser.call("POST", "/dashboard/logout", **{"X-CSRF-Token": "guess"})
    assert wrong.status_code == 403
    elsewhere = browser.call("POST", "/dashboard/logout", Origin="http://evil.example")
    assert elsewhere.status_code == 403 and "cross-site" in elsewhere.text
    assert browser.http.get("/dashboard/").status_code == 200  # still signed in


def test_signing_out_ends_the_session(browser: Browser) -> None:
    browser.sign_in(ADMIN_TOKEN)
    out = browser.call("POST", "/dashboard/logout", {"csrf": browser.csrf})
    assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]
    assert browser.http.get("/dashboard/").status_code == 303


def test_static_files_are_the_vendored_ones_only(browser: Browser) -> None:
    htmx = browser.http.get("/dashboard/static/htmx.min.js")
    assert htmx.status_code == 200 and htmx.headers["content-type"].startswith("text/javascript")
    assert 'version:"2.0.11"' in htmx.text
    assert browser.http.get("/dashboard/static/nothing.js").status_code == 404
    assert browser.http.get("/dashboard/static/../app.py").status_code == 404
    assert browser.http.get("/dashboard/nowhere").status_code == 404


def test_the_dashboard_refuses_to_start_with_a_route_it_cannot_answer(
    system: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    dashboard = ops_app(system).dashboard
    assert isinstance(dashboard, Dashboard)
    unanswered = DashboardRoute("GET", "/dashboard/panels/nothing", SIGNED_IN)
    monkeypatch.setattr(app_module, "DASHBOARD_ROUTES", (*DASHBOARD_ROUTES, unanswered))
    with pytest.raises(RuntimeError, match="/dashboard/panels/nothing"):
        Dashboard(ops=dashboard.ops, sampler=dashboard.sampler,
                  readiness=dashboard.readiness, limits=dashboard.limits)


# ---- the operator reads behind the loan page and the business panel ----------------------


def test_a_loan_reads_with_its_schedule_repayments_and_journal(
    ops: httpx.Client, demo: PartnerClient
) -> None:
    loan = new_loan(demo)
    paid = repay(demo, loan["loan_id"], loan["schedule"][0]["total"]).json()
    detail = ops.get(f"/ops/loans/{loan['loan_id']}", headers=ops_auth()).json()
    assert detail["loan"]["loan_id"] == loan["loan_id"]
    assert len(detail["loan"]["schedule"]) == loan["term"]
    assert detail["partner_id"] == "demo" and detail["book"] == "own"
    assert detail["repayments"] == [{
        "repayment_id": paid["repayment_id"], "external_ref": paid["external_ref"],
        "kind": "regular", "amount": paid["amount"], "value_date": paid["value_date"],
        "allocation": paid["allocation"]}]
    kinds = {(line["kind"], line["role"]) for line in detail["journal"]["lines"]}
    assert ("disbursement", "principal_receivable_normal") in kinds
    assert ("repayment", "cash_clearing") in kinds
    assert detail["journal"]["total_lines"] == len(detail["journal"]["lines"])
    assert_error(ops.get(f"/ops/loans/{UNKNOWN_LOAN}", headers=ops_auth()), 404, "not_found")
    assert_error(ops.get("/ops/loans/not-an-id", headers=ops_auth()), 404, "not_found")


def test_the_business_summary_counts_the_day(ops: httpx.Client, demo: PartnerClient) -> None:
    before = ops.get("/ops/business-summary", headers=ops_auth()).json()
    loan = new_loan(demo, amount=2_000_000)
    repay(demo, loan["loan_id"], loan["schedule"][0]["total"])
    after = ops.get("/ops/business-summary", headers=ops_auth()).json()
    assert after["business_date"] == before["business_date"]

    def grew(path: str) -> int:
        first, second = before, after
        for key in path.split("."):
            first, second = first[key], second[key]
        return int(second) - int(first)

    assert grew("applications.total") >= 1 and grew("applications.approved") >= 1
    assert grew("disbursed.loans") >= 1 and grew("disbursed.amount") >= 2_000_000
    assert grew("repayments.count") >= 1
    assert grew("repayments.amount") >= loan["schedule"][0]["total"]
    roles = [account["role"] for account in after["book"]]
    assert roles[0] == "principal_receivable_normal" and "written_off_loans" in roles
    assert set(after["delinquency"]) >= {"open_cases", "written_off_loans"}
