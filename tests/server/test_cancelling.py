"""Background loops stop even when one cancellation is lost (``cancelling``)."""

from __future__ import annotations

import asyncio

import pytest

from stepd.server.cancelling import cancel_and_wait


async def loses_one_cancellation(lost: list[int]) -> None:
    """A loop that goes on after its first cancellation, as one built on
    Python 3.11's ``asyncio.wait_for`` may when the cancellation races a wake-up."""
    while True:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            if lost:
                raise
            lost.append(1)


async def test_a_task_that_lost_a_cancellation_is_cancelled_again() -> None:
    lost: list[int] = []
    task = asyncio.create_task(loses_one_cancellation(lost))
    await asyncio.sleep(0)

    await asyncio.wait_for(cancel_and_wait(task), timeout=5)

    assert lost == [1] and task.cancelled()


async def test_what_the_task_raised_is_raised() -> None:
    async def fails() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise RuntimeError("broke while stopping") from None

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="broke while stopping"):
        await cancel_and_wait(task)
