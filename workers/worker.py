"""Worker: one process running an application's handlers, with probes and metrics over HTTP.

A worker runs one ``HandlerRunner`` per selected handler (every handler of the app by default) and
serves, on one port:

- ``/healthz``: liveness, 200 while the process serves. A handler stopped by its error policy does not
  fail it: restarting the pod would only meet the same event again.
- ``/readyz``: readiness, 200 only while every handler runs, else 503; the JSON body lists each handler's
  state (starting, running, stopped, failed), reason and assigned partitions.
- ``/metrics``: the Prometheus exposition of the process (``workers.metrics`` and the store's).

``tidings worker bank.workers:app`` is this class behind a command line; ``load_app`` finds the
``WorkerApp`` that ``module:attribute`` names.

Example::

    worker = Worker(app, WorkerConfig(store, "kafka:9092"), handlers=["balances"], port=8000)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    worker.run(until=stopping)      # starts, serves, and stops gracefully once stopping is set
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from eventstore.errors import ConfigurationError
from tidings.dispatch import Application
from workers.app import Tenant, WorkerApp, WorkerConfig
from workers.command_receiver import CommandReceiver
from workers.handler import EventHandler
from workers.handler_states import HandlerStates
from workers.probes import Probes
from workers.runner import HandlerRunner, HandlerStatus
from workers.scheduling import ScheduledCommands, Scheduler

__all__ = ["AppNotFound", "Worker", "load_app"]

log = logging.getLogger("workers.worker")

WATCH_SECONDS = 0.5
RESTART_CHECK_SECONDS = 1.0
"""How often a worker with a stopped handler looks for `tidings handler restart` requests."""
"""How often ``run`` looks for handlers that stopped or failed, to log them."""


class AppNotFound(ConfigurationError):
    """``module:attribute`` does not name a ``WorkerApp`` (or a zero-argument callable returning one)."""


def load_app(spec: str, tenant: Tenant | None = None) -> WorkerApp:
    """The ``WorkerApp`` that ``spec`` (``module:attribute``, e.g. ``bank.workers:app``) names.

    The attribute may be a dotted path inside the module, and may be a zero-argument callable that
    returns the app (a factory reading its settings from the environment). With ``tenant``, it must be
    a factory taking the ``Tenant``: it builds that tenant's app (its topics and handler names).

    Raises:
        AppNotFound: ``spec`` is malformed, the module or attribute is missing, importing or calling
            it failed, or it is not a WorkerApp.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise AppNotFound(
            f"APP must be module:attribute naming a WorkerApp (e.g. bank.workers:app), got {spec!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise AppNotFound(
                f"cannot import {module_name!r}: no module named {exc.name!r} "
                "(run from the directory that holds it, or install it)"
            ) from None
        raise AppNotFound(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise AppNotFound(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    found: Any = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            apps = sorted(name for name, value in vars(module).items() if isinstance(value, WorkerApp))
            hint = f"; its WorkerApps: {', '.join(apps)}" if apps else ""
            raise AppNotFound(f"module {module_name!r} has no attribute {attribute!r}{hint}") from None
    if isinstance(found, WorkerApp) and tenant is None:
        return found
    if tenant is not None and not (callable(found) and _takes_an_argument(found)):
        raise AppNotFound(
            f"{spec} cannot run per tenant: give a factory that takes the Tenant and builds its app "
            "(its topics, handler names and read-model tables), e.g. def build(tenant=None) -> WorkerApp"
        )
    if callable(found) and not isinstance(found, type):
        try:
            made = found(tenant) if tenant is not None else found()
        except Exception as exc:
            raise AppNotFound(f"calling {spec}() failed: {type(exc).__name__}: {exc}") from exc
        if isinstance(made, WorkerApp):
            return made
        raise AppNotFound(f"{spec}() returned {type(made).__name__}, not a WorkerApp")
    raise AppNotFound(
        f"{spec} is {type(found).__name__}, not a WorkerApp (or a zero-argument callable returning one)"
    )


def _takes_an_argument(factory: Any) -> bool:
    try:
        return bool(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return False


class Worker:
    """Runs handlers of ``app`` in this process: ``start()``, ``stop()``, ``statuses()``, or ``run()``.

    Args:
        handlers: names of the handlers to run (default: all of the app's).
        port: the port of ``/healthz``, ``/readyz`` and ``/metrics``; 0 picks a free one (see ``port``
            once started); None serves nothing.
        host: the interface to listen on (default: all).

    Raises:
        ConfigurationError: a name in ``handlers`` is not one of the app's (the message lists them), or
            the app has no handlers.
    """

    def __init__(
        self,
        app: WorkerApp,
        config: WorkerConfig,
        handlers: Sequence[str] | None = None,
        *,
        port: int | None = None,
        host: str = "0.0.0.0",  # noqa: S104 - the kubelet probes the pod's address
        tenants: Sequence[tuple[WorkerApp, WorkerConfig]] = (),
    ) -> None:
        self.app = app
        self.config = config
        # One part per tenant (each its own app, schema and store), or the app alone.
        self.parts = list(tenants) or [(app, config)]
        self.runners = [
            HandlerRunner(handler, part_app, part_config)
            for part_app, part_config in self.parts
            for handler in _select(part_app, _tenant_names(part_app, app, handlers))
        ]
        # With a router, the worker also fires scheduled commands (each exactly once across workers).
        self.schedulers = [
            Scheduler(
                Application(part_config.store, part_app.mapper, part_app.router),
                ScheduledCommands(part_config.store, part_app.router),
            )
            for part_app, part_config in self.parts
            if part_app.router is not None
        ]
        # Commands other applications send, each executed once (docs/process-managers.md).
        self.receivers = [
            CommandReceiver(part_app, part_config)
            for part_app, part_config in self.parts
            if part_app.receive_commands
        ]
        self._probes = Probes(self.readiness, host=host, port=port) if port is not None else None
        self._stopping = threading.Event()
        self._stopped = False

    # --- running -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Listen for probes (if a port was given), then start every handler.

        Raises:
            ConfigurationError: the port cannot be listened on.
        """
        if self._probes is not None:
            self._probes.start()
        for runner in self.runners:
            runner.start()
        for scheduler in self.schedulers:
            scheduler.start()
        for receiver in self.receivers:
            receiver.start()
        log.info(
            "worker started",
            extra={
                "app": self.app.name,
                "handlers": [r.name for r in self.runners],
                "receivers": [r.name for r in self.receivers],
            },
        )

    def stop(self, timeout: float | None = None) -> None:
        """Stop every handler gracefully (in-flight work finished and committed), then the probes.

        ``timeout`` bounds the whole stop (default: the config's ``shutdown_timeout`` plus 5 s).
        """
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()  # not ready from now on: traffic should go elsewhere
        for runner in self.runners:
            runner.stopping.set()  # all at once: each finishes its in-flight work in parallel
        for receiver in self.receivers:
            receiver.stopping.set()
        deadline = time.monotonic() + (self.config.shutdown_timeout + 5.0 if timeout is None else timeout)
        for runner in self.runners:
            runner.stop(max(0.0, deadline - time.monotonic()))
        for scheduler in self.schedulers:
            scheduler.stop(max(0.0, deadline - time.monotonic()))
        for receiver in self.receivers:
            receiver.stop(max(0.0, deadline - time.monotonic()))
        if self._probes is not None:
            self._probes.stop()
        log.info(
            "worker stopped",
            extra={"app": self.app.name, "handlers": {s.handler: s.state for s in self.statuses()}},
        )

    def run(self, until: threading.Event) -> None:
        """Start, run until ``until`` is set (a signal handler sets it), then stop gracefully.

        A handler that stops (its error policy answered Stop) or fails is logged once; the process stays
        up and ``/readyz`` reports it.
        """
        self.start()
        reported: set[str] = set()
        next_restart_check = 0.0
        try:
            while not until.wait(WATCH_SECONDS):
                down = [s for s in self.statuses() if s.state in ("stopped", "failed")]
                for status in down:
                    if status.handler not in reported:
                        reported.add(status.handler)
                        log.error(
                            "handler %s: the worker stays up and reports it not ready; see its reason, "
                            "fix the cause, then `tidings handler restart %s`",
                            status.state,
                            status.handler,
                            extra={"handler": status.handler, "state": status.state, "reason": status.reason},
                        )
                if down and time.monotonic() >= next_restart_check:
                    next_restart_check = time.monotonic() + RESTART_CHECK_SECONDS
                    for name in self._restarts_requested([s.handler for s in down]):
                        reported.discard(name)
                        self.restart(name)
        finally:
            self.stop()

    def restart(self, name: str) -> None:
        """Start the stopped (or failed) handler ``name`` again, from the position it kept."""
        index = next(i for i, runner in enumerate(self.runners) if runner.name == name)
        old = self.runners[index]
        old.stop(self.config.shutdown_timeout)
        runner = HandlerRunner(old.handler, old.app, old.config)
        self.runners[index] = runner
        HandlerStates(old.store).clear(name)
        runner.start()
        log.info("handler restarted on request", extra={"handler": name})

    def _restarts_requested(self, names: list[str]) -> list[str]:
        """Which of ``names`` an operator asked to restart: one question per store (per tenant)."""
        requested = []
        for _, config in self.parts:
            mine = [r.name for r in self.runners if r.config is config and r.name in names]
            if not mine:
                continue
            try:
                requested += HandlerStates(config.store).restarts_requested(mine)
            except Exception as exc:  # noqa: BLE001 - PostgreSQL away: asked again at the next check
                log.warning("cannot read restart requests", extra={"error": str(exc)})
        return requested

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- what it reports ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the probes listen on (the one picked when started with port 0)."""
        if self._probes is None:
            raise RuntimeError("the worker serves no probes: give it a port and start it")
        return self._probes.port

    def statuses(self) -> list[HandlerStatus]:
        """Each handler's state, reason and assigned partitions, as of now."""
        return [
            dataclasses.replace(runner.status, assigned=list(runner.status.assigned))
            for runner in self.runners
        ]

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether every handler runs (and the worker is not stopping), and the ``/readyz`` document."""
        statuses = self.statuses()
        ready = not self._stopping.is_set() and all(status.ready for status in statuses)
        return ready, {
            "ready": ready,
            "stopping": self._stopping.is_set(),
            "handlers": [
                {
                    "handler": s.handler,
                    "state": s.state,
                    "reason": s.reason,
                    "ordering": s.ordering,
                    "leading": s.leading,
                    "assigned": s.assigned,
                }
                for s in statuses
            ],
        }


def _tenant_names(part: WorkerApp, app: WorkerApp, names: Sequence[str] | None) -> Sequence[str] | None:
    """The handlers of a tenant's app that ``--handler NAME`` selects: NAME itself, or NAME behind the
    tenant's prefix (``acme.bank.balances`` for ``bank.balances``)."""
    if not names or part is app:
        return names
    chosen = [h.name for h in part.handlers if any(h.name == n or h.name.endswith(f".{n}") for n in names)]
    return chosen or list(names)  # none: _select says which names the tenant's app has


def _select(app: WorkerApp, names: Sequence[str] | None) -> list[type[EventHandler]]:
    if not app.handlers and app.receive_commands and not names:
        return []  # an application that only executes the commands other applications send
    if not app.handlers:
        raise ConfigurationError(f"the app {app.name!r} has no handlers to run")
    if not names:
        return list(app.handlers)
    available = [handler.name for handler in app.handlers]
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ConfigurationError(
            f"no handler named {', '.join(map(repr, unknown))}; this app has {available}"
        )
    return [app.handler(name) for name in dict.fromkeys(names)]
