"""Screening of an application in the gateway, before its shard decides (lending/screening.py).

Anti-fraud counters and blacklists (Redis, they cross customers) and the external data
sources (connectors: slow network calls, each with its timeout, retries and circuit breaker)
run concurrently; the shard then decides from their results alone. Screening runs only for
a request admitted by the idempotency guard, so a replay is never counted twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import date

from gateway.antifraud import AntiFraud
from gateway.connectors import ConnectorRunner, SourceRequest
from lending.screening import Screening


class Screener:
    def __init__(
        self, antifraud: AntiFraud, connectors: ConnectorRunner,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.antifraud = antifraud
        self.connectors = connectors
        self.clock_ms = clock_ms

    async def screen(
        self, *, partner_id: str, partner_application_id: str, id_hash: str, id_number: str,
        name: str, phone: str, phone_hash: str, birth_date: date | None, amount: int,
        device_id: str, ip: str,
    ) -> Screening:
        """Raises RedisError when Redis is down (the caller answers 503); connector failures
        never raise: they come back as `unavailable` sources for the rules to judge."""
        counting = self.antifraud.screen(
            partner_id, id_hash, phone_hash, device_id, ip, self.clock_ms(),
            # a retried submission is the same event: recorded once, never counting itself
            event_id=f"{partner_id}:{partner_application_id}",
        )
        asking = self.connectors.screen(
            SourceRequest(id_hash=id_hash, id_number=id_number, name=name, phone=phone,
                          birth_date=birth_date, amount=amount)
        )
        (velocity, blacklist), sources = await asyncio.gather(counting, asking)
        return Screening(velocity=velocity, blacklist=blacklist, sources=sources)
