"""run_sync: a coroutine run to completion from synchronous code, also inside a thread that runs a loop (the
full suite failed five engine tests this way: Playwright's sync API leaves a loop running in the main thread)."""
import asyncio

import pytest

from analysis.core.aio import run_sync


async def twice(x):
    await asyncio.sleep(0)
    return 2 * x


async def boom():
    raise ValueError("from the coroutine")


def test_run_sync_without_and_within_a_running_loop():
    assert run_sync(twice(3)) == 6

    async def inside():                 # a loop runs in this thread: asyncio.run would refuse
        asyncio.get_running_loop()
        return run_sync(twice(5))
    # The outer call is run_sync too: after the browser tests a loop already runs in pytest's main thread,
    # where a bare asyncio.run here failed in CI.
    assert run_sync(inside()) == 10


def test_run_sync_raises_the_coroutines_error_in_the_caller():
    with pytest.raises(ValueError, match="from the coroutine"):
        run_sync(boom())

    async def inside():
        with pytest.raises(ValueError, match="from the coroutine"):
            run_sync(boom())
    run_sync(inside())
