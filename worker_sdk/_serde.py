"""What crosses the wire: JSON payloads and recorded errors.

Values are serialized with a pydantic ``TypeAdapter`` of their annotated type
(cached per type), so pydantic models, dataclasses and primitives round-trip;
``Any`` (no annotation) gives plain JSON values back. An empty JSON text means
``null``.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import sys
import traceback
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

from stepd.errors import PayloadError, StepFailedError, StepTimeoutError
from stepd.v1 import types_pb2

ANY_ADAPTER: TypeAdapter[Any] = TypeAdapter(Any)


@functools.cache
def _cached_adapter(tp: Any) -> TypeAdapter[Any]:
    return TypeAdapter(tp)


def adapter_for(tp: Any) -> TypeAdapter[Any]:
    """Return the TypeAdapter for an annotation, cached per type."""
    if tp is Any:
        return ANY_ADAPTER
    try:
        return _cached_adapter(tp)
    except TypeError:  # unhashable annotation (e.g. Annotated with a dict): not cached
        return TypeAdapter(tp)


def dumps(value: Any, adapter: TypeAdapter[Any] = ANY_ADAPTER) -> str:
    """Serialize ``value`` to JSON text; raise PayloadError if it cannot be."""
    try:
        # No type-mismatch warnings: a value of another shape (a dict for a model)
        # is written as inferred and checked when it is validated back.
        return adapter.dump_json(value, warnings=False).decode()
    except (PydanticSerializationError, ValueError, TypeError) as exc:
        raise PayloadError(f"cannot serialize {type(value).__qualname__} to JSON: {exc}") from exc


def dump_input(value: Any, adapter: TypeAdapter[Any]) -> str:
    """Validate a typed workflow's input (a clear error before any run exists), then
    serialize it."""
    if adapter is not ANY_ADAPTER:
        try:
            value = adapter.validate_python(value)
        except ValidationError as exc:
            raise PayloadError(
                f"the input does not match the workflow's input type: {exc}"
            ) from exc
    return dumps(value, adapter)


def loads(text: str, adapter: TypeAdapter[Any] = ANY_ADAPTER) -> Any:
    """Parse JSON text (empty means null) into the adapter's type; raise PayloadError."""
    try:
        return adapter.validate_json(text or "null")
    except ValidationError as exc:
        raise PayloadError(f"payload does not match the expected type: {exc}") from exc


def payload_text(payload: types_pb2.Payload) -> str:
    """Return a payload's JSON text; raise PayloadError for encodings the SDK lacks."""
    if payload.encoding:
        raise PayloadError(f"unsupported payload encoding {payload.encoding!r}")
    return payload.json


def qualified_name(exc_type: type[BaseException]) -> str:
    """Return ``module.QualName`` for an exception type (``builtins.ValueError``)."""
    return f"{exc_type.__module__}.{exc_type.__qualname__}"


STEP_TIMEOUT_TYPE = "stepd.StepTimeoutError"
"""The protocol's type name of a timed-out step attempt (the server records it too)."""


def error_type_name(exc: BaseException) -> str:
    """The recorded type of an exception: its qualified name, or a protocol name."""
    if type(exc) is StepTimeoutError:
        return STEP_TIMEOUT_TYPE
    return qualified_name(type(exc))


#: The longest error texts the server keeps (characters); longer ones are cut here,
#: so that no error makes a stream message larger than the server accepts.
MAX_ERROR_TYPE = 200
MAX_ERROR_MESSAGE = 16 * 1024
MAX_ERROR_TRACEBACK = 64 * 1024


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_info(exc: BaseException, *, step_key: str = "", attempt: int = 0) -> types_pb2.ErrorInfo:
    """Describe an exception as an ErrorInfo (type, message, traceback)."""
    return types_pb2.ErrorInfo(
        type=_cut(error_type_name(exc), MAX_ERROR_TYPE),
        message=_cut(str(exc), MAX_ERROR_MESSAGE),
        traceback=_cut("".join(traceback.format_exception(exc)), MAX_ERROR_TRACEBACK),
        step_key=step_key,
        attempt=attempt,
    )


def rebuild_error(error_type: str, message: str) -> Exception:
    """Rebuild a recorded exception as ``cls(message)``.

    The type is found by its qualified name; when it cannot be imported, is not
    an ``Exception`` subclass, or refuses a single message argument, a
    StepFailedError carrying the type and message is returned instead.
    """
    cls = StepTimeoutError if error_type == STEP_TIMEOUT_TYPE else _find_exception_type(error_type)
    if cls is not None:
        try:
            return cls(message)
        except Exception:
            pass
    return StepFailedError(error_type, message)


def _find_exception_type(qualified: str) -> type[Exception] | None:
    parts = qualified.split(".")
    # The module is the longest importable prefix; the rest is the qualname.
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        module = sys.modules.get(module_name)
        if module is None:
            try:
                module = importlib.import_module(module_name)
            except Exception:
                continue
        obj: Any = module
        for attr in parts[split:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, type) and issubclass(obj, Exception):
            return obj
        return None
    if len(parts) == 1:  # a bare name: try builtins
        obj = getattr(builtins, qualified, None)
        if isinstance(obj, type) and issubclass(obj, Exception):
            return obj
    return None
