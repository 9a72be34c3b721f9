"""System.stop's steps are bounded (cluster/system.py _stop_step): a step that hangs is cut,
logged with the tasks still running, and the stop goes on."""

from __future__ import annotations

import asyncio
import logging

import pytest

from cluster.system import _stop_step


@pytest.mark.asyncio
async def test_a_step_that_hangs_is_cut_and_logged_with_the_running_tasks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    never = asyncio.Event()

    async def stuck_loop() -> None:
        await never.wait()

    bystander = asyncio.create_task(stuck_loop(), name="a-bystander")
    try:
        with caplog.at_level(logging.ERROR):
            await asyncio.wait_for(_stop_step("the stuck step", never.wait(), 0.05), 2.0)
        assert "the stuck step did not finish within 0.05 s" in caplog.text
        assert "stuck_loop" in caplog.text  # the stack of a task still running
    finally:
        bystander.cancel()
        await asyncio.gather(bystander, return_exceptions=True)


@pytest.mark.asyncio
async def test_a_step_that_ends_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        await _stop_step("a quick step", asyncio.sleep(0), 1.0)
    assert caplog.text == ""
