"""The README example, the demo and the order-processing example really run."""

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from examples.order_processing import (
    LineItem,
    Order,
    Receipt,
    ShippingSpeed,
    process_order,
)
from stepd import Client, RunFailedError, RunStatus
from tests.e2e.harness import ROOT, Server, Stack

DECLINED_CARD = "4000000000000002"
GOOD_CARD = "4242424242424242"


def order(order_id: str, **changes) -> Order:
    fields = {
        "order_id": order_id,
        "customer_email": "ada@example.com",
        "card_number": GOOD_CARD,
        "address": "1 Main St",
        "items": [LineItem(sku="BOOK-1", quantity=2, unit_price_cents=1250)],
    } | changes
    return Order(**fields)


async def test_order_processing_example(stack: Stack, server: Server) -> None:
    stack.start_worker(server, ["examples.order_processing"])
    async with Client(server.address) as client:
        express, standard, digital, declined = await asyncio.gather(
            client.execute(process_order, order("o-express", shipping=ShippingSpeed.EXPRESS)),
            client.execute(process_order, order("o-standard")),
            client.execute(
                process_order,
                order(
                    "o-digital",
                    address="",
                    items=[LineItem(sku="EBOOK", quantity=1, unit_price_cents=999, digital=True)],
                ),
            ),
            client.execute(process_order, order("o-declined", card_number=DECLINED_CARD)),
        )
        out_of_stock = await client.trigger(
            process_order,
            order("o-sold-out", items=[LineItem(sku="SOLD-OUT", quantity=1, unit_price_cents=5)]),
        )
        with pytest.raises(RunFailedError):
            await asyncio.wait_for(out_of_stock.result(), 30)
        failed = await client.get_run(out_of_stock.run_id)
        invalid = await client.trigger(process_order, order("o-empty", items=[]))
        with pytest.raises(RunFailedError):
            await asyncio.wait_for(invalid.result(), 30)
        invalid_info = await client.get_run(invalid.run_id)

    assert isinstance(express, Receipt)
    assert express.status == "completed"
    assert express.amount_cents == 2500
    assert express.shipment is not None and express.shipment.method == "express"
    assert standard.shipment is not None and standard.shipment.method == "standard"
    assert digital.shipment is not None and digital.shipment.method == "download"
    assert digital.reservation_id is not None
    assert declined.status == "payment_declined"
    assert declined.payment_id is None and declined.shipment is None
    assert "declined" in declined.message
    assert failed.status is RunStatus.FAILED
    assert failed.error_type == "examples.order_processing.OutOfStockError"
    assert invalid_info.error_type == "examples.order_processing.InvalidOrderError"


def test_readme_quickstart_runs(server: Server) -> None:
    done = subprocess.run(
        [sys.executable, "examples/quickstart.py"],
        cwd=ROOT,
        env=os.environ | {"STEPD_ADDRESS": server.address},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Hello, world! 13"


def test_run_demo_exits_zero_and_prints_the_receipt(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "run_demo.py"), "--database", "demo.db"],
        cwd=tmp_path,  # the demo works from any directory
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "status     completed" in done.stdout
    assert "shipment   express by courier" in done.stdout
    assert done.stdout.rstrip().endswith("stopped worker and server")
    assert (tmp_path / "demo.db").exists()


def test_travel_booking_example_runs_as_a_script(server: Server) -> None:
    done = subprocess.run(
        [sys.executable, "examples/travel_booking.py"],
        cwd=ROOT,
        env=os.environ | {"STEPD_ADDRESS": server.address},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "t1: booked - flight-t1",
        "t2: not booked - airline timeout (call 4) after 4 attempt(s)",
        "t3: not booked - no seats left for linus after 1 attempt(s)",
    ]


def test_starting_runs_example(server: Server) -> None:
    done = subprocess.run(
        [sys.executable, "examples/starting_runs.py"],
        cwd=ROOT,
        env=os.environ | {"STEPD_ADDRESS": server.address},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "welcome mail sent to ada",
        "paused: True",
        "report frequent built",
        "report frequent built",
        "welcome mail sent to bob",
        "started on time: True",
    ]


def test_operating_runs_example(server: Server) -> None:
    """docs/operating-runs.md: retry after a fix, fork, bulk cancel, workers, delete."""
    done = subprocess.run(
        [sys.executable, "examples/operating_runs.py"],
        cwd=ROOT,
        env=os.environ | {"STEPD_ADDRESS": server.address},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "failed: card service URL is wrong (in charge)",
        "['reservation-7', 'payment-7', 'shipment-7'] {'reserve': 1, 'charge': 2, 'ship': 1}",
        "['reservation-7', 'payment-7', 'shipment-7'] {'reserve': 1, 'charge': 3, 'ship': 2}",
        "forked from the order: True",
        "would cancel 20, cancelled 20, then 0",
        "(('examples.order', '1'),) capacity 100 holds 0",
        "fork deleted",
    ]
