"""EventHandler: react to published events, one Kafka consumer group per handler.

A handler's ``name`` is its identity: its consumer group, its checkpoints, its acknowledgements and its
parked events. Keep it stable across releases; a new name starts over from ``start_from``.

Example::

    class WelcomeEmails(EventHandler):
        name = "welcome-emails"
        start_from = "current"          # not the history: only accounts opened from now on

        def handle(self, event, metadata):
            match event:
                case AccountOpened(owner=owner):
                    send_welcome(owner)

Options (class attributes), in Commanded's terms:

- ``start_from``: ``"origin"`` (every event), ``"current"`` (events after the handler first started),
  or an event_number (events after it). Applied only when the handler first starts, and on reset.
- ``subscribe_to``: ``"all"`` or one stream id.
- ``concurrency``: how many partitions this process handles at once (each in order).
- ``ordering``: ``"global"`` (every event in event_number order, as Commanded's handlers see them: one
  active consumer per handler across all processes, standbys waiting) or ``"per_key"`` (in order per
  partition key, spread over the group's members). Default: global for ``concurrency`` 1 without
  ``partition_by``, per key otherwise (``ordering_of``).
- ``partition_by``: ``None`` keeps the relay's key (the stream id); a key source name (``"stream_id"``,
  ``"correlation_id"``, ``"metadata.<field>"``...) or a function ``(event, metadata) -> str`` orders events
  by that key instead: the worker republishes them to a topic keyed by it, in event_number order.
- ``consistency``: ``"strong"`` makes ``dispatch(..., consistency="strong")`` wait for this handler.
- ``on_poison``: ``"park"`` (the event and every later event of its key wait for an operator) or
  ``"dead_letter"`` (the event goes to ``<name>.dead-letter``; its key goes on).
- ``max_attempts``: failures of one event before the default ``error`` gives up.
- ``static_membership``: keep the member's partitions over a quick restart (``group.instance.id``).

Any of these options but ``name`` can also be given when the worker starts, as Commanded's
``start_link(start_from: :current)``: ``WelcomeEmails.configured(start_from="current")`` in Python, or
``tidings worker APP --set welcome-emails.start_from=current`` (``workers.overrides``). The class
attribute is the default; what is given at start is checked by the same rules (``validate_handler``).
``configured(state=...)`` gives each instance its initial ``state`` (Commanded's ``state:``).

Callbacks: ``init`` (per instance; may set ``self.state``), ``after_start``, ``handle`` (or
``handle_batch``), ``error``, ``before_reset``. ``handle`` may be ``async def``; a value it returns (other
than None) becomes the new ``state``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, Self

from eventstore.errors import ConfigurationError
from eventstore.routing import KEY_SOURCES
from workers.delivery import EventMetadata
from workers.failure import ErrorAnswer, FailureContext, default_answer

__all__ = [
    "START_OPTIONS",
    "EventHandler",
    "InvalidOverride",
    "Ordering",
    "PartitionBy",
    "StartFrom",
    "ordering_of",
    "start_options",
    "validate_handler",
]

StartFrom = Literal["origin", "current"] | int
Ordering = Literal["global", "per_key"]
PartitionBy = str | Callable[[Any, EventMetadata], "str | bytes"] | None

_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")

START_OPTIONS = (
    "start_from",
    "subscribe_to",
    "concurrency",
    "partition_by",
    "ordering",
    "consistency",
    "on_poison",
    "max_attempts",
    "static_membership",
    "state",
)
"""What ``configured`` (and ``--set``) may give a handler at start: its options but ``name`` (its
identity) and ``topics``, and its initial ``state``. A process manager adds ``PROCESS_MANAGER_OPTIONS``."""
PROCESS_MANAGER_OPTIONS = ("idle_timeout", "event_timeout")
"""A process manager's own options given at start (its instances' state comes from ``state_type``)."""


class InvalidOverride(ConfigurationError):
    """An option given at start names no handler or no option, or has a value its handler refuses.

    The message names the handler, the option and what to change, as for a class attribute.
    """


class EventHandler:
    """Subclass, set ``name``, and define ``handle(event, metadata)`` (or ``handle_batch``)."""

    name: ClassVar[str] = ""
    start_from: ClassVar[StartFrom] = "origin"
    subscribe_to: ClassVar[str] = "all"
    concurrency: ClassVar[int] = 1
    partition_by: ClassVar[PartitionBy] = None
    ordering: ClassVar[Ordering | None] = None
    """None: ``"global"`` for concurrency 1 without partition_by, else ``"per_key"``."""
    consistency: ClassVar[Literal["eventual", "strong"]] = "eventual"
    on_poison: ClassVar[Literal["park", "dead_letter"]] = "park"
    max_attempts: ClassVar[int] = 5
    static_membership: ClassVar[bool] = False
    topics: ClassVar[Sequence[str] | None] = None
    """The topics to read (default: every topic of the application's routing)."""
    given_at_start: ClassVar[Mapping[str, Any]] = {}
    """The options ``configured`` gave this class (empty for a class as written)."""

    def __init__(self, index: int = 0) -> None:
        self.index = index
        """Which of the ``concurrency`` instances of this process this is (0-based)."""
        initial = self.given_at_start.get("state")
        self.state: Any = copy.deepcopy(initial) if initial is not None else None

    @classmethod
    def configured(cls, **options: Any) -> type[Self]:
        """This handler with ``options`` given at start (Commanded's ``start_link(start_from: ...)``).

        Returns a subclass with the same name (the same consumer group, checkpoints and parked events)
        whose class attributes are ``options``; the class itself is unchanged. ``state`` is each
        instance's initial state (a deep copy per instance, before ``init``).

        Example::

            WorkerApp("bank", mapper, handlers=[Balances, WelcomeEmails.configured(start_from="current")])

        Raises:
            InvalidOverride: an option that cannot be given at start (``start_options`` lists those that
                can), or a value ``validate_handler`` refuses; the message says which and why.
        """
        allowed = start_options(cls)
        unknown = [option for option in options if option not in allowed]
        given = ", ".join(f"{option}={value!r}" for option, value in options.items())
        if unknown:
            raise InvalidOverride(
                f"handler {cls.name!r} ({cls.__qualname__}) has no option {', '.join(map(repr, unknown))} "
                f"to give at start; it takes {', '.join(allowed)}"
            )
        attributes: dict[str, Any] = {
            option: staticmethod(value) if option == "partition_by" and callable(value) else value
            for option, value in options.items()
            if option != "state"
        }
        attributes.update(
            __module__=cls.__module__,
            __qualname__=cls.__qualname__,
            __doc__=cls.__doc__,
            given_at_start={**cls.given_at_start, **options},
        )
        made = type(cls.__name__, (cls,), attributes)
        try:
            validate_handler(made)
        except ConfigurationError as exc:
            raise InvalidOverride(f"handler {cls.name!r} given {given} at start: {exc}") from None
        return made

    # --- callbacks ---------------------------------------------------------------------------------

    def init(self) -> None:
        """Called once per instance before it handles anything: set ``self.state`` or runtime options."""

    def after_start(self) -> None:
        """Called once per instance after the consumer has subscribed."""

    def handle(self, event: Any, metadata: EventMetadata, /) -> Any:
        """Handle one event. Raise to fail (``error`` decides what happens); return a new state or None."""
        raise NotImplementedError(f"{type(self).__qualname__} defines neither handle nor handle_batch")

    def handle_batch(self, batch: list[tuple[Any, EventMetadata]]) -> Any:
        """Handle consecutive events of one partition at once. Raise ``BatchFailed(index, error)`` to
        name the event that failed (others before it count as handled), or anything else to fail the
        batch's first event. The default calls ``handle`` for each."""
        raise NotImplementedError

    def error(self, error: BaseException, event: Any, context: FailureContext) -> ErrorAnswer:
        """What to do about a failure; by default retry with backoff, then park after ``max_attempts``."""
        return default_answer(error, context, self.max_attempts)

    def before_reset(self) -> None:
        """Called by ``tidings reset`` before the handler's position is rewound (drop derived state here)."""

    # --- introspection -----------------------------------------------------------------------------

    @classmethod
    def handles_batches(cls) -> bool:
        return cls.handle_batch is not EventHandler.handle_batch


class BatchFailed(Exception):
    """Raised by ``handle_batch``: the event at ``index`` failed with ``error``; those before it are done."""

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(f"event {index} of the batch failed: {error}")
        self.index = index
        self.error = error


def validate_handler(handler: type[EventHandler]) -> type[EventHandler]:
    """Check a handler class's options; raise ``ConfigurationError`` saying what to change."""
    where = handler.__qualname__
    if not isinstance(handler.name, str) or not _NAME.fullmatch(handler.name):
        raise ConfigurationError(
            f"{where}.name must be 1-200 of A-Z a-z 0-9 . _ - (it names the Kafka consumer group), "
            f"got {handler.name!r}"
        )
    start = handler.start_from
    if not (
        start in ("origin", "current")
        or (isinstance(start, int) and not isinstance(start, bool) and start >= 0)
    ):
        raise ConfigurationError(
            f"{where}.start_from must be 'origin', 'current' or an event_number >= 0, got {start!r}"
        )
    if not isinstance(handler.concurrency, int) or handler.concurrency < 1:
        raise ConfigurationError(
            f"{where}.concurrency must be a positive integer, got {handler.concurrency!r}"
        )
    if handler.consistency not in ("eventual", "strong"):
        raise ConfigurationError(
            f"{where}.consistency must be 'eventual' or 'strong', got {handler.consistency!r}"
        )
    if handler.on_poison not in ("park", "dead_letter"):
        raise ConfigurationError(
            f"{where}.on_poison must be 'park' or 'dead_letter', got {handler.on_poison!r}"
        )
    if not isinstance(handler.max_attempts, int) or handler.max_attempts < 1:
        raise ConfigurationError(f"{where}.max_attempts must be 1 or more, got {handler.max_attempts!r}")
    if not isinstance(handler.static_membership, bool):
        raise ConfigurationError(
            f"{where}.static_membership must be True or False, got {handler.static_membership!r}"
        )
    for option in PROCESS_MANAGER_OPTIONS:
        seconds = getattr(handler, option, None)
        if seconds is not None and (
            isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0
        ):
            raise ConfigurationError(f"{where}.{option} must be None or seconds > 0, got {seconds!r}")
    if not isinstance(handler.subscribe_to, str) or not handler.subscribe_to:
        raise ConfigurationError(f"{where}.subscribe_to must be 'all' or a stream id")
    by = handler.partition_by
    if handler.ordering not in (None, "global", "per_key"):
        raise ConfigurationError(f"{where}.ordering must be 'global' or 'per_key', got {handler.ordering!r}")
    if handler.ordering == "global" and (handler.concurrency != 1 or by is not None):
        raise ConfigurationError(
            f"{where}: global order runs one consumer in one lane, so it needs concurrency 1 and no "
            "partition_by; set ordering = 'per_key' for order per key instead"
        )
    if isinstance(by, str) and not (by in KEY_SOURCES or (by.startswith("metadata.") and len(by) > 9)):
        raise ConfigurationError(
            f"{where}.partition_by {by!r} is not a key source: use one of {', '.join(KEY_SOURCES)}, "
            "metadata.<field>, or a function (event, metadata) -> key"
        )
    if handler.consistency == "strong" and by not in (None, "stream_id", "category"):
        raise ConfigurationError(
            f"{where}: strong consistency needs each stream's events in order, so partition_by must keep "
            f"a stream on one partition (None, 'stream_id' or 'category'), not {by!r}"
        )
    if by is not None and not isinstance(by, str) and not callable(by):
        raise ConfigurationError(f"{where}.partition_by must be a key source name or a function")
    projection = _projection_base()
    if issubclass(handler, projection):
        if handler.project is projection.project and not handler.projects_batches():  # type: ignore[attr-defined]
            raise ConfigurationError(
                f"{where} must define project(event, metadata, connection) "
                "or project_batch(batch, connection)"
            )
    elif handler.handle is EventHandler.handle and not handler.handles_batches():
        raise ConfigurationError(f"{where} must define handle(event, metadata) or handle_batch(batch)")
    return handler


def start_options(handler: type[EventHandler]) -> tuple[str, ...]:
    """The options ``handler`` may be given when the worker starts (``configured``, ``--set``)."""
    from workers.process_manager import ProcessManager

    if issubclass(handler, ProcessManager):
        # An instance's state is its own (state_type), not the handler's.
        return (*(o for o in START_OPTIONS if o != "state"), *PROCESS_MANAGER_OPTIONS)
    return START_OPTIONS


def ordering_of(handler: type[EventHandler]) -> Ordering:
    """The order ``handler``'s events come in: its ``ordering``, else global when it handles one event
    at a time with the relay's key, per key otherwise."""
    if handler.ordering is not None:
        return handler.ordering
    return "global" if handler.concurrency == 1 and handler.partition_by is None else "per_key"


def _projection_base() -> type[EventHandler]:
    from workers.projection import Projection

    return Projection
