"""The tests' one way to wait: poll a condition until it holds, fail with what was awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


async def wait_for_async(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.02) -> None:
    """`wait_for` for a test running on an event loop: yields to it between checks."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
