"""A stand-in for the operator API on a free local port, for the client commands' tests
(`lendcore eod`, `lendcore seed`): it answers the few endpoints they call with fixed bodies
and records every request, so a test sees what a command sent without a running system."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BUSINESS_DATE = "2026-11-29"
NEXT_DATE = "2026-11-30"
TOKEN = "test-admin-token"

REPORT: dict[str, Any] = {
    "business_date": BUSINESS_DATE, "next_business_date": NEXT_DATE, "loans_processed": 203,
    "accrued_interest": 123456, "accrued_penalty": 789,
    "transitions": {"became_overdue": 2, "non_accrual_started": 1, "written_off": 0},
    "buckets": {"C": 193, "M1": 6, "M2": 3, "M3": 1},
    "classifications": {"normal": 193, "special_mention": 10},
    "guarantee_triggers": 0,
    "collections": {"cases_opened": 10, "cases_closed": 0, "cases_escalated": 0,
                    "promises_kept": 0, "promises_broken": 0},
    "reminders": {"planned": 17, "suppressed": 0},
    "withholdings": {"planned": 4, "amount": 366720},
    "shards": [{"shard_id": 0, "processed": 203, "chunks": 1, "accrued_interest": 123456,
                "accrued_penalty": 789, "became_overdue": 2, "duration_s": 0.01}],
    "steps": {"sync_hosts_s": 0.01, "shards_s": 0.05, "gl_summary_s": 0.02}, "attempts": 1,
    "started_at": "2026-11-29T15:30:00+00:00", "finished_at": "2026-11-29T15:30:01+00:00",
    "duration_s": 0.1,
    "gl_summary": {"own": {"total_debit": 124245, "total_credit": 124245, "balanced": True}},
}
SEEDED: dict[str, Any] = {"loans": 200, "seconds": 0.4, "business_date": BUSINESS_DATE,
                          "partner_id": "demo", "sample_loan_ids": ["LN-0000-0000000003"]}


@dataclass
class FakeOpsApi:
    url: str
    requests: list[tuple[str, str, dict[str, Any] | None]] = field(default_factory=list)

    def posts(self, path: str) -> list[dict[str, Any] | None]:
        return [body for method, seen, body in self.requests if (method, seen) == ("POST", path)]


@contextmanager
def fake_ops_api() -> Iterator[FakeOpsApi]:
    """The fake, serving on 127.0.0.1 until the block ends."""
    api = FakeOpsApi(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer("GET", None)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            self._answer("POST", json.loads(self.rfile.read(length) or b"null"))

        def _answer(self, method: str, body: dict[str, Any] | None) -> None:
            api.requests.append((method, self.path, body))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._send(401, {"error": {"code": "unauthenticated", "message": "no",
                                           "field": None}})
                return
            answers: dict[tuple[str, str], dict[str, Any]] = {
                ("GET", "/ops/business-date"): {"business_date": BUSINESS_DATE},
                ("GET", "/ops/eod"): {"business_date": BUSINESS_DATE, "run": None},
                ("POST", "/ops/eod"): REPORT,
                ("POST", "/ops/seed"): SEEDED,
            }
            self._send(200, answers[(method, self.path)])

        def _send(self, status: int, body: dict[str, Any]) -> None:
            encoded = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(encoded)))
            self.end_headers()
            self.wfile.write(encoded)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reads `api.requests`, not the server's log."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
