"""Stopping tasks whose cancellation a library swallowed (gateway/tasks.py)."""

from __future__ import annotations

import asyncio
import sys

import pytest
import structlog

from gateway import logs
from gateway.tasks import cancel_and_wait, honour_cancellation


async def _deaf(answer: asyncio.Future[int], after: asyncio.Event) -> None:
    """Gets its answer through wait_for, then waits for an event that never comes."""
    await asyncio.wait_for(answer, 10)
    await after.wait()


async def test_cancel_and_wait_cancels_again_a_task_that_ignored_it() -> None:
    answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(_deaf(answer, asyncio.Event()), name="deaf")
    await asyncio.sleep(0)  # into wait_for
    answer.set_result(1)  # the answer and the cancellation in one loop iteration
    with structlog.testing.capture_logs() as logged:
        await asyncio.wait_for(cancel_and_wait(task, logs.get_logger(), recancel_after=0.2), 5)
    assert task.cancelled()
    again = [e for e in logged if "cancelling it again" in e["event"]]
    if sys.version_info < (3, 12):  # wait_for swallowed the first cancellation
        assert again and again[0]["task"] == "deaf"


async def test_cancel_and_wait_raises_the_error_a_task_ended_with() -> None:
    async def broken() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            raise RuntimeError("close failed")

    task = asyncio.create_task(broken())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="close failed"):
        await cancel_and_wait(task, logs.get_logger())


async def test_honour_cancellation_only_raises_in_a_cancelled_task() -> None:
    honour_cancellation()  # not cancelled: nothing happens
    started = asyncio.Event()

    async def swallowing() -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass  # as a library might
        honour_cancellation()

    task = asyncio.create_task(swallowing())
    await started.wait()
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.cancelled()
