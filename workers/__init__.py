"""The Kafka runtime: event handlers, projections and process managers in consumer groups, and the CLI.

Example::

    from workers import EventHandler, WorkerApp

    class WelcomeEmails(EventHandler):
        name = "welcome-emails"

        def handle(self, event, metadata):
            ...

    app = WorkerApp("bank", mapper=mapper, handlers=[WelcomeEmails])   # tidings worker bank.workers:app

A process manager's routing answers (``Start``, ``Continue``, ``Stop``...) are in ``workers.process_routing``:
``Stop`` there ends an instance, where ``workers.Stop`` answers a failure by stopping the handler.
"""

from workers.app import Tenant, WorkerApp, WorkerConfig
from workers.delivery import EventMetadata, UndecodableMessage
from workers.execution import HandlerStopped
from workers.failure import ErrorAnswer, FailureContext, Park, Retry, Skip, Stop
from workers.handler import BatchFailed, EventHandler, InvalidOverride, ordering_of
from workers.handler_states import HandlerStates, StoppedHandler
from workers.health import Check, HealthReport, check_health
from workers.parking import ParkedEvent, ParkedEvents
from workers.process_manager import CommandFailed, EventTimeout, ProcessFailureContext, ProcessManager
from workers.projection import Projection
from workers.runner import HandlerRunner, HandlerStatus, HistoryUnavailable
from workers.scheduling import CancelSchedule, ScheduledCommands, ScheduleOnce, Scheduler
from workers.worker import Worker

__all__ = [
    # what users write
    "EventHandler",
    "Projection",
    "ProcessManager",
    "EventMetadata",
    "BatchFailed",
    # scheduled commands
    "ScheduleOnce",
    "CancelSchedule",
    "ScheduledCommands",
    "Scheduler",
    # answers to failures
    "ErrorAnswer",
    "FailureContext",
    "ProcessFailureContext",
    "Retry",
    "Skip",
    "Park",
    "Stop",
    # running them
    "WorkerApp",
    "WorkerConfig",
    "Tenant",
    "ordering_of",
    "Worker",
    "HandlerRunner",
    "HandlerStatus",
    # operating them
    "ParkedEvent",
    "ParkedEvents",
    "HandlerStates",
    "StoppedHandler",
    "Check",
    "HealthReport",
    "check_health",
    # errors
    "HandlerStopped",
    "HistoryUnavailable",
    "InvalidOverride",
    "CommandFailed",
    "EventTimeout",
    "UndecodableMessage",
]
