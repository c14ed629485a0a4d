"""The stepd demo: a server, a worker and one order, end to end.

Run ``python examples/run_demo.py`` from anywhere. It

1. starts ``stepd serve`` on a free port with a SQLite file (``./stepd-demo.db``),
2. starts ``stepd-worker examples.order_processing``,
3. triggers one order with the Python client and prints the typed receipt,
4. stops the worker and the server and exits 0.

With ``--keep-running`` the server and the worker stay up until Ctrl-C, so you
can look at the run with grpcurl.
"""

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `examples` importable
    sys.path.insert(0, str(ROOT))

from examples.order_processing import (  # noqa: E402
    LineItem,
    Order,
    Receipt,
    ShippingSpeed,
    process_order,
)
from stepd import Client  # noqa: E402

SERVER_READY = re.compile(r"stepd serving on (\S+) \(database (.*)\)")
HTTP_READY = re.compile(r"stepd http on (\S+)")
WORKER_READY = re.compile(r"stepd worker ready")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def command(script: str, module: str) -> list[str]:
    """Return the argv that runs a console script of this installation."""
    beside = Path(sys.executable).parent / script
    if beside.exists():
        return [str(beside)]
    found = shutil.which(script)
    if found:
        return [found]
    return [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())"]


class Process:
    """A child process in its own process group, its output in a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_for(self, pattern: re.Pattern[str]) -> re.Match[str]:
        """Wait until the process prints a line matching ``pattern``."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for line in self.log_path.read_text(errors="replace").splitlines():
                found = pattern.search(line)
                if found:
                    return found
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start; its log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the process printed."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> int:
        """SIGTERM the process group, SIGKILL it if it does not exit in time."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(STOP_TIMEOUT)
            except ProcessLookupError:
                self.popen.wait(STOP_TIMEOUT)
        self._log.close()
        return self.popen.returncode


def demo_order() -> Order:
    """An express order with one physical and one digital item."""
    return Order(
        order_id="order-1001",
        customer_email="ada@example.com",
        card_number="4242424242424242",
        address="12 Analytical Row, London",
        shipping=ShippingSpeed.EXPRESS,
        items=[
            LineItem(sku="KEYBOARD-01", quantity=1, unit_price_cents=8900),
            LineItem(sku="MANUAL-PDF", quantity=1, unit_price_cents=1500, digital=True),
        ],
    )


def show(receipt: Receipt) -> None:
    """Print a receipt for people."""
    print(f"  order      {receipt.order_id}")
    print(f"  status     {receipt.status}")
    print(f"  amount     {receipt.amount_cents / 100:.2f}")
    print(f"  payment    {receipt.payment_id}")
    print(f"  reserved   {receipt.reservation_id}")
    if receipt.shipment is not None:
        shipment = receipt.shipment
        print(f"  shipment   {shipment.method} by {shipment.carrier}, {shipment.tracking_code}")
    print(f"  note       {receipt.message}")


async def run_order(address: str) -> str:
    """Trigger the demo order, wait for it and print the receipt; return the run id."""
    async with Client(address) as client:
        order = demo_order()
        handle = await client.trigger(process_order, order)
        print(f"triggered run {handle.run_id} (workflow orders.process)")
        receipt = await asyncio.wait_for(handle.result(), timeout=60)
        info = await client.get_run(handle.run_id)
        print(f"run {info.run_id} {info.status}:")
        show(receipt)
        return handle.run_id


def wait_for_interrupt() -> None:
    """Block until Ctrl-C or SIGTERM."""
    stop = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    while not stop:
        time.sleep(0.2)


def main() -> int:
    """Run the demo; exit 0 when the order went through."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="stepd-demo.db", help="SQLite file of the server")
    parser.add_argument("--keep-running", action="store_true", help="stay up until Ctrl-C")
    args = parser.parse_args()

    database = Path(args.database).resolve()
    logs = Path(tempfile.mkdtemp(prefix="stepd-demo-"))
    processes: list[Process] = []
    try:
        server = Process(
            "server",
            [
                *command("stepd", "stepd.server.cli"),
                "serve",
                "--address",
                "127.0.0.1:0",
                "--database",
                str(database),
            ],
            logs / "server.log",
        )
        processes.append(server)
        address = server.wait_for(SERVER_READY).group(1)
        web = server.wait_for(HTTP_READY).group(1)
        print(f"server  listening on {address}, database {database}")
        print(f"web UI  {web}/ (with --keep-running it stays up)")

        worker = Process(
            "worker",
            [
                *command("stepd-worker", "stepd.cli"),
                "examples.order_processing",
                "--server",
                address,
            ],
            logs / "worker.log",
        )
        processes.append(worker)
        worker.wait_for(WORKER_READY)
        print("worker  serving examples.order_processing")

        run_id = asyncio.run(run_order(address))

        if args.keep_running:
            print(f"\nthe run in the web UI: {web}/#/runs/{run_id}")
            print(f"logs in {logs}; try:")
            print(
                f'  grpcurl -plaintext -d \'{{"run_id": "{run_id}"}}\' {address} '
                "stepd.v1.WorkflowService/GetRun"
            )
            print("press Ctrl-C to stop")
            wait_for_interrupt()
    except BaseException:
        for process in processes:
            print(f"--- {process.name} log ---\n{process.log_tail()}", file=sys.stderr)
        raise
    finally:
        codes = {process.name: process.stop() for process in reversed(processes)}
    unclean = {name: code for name, code in codes.items() if code != 0}
    if unclean:
        print(f"did not stop cleanly (exit codes): {unclean}; logs in {logs}", file=sys.stderr)
        return 1
    print("stopped worker and server")
    shutil.rmtree(logs, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
