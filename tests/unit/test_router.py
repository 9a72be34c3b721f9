"""The router (gateway/router.py) after a request timed out: its command is not sent."""

from __future__ import annotations

import asyncio

import pytest

from gateway.router import HostChannel, ShardRouter
from lending.commands import BATCH_DECODER, BATCH_ENCODER, GetLoan, Reply


class Unavailable(Exception):
    pass


@pytest.mark.asyncio
async def test_a_cancelled_request_is_neither_sent_nor_retried() -> None:
    sent: list[str] = []
    first_call_may_finish = asyncio.Event()

    async def send(host_id: int, payload: bytes) -> bytes:
        envelopes = BATCH_DECODER.decode(payload)
        sent.extend(e.command.loan_id for e in envelopes)  # type: ignore[union-attr]
        await first_call_may_finish.wait()
        return BATCH_ENCODER.encode([Reply(200, b"{}")] * len(envelopes))

    channel = HostChannel(0, send, items_max=10, in_flight_max=1, retryable=(Unavailable,))
    router = ShardRouter([0], {0: channel}, pending_max=100, retry_deadline_s=5)
    router.start()
    try:
        busy = router.call(0, GetLoan("demo", "LN-0000-0000000001"))
        await asyncio.sleep(0.01)  # the only call slot is taken: the next one queues
        timed_out = router.call(0, GetLoan("demo", "LN-0000-0000000002"))
        kept = router.call(0, GetLoan("demo", "LN-0000-0000000003"))
        timed_out.cancel()  # what the request timeout does to the awaiting handler
        first_call_may_finish.set()
        assert (await busy).status == 200 and (await kept).status == 200
        assert sent == ["LN-0000-0000000001", "LN-0000-0000000003"]
    finally:
        await router.close()
