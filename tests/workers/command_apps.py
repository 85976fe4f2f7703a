"""Two applications that talk by commands: ``orders`` asks ``payments`` to charge, ``payments`` answers.

``tidings worker tests.workers.command_apps:build_orders`` and ``...:build_payments``, with the names from
the environment: ``TIDINGS_TEST_ORDERS_APP``, ``TIDINGS_TEST_PAYMENTS_APP`` (each app's name: its events
topic ``<name>.events`` and commands topic ``<name>.commands``) and ``TIDINGS_TEST_PREFIX``.

- orders: ``PlaceOrder`` -> ``OrderPlaced``; the ``checkout`` process manager starts on it and sends
  ``ChargePayment`` to payments (external, keyed by payment_id); ``MarkPaid`` -> ``OrderPaid`` stops it.
- payments: ``ChargePayment`` -> ``PaymentCharged`` (every time: a second execution would show); the
  ``replies`` process manager sends ``MarkPaid`` back to orders (external, keyed by order_id).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, ClassVar

from tidings import EventMapper, JsonCodec, TypeRegistry
from tidings.router import Router
from workers.app import WorkerApp
from workers.process_manager import External, ProcessManager
from workers.process_routing import Start, Stop

registry = TypeRegistry(namespace="cmdtest")
mapper = EventMapper(JsonCodec(registry))


@dataclass(frozen=True)
class PlaceOrder:
    order_id: uuid.UUID
    amount: Decimal


@dataclass(frozen=True)
class MarkPaid:
    order_id: uuid.UUID
    payment_id: uuid.UUID


@dataclass(frozen=True)
class ChargePayment:
    payment_id: uuid.UUID
    order_id: uuid.UUID
    amount: Decimal


@registry.register
@dataclass(frozen=True)
class OrderPlaced:
    order_id: uuid.UUID
    amount: Decimal


@registry.register
@dataclass(frozen=True)
class OrderPaid:
    order_id: uuid.UUID
    payment_id: uuid.UUID


@registry.register
@dataclass(frozen=True)
class PaymentCharged:
    payment_id: uuid.UUID
    order_id: uuid.UUID
    amount: Decimal


@dataclass(frozen=True)
class Order:
    placed: bool = False
    paid: bool = False

    def execute(self, command: Any) -> Any:
        match command:
            case PlaceOrder():
                return None if self.placed else OrderPlaced(command.order_id, command.amount)
            case MarkPaid():
                return None if self.paid else OrderPaid(command.order_id, command.payment_id)
        raise TypeError(type(command).__qualname__)

    def apply(self, event: Any) -> Order:
        match event:
            case OrderPlaced():
                return replace(self, placed=True)
            case OrderPaid():
                return replace(self, paid=True)
        return self


@dataclass(frozen=True)
class Payment:
    charges: int = 0

    def execute(self, command: Any) -> Any:
        # Not idempotent on purpose: a command executed twice charges twice, and the test sees it.
        return PaymentCharged(command.payment_id, command.order_id, command.amount)

    def apply(self, event: Any) -> Payment:
        return replace(self, charges=self.charges + 1)


orders_router = Router()
orders_router.dispatch([PlaceOrder, MarkPaid], to=Order, identity="order_id", identity_prefix="order-")
payments_router = Router()
payments_router.dispatch(ChargePayment, to=Payment, identity="payment_id", identity_prefix="payment-")


def payment_for(order_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(order_id, "payment")


def build_orders() -> WorkerApp:
    name = os.environ["TIDINGS_TEST_ORDERS_APP"]
    payments = os.environ["TIDINGS_TEST_PAYMENTS_APP"]
    prefix = os.environ["TIDINGS_TEST_PREFIX"]

    class Checkout(ProcessManager):
        name = f"{prefix}checkout"
        concurrency = 2
        external: ClassVar[Any] = {ChargePayment: External(payments, identity="payment_id")}

        def interested(self, event: Any) -> Any:
            match event:
                case OrderPlaced(order_id=order):
                    return Start(str(order))
                case OrderPaid(order_id=order):
                    return Stop(str(order))
            return None

        def handle(self, state: Any, event: Any) -> Any:
            if isinstance(event, OrderPlaced):
                return ChargePayment(payment_for(event.order_id), event.order_id, event.amount)
            return None

        def apply(self, state: Any, event: Any) -> Any:
            return {"status": "charging"} if isinstance(event, OrderPlaced) else state

    return WorkerApp(name, mapper=mapper, handlers=[Checkout], router=orders_router, receive_commands=True)


def build_payments() -> WorkerApp:
    name = os.environ["TIDINGS_TEST_PAYMENTS_APP"]
    orders = os.environ["TIDINGS_TEST_ORDERS_APP"]
    prefix = os.environ["TIDINGS_TEST_PREFIX"]

    class Replies(ProcessManager):
        """Tells the orders application that a payment was charged: the reply is a command too."""

        name = f"{prefix}replies"
        concurrency = 2
        external: ClassVar[Any] = {MarkPaid: External(orders, identity="order_id")}

        def interested(self, event: Any) -> Any:
            return Start(str(event.payment_id)) if isinstance(event, PaymentCharged) else None

        def handle(self, state: Any, event: Any) -> Any:
            return MarkPaid(event.order_id, event.payment_id)

        def after_command(self, state: Any, command: object) -> bool:
            return False  # answered: the instance is done

    return WorkerApp(name, mapper=mapper, handlers=[Replies], router=payments_router, receive_commands=True)
