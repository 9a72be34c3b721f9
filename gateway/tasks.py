"""Running coroutines side by side where the first failure must stop the others."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any


async def all_or_cancel(coroutines: Iterable[Coroutine[Any, Any, Any]]) -> None:
    """Run them concurrently; the first exception cancels the rest (and is raised as it
    is, unlike asyncio.TaskGroup's ExceptionGroup, so HTTP errors keep their status), and
    none is left running when this returns."""
    tasks = [asyncio.create_task(coroutine) for coroutine in coroutines]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
