"""Stopping tasks when a library may swallow their cancellation.

On Python 3.11 `asyncio.wait_for`, which pymodbus (every request and connect) and aiomqtt
(connect, publish, disconnect) use, returns the result and drops the cancellation when both
arrive in the same loop iteration (CPython gh-86296, fixed in 3.12 by its rewrite on
`asyncio.timeout`). The task goes on as if never cancelled, but stays `cancelling()`. The
race is rare on an idle box and likely under load; it showed as an agent that did not exit
within 30 s of SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from structlog.typing import FilteringBoundLogger

RECANCEL_AFTER = 5.0
"""How long a stopping task may take before it is cancelled again: longer than the close
timeouts of the code it runs (driver close 5 s, the offline status 2 s)."""


def honour_cancellation() -> None:
    """Raise CancelledError if this task was cancelled and a library swallowed it.

    Call it in loops that would otherwise go on forever: after each poll, each batch.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(task: asyncio.Task[Any], log: FilteringBoundLogger, *,
                          recancel_after: float = RECANCEL_AFTER) -> None:
    """Cancel `task` and wait until it ended, cancelling it again if it ignored that.

    Returns when it ended cancelled or normally; raises the error it ended with.
    """
    task.cancel()
    while True:
        done, _ = await asyncio.wait({task}, timeout=recancel_after)
        if done:
            break
        log.warning("task still running after it was cancelled; cancelling it again",
                    task=task.get_name(), after_s=recancel_after)
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task  # done: its error, if any, is raised here
