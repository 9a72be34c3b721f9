"""The router's host channels (gateway/router.py): a request that timed out is not sent; while
a call to a host runs, the next one fills (for `fill_s` at most)."""

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


def _recording_channel(
    calls: list[list[str]], first_call_may_finish: asyncio.Event, fill_s: float,
    in_flight_max: int = 4,
) -> ShardRouter:
    """A router of one host whose first call runs until `first_call_may_finish`; every
    call's loan ids are appended to `calls`."""
    async def send(host_id: int, payload: bytes) -> bytes:
        envelopes = BATCH_DECODER.decode(payload)
        calls.append([e.command.loan_id for e in envelopes])  # type: ignore[union-attr]
        if len(calls) == 1:
            await first_call_may_finish.wait()
        return BATCH_ENCODER.encode([Reply(200, b"{}")] * len(envelopes))

    channel = HostChannel(0, send, items_max=10, in_flight_max=in_flight_max,
                          retryable=(Unavailable,), fill_s=fill_s)
    return ShardRouter([0], {0: channel}, pending_max=100, retry_deadline_s=5)


def _loan(n: int) -> GetLoan:
    return GetLoan("demo", f"LN-0000-{n:010d}")


@pytest.mark.asyncio
async def test_while_a_call_runs_the_next_one_fills_until_it_ends() -> None:
    """Commands arriving while a call to the host runs go together in the next call, sent
    when the running one ends, although call slots are free."""
    calls: list[list[str]] = []
    first_call_may_finish = asyncio.Event()
    router = _recording_channel(calls, first_call_may_finish, fill_s=5.0)
    router.start()
    try:
        first = router.call(0, _loan(1))
        await asyncio.sleep(0.01)  # the first call is running
        later = []
        for n in (2, 3, 4):
            later.append(router.call(0, _loan(n)))
            await asyncio.sleep(0.01)  # each in a tick of its own
        assert len(calls) == 1  # nothing sent while the first call runs
        first_call_may_finish.set()
        replies = await asyncio.wait_for(asyncio.gather(first, *later), 1.0)
        assert [r.status for r in replies] == [200] * 4
        assert calls == [[_loan(1).loan_id], [_loan(n).loan_id for n in (2, 3, 4)]]
    finally:
        await router.close()


@pytest.mark.asyncio
async def test_a_slow_call_holds_the_next_one_back_for_fill_s_at_most() -> None:
    calls: list[list[str]] = []
    first_call_may_finish = asyncio.Event()
    router = _recording_channel(calls, first_call_may_finish, fill_s=0.05)
    router.start()
    try:
        first = router.call(0, _loan(1))
        await asyncio.sleep(0.01)
        second = router.call(0, _loan(2))
        reply = await asyncio.wait_for(second, 1.0)  # the first call is still stuck
        assert reply.status == 200 and not first.done()
        assert calls == [[_loan(1).loan_id], [_loan(2).loan_id]]
        first_call_may_finish.set()
        assert (await asyncio.wait_for(first, 1.0)).status == 200
    finally:
        await router.close()


@pytest.mark.asyncio
async def test_without_fill_a_free_slot_sends_at_once() -> None:
    calls: list[list[str]] = []
    first_call_may_finish = asyncio.Event()
    router = _recording_channel(calls, first_call_may_finish, fill_s=0.0)
    router.start()
    try:
        first = router.call(0, _loan(1))
        await asyncio.sleep(0.01)
        second = router.call(0, _loan(2))
        assert (await asyncio.wait_for(second, 1.0)).status == 200
        first_call_may_finish.set()
        await asyncio.wait_for(first, 1.0)
    finally:
        await router.close()


def test_a_negative_fill_is_refused() -> None:
    async def send(host_id: int, payload: bytes) -> bytes:
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="fill_s"):
        HostChannel(0, send, items_max=10, in_flight_max=1, retryable=(), fill_s=-0.001)


@pytest.mark.asyncio
async def test_the_call_after_one_that_just_ended_does_not_wait_to_fill() -> None:
    """One slot: the next call waits for the slot, which the running call frees as it ends.
    Its task is still finishing then; the next call must not take it for a running one and
    wait `fill_s` to fill."""
    calls: list[list[str]] = []
    first_call_may_finish = asyncio.Event()
    router = _recording_channel(calls, first_call_may_finish, fill_s=5.0, in_flight_max=1)
    router.start()
    try:
        first = router.call(0, _loan(1))
        await asyncio.sleep(0.01)
        second = router.call(0, _loan(2))  # queued: the only slot is taken
        await asyncio.sleep(0.01)
        first_call_may_finish.set()
        replies = await asyncio.wait_for(asyncio.gather(first, second), 1.0)
        assert [r.status for r in replies] == [200, 200]
    finally:
        await router.close()
