"""Sends OpenTelemetry spans where the standard environment variables say.

Used by ``stepd serve --otel``: the server checks the settings as it starts, and
its span export process (``span_export.py``) exports with them. The worker's
``stepd-worker --otel`` has its own copy: the SDK and the server share no code.
Needs the ``stepd[otel]`` extra; ``OtelMissing`` says so when it is absent.

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
from typing import Any


class OtelMissing(ImportError):
    """The OpenTelemetry SDK is not installed."""


def exporters() -> list[Any]:
    """The span exporters the environment names (none for ``none``); raises
    ``OtelMissing`` without the SDK or the exporter's package, ValueError for
    an exporter or protocol it does not know."""
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        raise OtelMissing(
            f"--otel needs OpenTelemetry: pip install 'stepd[otel]' ({exc})"
        ) from None
    return _exporters()


def tracer_provider(default_service_name: str, exporting: list[Any], **options: Any) -> Any:
    """A tracer provider that batches its spans to each of ``exporting``, for a
    process named by ``OTEL_SERVICE_NAME`` or else ``default_service_name``;
    ``options`` go to the SDK's ``TracerProvider`` (sampler, id_generator)."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    given = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: default_service_name}
    provider = TracerProvider(resource=Resource.create(given), **options)
    for exporter in exporting:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


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
