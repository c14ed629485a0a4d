"""The frame every ``stepd NOUN VERB`` command runs in: its parser, its connection,
its errors and exit codes.

A command is a ``Verb``: a noun (``runs``), a name (``list``), the arguments it
adds and the function that runs it. Modules list their verbs in ``VERBS``;
``stepd.server.ops_cli`` gathers them, so a new noun or a new verb of an
existing noun is one more module.

Exit codes: 0 done; 1 the server refused the call or could not be reached (one
line on stderr: ``stepd: ADDRESS: CODE: message``); 2 bad usage (argparse, a
value that is not JSON); 3 the run that ``--wait`` or ``--follow`` watched ended
failed or cancelled; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from stepd.server.security.channel import ClientSettings, add_arguments, settings_from
from stepd.v1 import workflow_service_pb2_grpc

EXIT_OK = 0
EXIT_FAILED_CALL = 1
EXIT_USAGE = 2
EXIT_RUN_FAILED = 3
EXIT_INTERRUPTED = 130

#: Seconds a unary call may take.
CALL_TIMEOUT = 30.0

Resp = TypeVar("Resp")


class CommandError(Exception):
    """A command cannot go on; ``str()`` is the one line to print."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED_CALL) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Connection:
    """The channel to a server (opened on first use) and the calls made over it."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self._channel: grpc.Channel | None = None
        self._stub: workflow_service_pb2_grpc.WorkflowServiceStub | None = None

    @property
    def stub(self) -> workflow_service_pb2_grpc.WorkflowServiceStub:
        """The WorkflowService stub."""
        if self._stub is None:
            try:
                self._channel = self.settings.channel()
            except ValueError as exc:
                raise CommandError(str(exc), EXIT_USAGE) from None
            self._stub = workflow_service_pb2_grpc.WorkflowServiceStub(self._channel)
        return self._stub

    def call(
        self, method: Callable[..., Resp], request: Any, *, timeout: float = CALL_TIMEOUT
    ) -> Resp:
        """Make one unary call with the API key; a gRPC error becomes a CommandError."""
        try:
            return method(request, metadata=self.settings.metadata, timeout=timeout)
        except grpc.RpcError as exc:
            raise self.failed(exc) from None

    def stream(
        self, method: grpc.UnaryStreamMultiCallable[Any, Resp], request: Any
    ) -> Iterator[Resp]:
        """The responses of a server stream; a gRPC error becomes a CommandError."""
        responses = method(request, metadata=self.settings.metadata)
        try:
            yield from responses
        except grpc.RpcError as exc:
            raise self.failed(exc) from None
        finally:
            responses.cancel()  # type: ignore[no-untyped-call]  # grpc stubs

    def failed(self, exc: grpc.RpcError) -> CommandError:
        """The one-line error for a failed call."""
        code = exc.code() if isinstance(exc, grpc.Call) else None
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        name = code.name if code is not None else "UNKNOWN"
        return CommandError(f"{self.settings.address}: {name}: {details}")

    def close(self) -> None:
        """Close the channel."""
        if self._channel is not None:
            self._channel.close()


@dataclass(frozen=True, slots=True)
class Verb:
    """One command: ``stepd NOUN NAME``."""

    noun: str
    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Connection, argparse.Namespace], int]


def add_nouns(
    commands: Any, nouns: dict[str, str], verbs: list[Verb], default_address: str
) -> None:
    """Add a parser per noun (``nouns``: name -> help) with a subcommand per verb."""
    groups: dict[str, Any] = {}
    for noun, text in nouns.items():
        parser = commands.add_parser(noun, help=text, allow_abbrev=False)
        groups[noun] = parser.add_subparsers(dest=f"{noun}_command", required=True)
    for verb in verbs:
        parser = groups[verb.noun].add_parser(verb.name, help=verb.help, allow_abbrev=False)
        verb.arguments(parser)
        add_arguments(parser, default_address)
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
        parser.set_defaults(ops_verb=verb)


def run(args: argparse.Namespace, default_address: str) -> int:
    """Run the verb the arguments chose; the exit code."""
    verb: Verb = args.ops_verb
    connection = Connection(settings_from(args, default_address))
    try:
        return verb.run(connection, args)
    except CommandError as exc:
        print(f"stepd: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. piped into head
        return EXIT_OK
    finally:
        connection.close()
