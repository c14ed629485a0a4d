"""Engine errors. The API edge maps each class to one gRPC status code.

EngineError
├── InvalidArgument      bad request field (names the field)
├── NotFound             unknown id (names the id)
├── AlreadyExists        custom run id taken
├── FailedPrecondition   valid request, wrong state (e.g. cancel a finished run)
│   └── HookAlreadyExecuted  a hook's token used a second time
├── ResourceExhausted    payload over the limit
└── Unimplemented        part of the contract this server does not serve yet
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of the errors the engine reports to callers."""


class InvalidArgument(EngineError):
    """A request field is malformed."""


class NotFound(EngineError):
    """The named object does not exist."""


class AlreadyExists(EngineError):
    """The object to create already exists."""


class FailedPrecondition(EngineError):
    """The request is valid but the object is in the wrong state for it."""


class HookAlreadyExecuted(FailedPrecondition):
    """The hook was executed before; a hook executes once."""


class ResourceExhausted(EngineError):
    """A size or count limit was exceeded."""


class Unavailable(EngineError):
    """The server is shutting down and takes no new work."""


class Unimplemented(EngineError):
    """The server does not implement this part of the contract yet."""
