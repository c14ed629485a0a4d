"""Travel booking: retries with backoff, a step timeout, a deadline, and compensation.

The hotel is booked first; the airline's API is flaky (retried with exponential
backoff, each attempt cut off after 2 seconds). When the flight cannot be booked
within its attempts, the hotel booking is cancelled and the trip is reported as
not booked. Run it against a server (``stepd serve``) with
``python examples/travel_booking.py``.
"""

from __future__ import annotations

import asyncio
import os
import random
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from stepd import Client, RetryPolicy, Worker, WorkflowContext, step, workflow
from stepd.errors import NonRetryableError, RetryExhaustedError


class Trip(BaseModel):
    trip_id: str
    traveller: str
    airline_failures: int = 0  # how many flight attempts fail before one succeeds
    sold_out: bool = False


class Booking(BaseModel):
    trip_id: str
    status: str
    hotel: str | None = None
    flight: str | None = None
    attempts: int = 0
    message: str = ""


class SoldOutError(NonRetryableError):
    """No seats left: retrying cannot help."""


_airline_calls: dict[str, int] = {}


@step
async def book_hotel(trip: Trip) -> str:
    return f"hotel-{trip.trip_id}"


@step(
    retry=RetryPolicy(
        4, delay="200ms", backoff="exponential", factor=2, max_delay="5s", jitter=0.1
    ),
    timeout="2s",
)
async def book_flight(trip: Trip) -> str:
    calls = _airline_calls[trip.trip_id] = _airline_calls.get(trip.trip_id, 0) + 1
    if trip.sold_out:
        raise SoldOutError(f"no seats left for {trip.traveller}")
    if calls <= trip.airline_failures:
        await asyncio.sleep(random.uniform(0, 0.05))
        raise ConnectionError(f"airline timeout (call {calls})")
    return f"flight-{trip.trip_id}"


@step
async def cancel_hotel(hotel: str) -> str:
    return f"cancelled {hotel}"


@workflow(name="travel_booking", execution_timeout="10m")
async def travel_booking(ctx: WorkflowContext, trip: Trip) -> Booking:
    hotel = await book_hotel(trip)
    try:
        flight = await book_flight(trip)
    except RetryExhaustedError as exhausted:  # every attempt failed
        await cancel_hotel(hotel)
        return Booking(
            trip_id=trip.trip_id,
            status="not booked",
            attempts=exhausted.attempts,
            message=exhausted.error_message,
        )
    except SoldOutError as sold_out:  # non-retryable: failed on its first attempt
        await cancel_hotel(hotel)
        return Booking(trip_id=trip.trip_id, status="not booked", attempts=1, message=str(sold_out))
    return Booking(trip_id=trip.trip_id, status="booked", hotel=hotel, flight=flight)


async def main() -> None:
    """Serve the workflow, book three trips, print each outcome."""
    address = os.environ.get("STEPD_ADDRESS", "127.0.0.1:50051")
    async with Worker(address, workflows=[travel_booking]) as worker, Client(address) as client:
        serving = asyncio.create_task(worker.run())
        deadline = datetime.now(UTC) + timedelta(minutes=5)  # the run fails if not done by then
        trips = [
            Trip(trip_id="t1", traveller="ada", airline_failures=2),
            Trip(trip_id="t2", traveller="grace", airline_failures=10),
            Trip(trip_id="t3", traveller="linus", sold_out=True),
        ]
        handles = [await client.trigger(travel_booking, t, deadline=deadline) for t in trips]
        for handle in handles:
            booking = await handle.result()
            detail = booking.flight or f"{booking.message} after {booking.attempts} attempt(s)"
            print(f"{booking.trip_id}: {booking.status} - {detail}")
        serving.cancel()


if __name__ == "__main__":
    asyncio.run(main())
