"""Middleware around every dispatch: ``before_dispatch``, ``after_dispatch``, ``after_failure``.

``before_dispatch`` runs in the order the middleware is given; ``after_dispatch`` and ``after_failure``
run in the reverse order, so each middleware wraps the ones after it. A middleware can ``halt`` the
pipeline in ``before_dispatch`` (the command is not executed) and ``respond`` with the value dispatch
returns, and ``assign`` values that later middleware and the events' metadata can use.
"""

from tidings.middleware.base import Middleware
from tidings.middleware.builtin import DEFAULT_MIDDLEWARE, CommandValidation, ExtractIdentity, LogDispatch
from tidings.middleware.consistency import ConsistencyGuarantee
from tidings.middleware.pipeline import Pipeline

__all__ = [
    "DEFAULT_MIDDLEWARE",
    "CommandValidation",
    "ConsistencyGuarantee",
    "ExtractIdentity",
    "LogDispatch",
    "Middleware",
    "Pipeline",
]
