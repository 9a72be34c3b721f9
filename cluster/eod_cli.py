"""`lendcore eod`: run end of day through the operator API and watch it.

POSTs /ops/eod in a thread (the call returns when the run is over) while polling GET
/ops/eod for per-shard progress, drawn as a text bar on stderr; prints the report (JSON) on
stdout. Exit 0 when the run finished, 1 when the API refused or failed it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

import httpx

from cluster.config import load_settings

POLL_S = 0.5
BAR_WIDTH = 30
RUN_TIMEOUT_S = 3600.0


def configured_admin_token() -> str:
    """The token of the first admin in the configuration (config/default.toml: the dev
    admin): the code holds no token of its own."""
    for operator in load_settings().operators:
        if "admin" in operator.roles:
            return operator.token
    raise SystemExit("no admin operator configured: pass --token or set LENDCORE_OPS_TOKEN")


def progress_line(status: dict[str, Any]) -> str:
    """One line of progress from a GET /ops/eod body."""
    run = status.get("run") or {}
    if not run:
        return f"end of day {status.get('business_date')}: starting"
    done, shards = run["shards_done"], run["shards_total"]
    processed, total = run["loans_processed"], run["loans_total"]
    fraction = processed / total if total else done / shards if shards else 0.0
    filled = round(fraction * BAR_WIDTH)
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    loans = f"{processed}/{total if total is not None else '?'} loans"
    return (f"end of day {run['business_date']} [{bar}] {fraction:4.0%} "
            f"{loans}, {done}/{shards} shards, {run['status']}")


def run(ops_url: str, token: str, business_date: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    outcome: dict[str, Any] = {}

    def post() -> None:
        body = {"business_date": business_date} if business_date else {}
        try:
            with httpx.Client(base_url=ops_url, timeout=RUN_TIMEOUT_S) as client:
                outcome["response"] = client.post("/ops/eod", json=body, headers=headers)
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=post, daemon=True)
    worker.start()
    tty = sys.stderr.isatty()
    last = ""
    with httpx.Client(base_url=ops_url, timeout=10) as client:
        while worker.is_alive():
            try:
                response = client.get("/ops/eod", headers=headers)
                if response.status_code == 200:
                    line = progress_line(response.json())
                    if line != last:
                        print(("\r" if tty else "") + line, end="" if tty else "\n",
                              file=sys.stderr, flush=True)
                        last = line
            except httpx.HTTPError:
                pass
            worker.join(POLL_S)
    if tty and last:
        print(file=sys.stderr)
    if "error" in outcome:
        print(f"lendcore eod: {outcome['error']}", file=sys.stderr)
        return 1
    response = outcome["response"]
    if response.status_code != 200:
        print(f"lendcore eod: HTTP {response.status_code}: {response.text}", file=sys.stderr)
        return 1
    report = response.json()
    print(f"end of day {report['business_date']} done: business date now "
          f"{report['next_business_date']}, {report['loans_processed']} loans",
          file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 0


def main(ops_url: str, token: str | None, business_date: str | None) -> int:
    token = token or os.environ.get("LENDCORE_OPS_TOKEN") or configured_admin_token()
    start = time.monotonic()
    code = run(ops_url.rstrip("/"), token, business_date)
    print(f"({time.monotonic() - start:.1f} s)", file=sys.stderr)
    return code
