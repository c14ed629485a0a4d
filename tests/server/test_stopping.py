"""The server's stop is bounded (``stepd.server.stopping``): a stop that hangs
ends the process with status 1 after its limit, logging where each task waited,
and a second SIGTERM during a stop ends the process at once. Each case runs the
mechanism in a real child process, whose stop is made to hang on purpose."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

CHILD = """
import asyncio, logging, sys
from stepd.server.stopping import stop_within

async def waits_forever_on_the_database() -> None:
    await asyncio.Event().wait()

async def main(grace: float) -> None:
    print("stopping", flush=True)
    await stop_within(waits_forever_on_the_database(), grace)

logging.basicConfig(level=logging.INFO)
asyncio.run(main(float(sys.argv[1])))
"""


def start_child(grace: float) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(grace)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "stopping\n"
    return child


def test_a_stop_that_hangs_ends_the_process_after_its_limit() -> None:
    started = time.monotonic()
    child = start_child(grace=0)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 1
    assert time.monotonic() - started >= 4  # the margin past the grace
    assert "stopping took longer than 4 s; exiting now" in err
    assert "waits_forever_on_the_database" in err  # where it hung
    assert "Traceback" not in err


def test_a_second_sigterm_while_stopping_ends_the_process_at_once() -> None:
    child = start_child(grace=600)
    time.sleep(0.5)  # the handlers are installed before the first await
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 1
    assert "SIGTERM while stopping: exiting now" in err
