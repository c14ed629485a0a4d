"""Order processing: validate, pay and reserve in parallel, ship, compensate on decline.

Every external call is simulated (deterministic, no network), so the example
runs anywhere. Serve it with ``stepd-worker examples.order_processing``;
``examples/run_demo.py`` does that for you.

The flow:

1. ``validate_order`` checks the order and computes the total.
2. ``charge_card`` and ``reserve_inventory`` run in parallel (``asyncio.gather``).
3. If the card is declined, ``release_inventory`` undoes the reservation (the
   compensation) and the run completes with a ``payment_declined`` receipt.
   If the reservation fails, ``refund_payment`` undoes the charge and the
   error is re-raised, so the run fails.
4. Shipping depends on the order: digital goods get download links instead,
   express orders ship by courier, the rest by standard post.
"""

import asyncio
import hashlib
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

from stepd import WorkflowContext, step, workflow

#: Card numbers that the simulated payment provider declines.
DECLINED_CARDS = frozenset({"4000000000000002"})
#: SKUs that the simulated warehouse has run out of.
OUT_OF_STOCK = frozenset({"SOLD-OUT"})


class ShippingSpeed(StrEnum):
    """How a physical order ships."""

    STANDARD = "standard"
    EXPRESS = "express"


class LineItem(BaseModel):
    """One product line of an order."""

    sku: str
    quantity: int = Field(gt=0)
    unit_price_cents: int = Field(ge=0)
    digital: bool = False


class Order(BaseModel):
    """The workflow's input."""

    order_id: str
    customer_email: str
    card_number: str
    items: list[LineItem]
    shipping: ShippingSpeed = ShippingSpeed.STANDARD
    address: str = ""


class Payment(BaseModel):
    """A captured card payment."""

    payment_id: str
    amount_cents: int


class Reservation(BaseModel):
    """Stock held for the physical items of an order."""

    reservation_id: str
    skus: list[str]


class Shipment(BaseModel):
    """How the goods reach the customer."""

    method: Literal["standard", "express", "download"]
    carrier: str
    tracking_code: str


class Receipt(BaseModel):
    """The workflow's result."""

    order_id: str
    status: Literal["completed", "payment_declined"]
    amount_cents: int
    payment_id: str | None = None
    reservation_id: str | None = None
    shipment: Shipment | None = None
    message: str = ""


class InvalidOrderError(ValueError):
    """The order cannot be processed as given."""


class PaymentDeclinedError(Exception):
    """The card issuer refused the charge."""


class OutOfStockError(Exception):
    """The warehouse cannot reserve an item."""


def _reference(prefix: str, *parts: str) -> str:
    """Derive a stable id from the order, as a real provider's id would be."""
    digest = hashlib.sha256("/".join(parts).encode()).hexdigest()[:12]
    return f"{prefix}_{digest}"


async def _simulated_io() -> None:
    """Stand in for a network call."""
    await asyncio.sleep(0.005)


@step
async def validate_order(order: Order) -> int:
    """Check the order and return its total in cents."""
    if not order.items:
        raise InvalidOrderError(f"order {order.order_id} has no items")
    if any(not item.digital for item in order.items) and not order.address:
        raise InvalidOrderError(f"order {order.order_id} has physical items but no address")
    return sum(item.quantity * item.unit_price_cents for item in order.items)


@step
async def charge_card(order: Order, amount_cents: int) -> Payment:
    """Charge the customer's card (simulated)."""
    await _simulated_io()
    if order.card_number in DECLINED_CARDS:
        raise PaymentDeclinedError(f"card ending {order.card_number[-4:]} was declined")
    return Payment(payment_id=_reference("pay", order.order_id), amount_cents=amount_cents)


@step
async def reserve_inventory(order: Order) -> Reservation:
    """Hold stock for the physical items (simulated)."""
    await _simulated_io()
    skus = [item.sku for item in order.items if not item.digital]
    missing = [sku for sku in skus if sku in OUT_OF_STOCK]
    if missing:
        raise OutOfStockError(f"out of stock: {', '.join(missing)}")
    return Reservation(reservation_id=_reference("res", order.order_id), skus=skus)


@step
async def release_inventory(reservation: Reservation) -> None:
    """Compensation: give the reserved stock back (simulated)."""
    await _simulated_io()


@step
async def refund_payment(payment: Payment) -> None:
    """Compensation: refund a captured payment (simulated)."""
    await _simulated_io()


@step
async def ship_express(order: Order, reservation: Reservation) -> Shipment:
    """Book a courier for next-day delivery (simulated)."""
    await _simulated_io()
    code = _reference("EXP", order.order_id, reservation.reservation_id)
    return Shipment(method="express", carrier="courier", tracking_code=code)


@step
async def ship_standard(order: Order, reservation: Reservation) -> Shipment:
    """Hand the parcel to the postal service (simulated)."""
    await _simulated_io()
    code = _reference("STD", order.order_id, reservation.reservation_id)
    return Shipment(method="standard", carrier="post", tracking_code=code)


@step
async def send_download_links(order: Order) -> Shipment:
    """E-mail download links for digital goods (simulated)."""
    await _simulated_io()
    code = _reference("DL", order.order_id, order.customer_email)
    return Shipment(method="download", carrier="email", tracking_code=code)


def _raise_control_flow(*outcomes: object) -> None:
    """Re-raise anything that is not an ordinary error (e.g. cancellation).

    ``asyncio.gather(..., return_exceptions=True)`` returns every exception,
    including the BaseException signals the runtime uses; those must go on.
    """
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
            raise outcome


@workflow(name="orders.process")
async def process_order(ctx: WorkflowContext, order: Order) -> Receipt:
    """Take an order from validation to shipment, undoing work when payment fails."""
    amount = await validate_order(order)

    # Both calls start at once; return_exceptions lets us see both outcomes,
    # so we know what to undo when one of them failed.
    payment, reservation = await asyncio.gather(
        charge_card(order, amount), reserve_inventory(order), return_exceptions=True
    )
    _raise_control_flow(payment, reservation)

    if isinstance(payment, PaymentDeclinedError):
        if isinstance(reservation, Reservation):
            await release_inventory(reservation)
        return Receipt(
            order_id=order.order_id,
            status="payment_declined",
            amount_cents=amount,
            message=str(payment),
        )
    if isinstance(reservation, BaseException):
        if isinstance(payment, Payment):
            await refund_payment(payment)
        raise reservation
    if isinstance(payment, BaseException):
        if isinstance(reservation, Reservation):
            await release_inventory(reservation)
        raise payment

    if not reservation.skus:
        shipment = await send_download_links(order)
    elif order.shipping is ShippingSpeed.EXPRESS:
        shipment = await ship_express(order, reservation)
    else:
        shipment = await ship_standard(order, reservation)

    return Receipt(
        order_id=order.order_id,
        status="completed",
        amount_cents=amount,
        payment_id=payment.payment_id,
        reservation_id=reservation.reservation_id,
        shipment=shipment,
        message=f"{len(order.items)} item(s), shipped via {shipment.carrier}",
    )
