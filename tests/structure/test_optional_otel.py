"""OpenTelemetry is an optional extra: without it the SDK, the server and
their commands work, traces are off, and asking for them says what to install."""

from __future__ import annotations

import subprocess
import sys

# Makes every `import opentelemetry...` fail, as in an install without stepd[otel].
NO_OTEL = "import sys; sys.modules['opentelemetry'] = None\n"


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", NO_OTEL + script, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_without_opentelemetry_the_sdk_and_the_server_load_and_make_no_spans() -> None:
    done = run(
        "import stepd, stepd.cli, stepd.server.server, stepd.server.cli\n"
        "from stepd import _tracing\n"
        "from stepd.v1 import worker_service_pb2\n"
        "assert not _tracing.available()\n"
        "task = worker_service_pb2.RunTask(run_id='r')\n"
        "task.trace_context.traceparent = '00-' + '1' * 32 + '-' + '2' * 16 + '-01'\n"
        "with _tracing.run_span(task) as span:\n"
        "    assert span is None\n"
        "    with _tracing.step_span('r', 'w', '1', 'a', 1) as step:\n"
        "        assert step is None\n"
        "        assert _tracing.current_context() is None\n"
        "assert not [m for m, v in sys.modules.items() if m.startswith('opentelemetry') and v]\n"
    )
    assert done.returncode == 0, done.stderr


def test_otel_flags_without_opentelemetry_say_what_to_install(tmp_path: object) -> None:
    serve = run(
        "from stepd.server.cli import main; sys.exit(main(sys.argv[1:]))",
        "serve", "--otel", "--address", "127.0.0.1:0", "--database", f"{tmp_path}/x.db",
    )  # fmt: skip
    assert serve.returncode == 1
    assert "--otel needs OpenTelemetry: pip install 'stepd[otel]'" in serve.stderr
    worker = run("from stepd.cli import main; sys.exit(main(sys.argv[1:]))", "x.py", "--otel")
    assert worker.returncode == 2
    assert "--otel needs OpenTelemetry: pip install 'stepd[otel]'" in worker.stderr
