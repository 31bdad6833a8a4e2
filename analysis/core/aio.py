"""Running a coroutine to completion from synchronous code, wherever that code runs."""
from __future__ import annotations

import asyncio
import threading


def run_sync(coro):
    """``asyncio.run(coro)``, also when this thread already runs an event loop (a Jupyter notebook,
    Playwright's sync API, a test suite that uses one): the coroutine then runs in a thread of its own, with its
    own loop, and this call waits for it (exceptions are raised here, as asyncio.run would)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict = {}

    def target():
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:       # noqa: BLE001 (re-raised in the caller's thread)
            box["error"] = e
    t = threading.Thread(target=target, name="stopline-async")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")
