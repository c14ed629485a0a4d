"""Sends OpenTelemetry spans where the standard environment variables say.

Used by ``stepd-worker --otel`` (the server's ``stepd serve --otel`` has its
own copy: the SDK and the server share no code). Needs the ``stepd[otel]``
extra; ``OtelMissing`` says so when it is absent.

Read from the environment (https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/):
``OTEL_TRACES_EXPORTER`` (``otlp``, the default; ``console``; ``none``; a
comma-separated list), ``OTEL_EXPORTER_OTLP_PROTOCOL`` /
``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` (``http/protobuf``, the default, or
``grpc``), and by the exporters themselves ``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_HEADERS`` and the rest; ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES`` name the process (default service name: the
program's); ``OTEL_BSP_*`` tune the batching.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


class OtelMissing(ImportError):
    """The OpenTelemetry SDK is not installed."""


def configure(default_service_name: str) -> Callable[[], None]:
    """Install a tracer provider that exports spans as the environment says
    (none when no exporter is named); return the function that flushes and
    shuts it down."""
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise OtelMissing(
            f"--otel needs OpenTelemetry: pip install 'stepd[otel]' ({exc})"
        ) from None
    exporters = _exporters()
    if not exporters:
        # OTEL_TRACES_EXPORTER=none: spans would go nowhere, so none are made
        # (without a provider, the API's spans are no-ops and stepd skips them).
        return lambda: None
    given = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: default_service_name}
    provider = TracerProvider(resource=Resource.create(given))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider.shutdown


def _exporters() -> list[Any]:
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp")
    found: list[Any] = []
    for name in (part.strip().lower() for part in names.split(",")):
        if name in ("", "none"):
            continue
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            found.append(ConsoleSpanExporter())
        elif name == "otlp":
            found.append(_otlp())
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER={names!r}: use otlp, console or none")
    return found


def _otlp() -> Any:
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    )
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        elif protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
                OTLPSpanExporter,
            )
        else:
            raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: use http/protobuf or grpc")
    except ImportError as exc:
        raise OtelMissing(
            f"the OTLP exporter is missing: pip install 'stepd[otel]' ({exc})"
        ) from None
    return OTLPSpanExporter()
