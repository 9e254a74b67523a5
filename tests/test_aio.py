"""relaybox.aio.cancel_and_wait: stopping a background task."""

from __future__ import annotations

import asyncio

import pytest

from relaybox.aio import cancel_and_wait


async def test_a_running_task_is_cancelled_and_waited_for() -> None:
    started, cleaned = asyncio.Event(), asyncio.Event()

    async def worker() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.set()

    task = asyncio.create_task(worker())
    await started.wait()
    await cancel_and_wait(task)
    assert task.cancelled() and cleaned.is_set()


async def test_a_task_that_failed_or_finished_is_no_error_and_none_is_nothing() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    failed = asyncio.create_task(fails())
    done = asyncio.create_task(asyncio.sleep(0))
    await asyncio.wait([failed, done])
    await cancel_and_wait(failed)
    await cancel_and_wait(done)
    await cancel_and_wait(None)
    assert isinstance(failed.exception(), RuntimeError)


async def test_the_callers_own_cancellation_goes_on_up() -> None:
    # A task that takes its time to stop: the caller waiting for it is cancelled meanwhile.
    release = asyncio.Event()
    stopping = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopping.set()
            await release.wait()

    task = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    caller = asyncio.create_task(cancel_and_wait(task))
    await stopping.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    release.set()
    await asyncio.wait([task])
