"""The server's Prometheus metrics.

Counters and histograms are updated as the engine reports runs and steps
(``ServerMetrics`` is an ``EngineObserver``); gauges (ready runs, workers,
timers, the store's commits) are read when Prometheus scrapes, so the hot path
pays for none of them. The flow-control gauges (what waits under each limit)
are read from the store before a scrape (``refresh``), at most once a second.
Each server has its own registry, so several servers in one process (tests)
do not share numbers.

Workflow names become label values; past ``MAX_WORKFLOW_LABELS`` distinct
names the rest are counted under ``"other"`` so that a caller triggering
made-up workflows cannot grow the metrics without bound.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from stepd.server.domain import RunRecord, RunStatus, StepRow
from stepd.server.domain_flow import FlowLimitKind, FlowLimitState
from stepd.server.engine.engine import Engine

log = logging.getLogger("stepd.metrics")

#: Flow-control gauges are read from the store at most this often (seconds).
FLOW_REFRESH_SECONDS = 1.0
#: The most distinct workflow label values; later names count as "other".
MAX_WORKFLOW_LABELS = 500
OTHER = "other"
#: Run durations range from milliseconds to days.
RUN_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400, 604800)
STEP_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 3600)
QUEUE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300)
# The *_created series (a timestamp per counter) say nothing an operator needs.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in the library
_ENDED = {
    RunStatus.COMPLETED: "completed",
    RunStatus.FAILED: "failed",
    RunStatus.CANCELLED: "cancelled",
}


class ServerMetrics:
    """The metrics of one server: hears the engine, reads gauges at scrape time."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._workflows: set[str] = set()
        # Labelled children by (metric, label values): .labels() costs a lock and
        # a few microseconds per call, a dict lookup far less.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # When each run queued here became ready (monotonic seconds).
        self._ready_since: dict[str, float] = {}
        self._started = Counter(
            "stepd_runs_started",
            "Runs handed to a worker for the first time.",
            ["workflow"],
            registry=self.registry,
        )
        self._ended = Counter(
            "stepd_runs_ended",
            "Runs that ended, by status (completed, failed, cancelled).",
            ["workflow", "status"],
            registry=self.registry,
        )
        self._run_seconds = Histogram(
            "stepd_run_duration_seconds",
            "Time from a run's creation to its end.",
            ["workflow", "status"],
            buckets=RUN_BUCKETS,
            registry=self.registry,
        )
        self._queue_seconds = Histogram(
            "stepd_queue_wait_seconds",
            "Time from a run becoming ready to being handed to a worker.",
            ["workflow"],
            buckets=QUEUE_BUCKETS,
            registry=self.registry,
        )
        self._steps = Counter(
            "stepd_steps_recorded",
            "Step outcomes recorded: result, error, or a failed attempt that is retried.",
            ["outcome"],
            registry=self.registry,
        )
        self._retries = Counter(
            "stepd_step_retries",
            "Step attempts after the first (recorded outcomes and failed attempts).",
            registry=self.registry,
        )
        self._step_seconds = Histogram(
            "stepd_step_duration_seconds",
            "A step attempt's duration, as its worker measured it.",
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.rpcs = Counter(
            "stepd_rpcs",
            "RPCs handled, by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "stepd_rpc_duration_seconds",
            "Time to handle an RPC (for streams: the stream's life).",
            ["method"],
            registry=self.registry,
        )
        self.registry.register(_EngineGauges(engine, self._ready_since))
        self._engine = engine
        self._flow = _FlowGauges()
        self.registry.register(self._flow)

    def exposition(self) -> bytes:
        """Every metric in Prometheus' text format."""
        return generate_latest(self.registry)

    async def refresh(self) -> None:
        """Read the flow-control limits and their queues from the store (at most
        once per FLOW_REFRESH_SECONDS; a failed read keeps the last numbers)."""
        if time.monotonic() - self._flow.read_at < FLOW_REFRESH_SECONDS:
            return
        self._flow.read_at = time.monotonic()
        try:
            self._flow.limits = await self._engine.flow_limits()
        except Exception as exc:
            log.warning("reading flow-control limits for /metrics failed: %s", exc)

    # -- EngineObserver --------------------------------------------------------

    def run_ready(self, run: RunRecord) -> None:
        """Note when the run became ready."""
        self._ready_since.setdefault(run.run_id, time.monotonic())

    def run_handed_out(self, run: RunRecord) -> None:
        """Count a first start, and the run's time in the queue."""
        workflow = self._label(run.workflow_name)
        since = self._ready_since.pop(run.run_id, None)
        if since is not None:
            self._child(self._queue_seconds, workflow).observe(time.monotonic() - since)
        if run.dispatch_count == 1:
            self._child(self._started, workflow).inc()

    def run_ended(self, run: RunRecord) -> None:
        """Count the end and the run's duration."""
        self._ready_since.pop(run.run_id, None)
        status = _ENDED.get(run.status)
        if status is None:
            return
        workflow = self._label(run.workflow_name)
        self._child(self._ended, workflow, status).inc()
        end = run.end_time if run.end_time is not None else run.update_time
        seconds = max(end - run.create_time, 0) / 1000
        self._child(self._run_seconds, workflow, status).observe(seconds)

    def step_recorded(self, step: StepRow) -> None:
        """Count the outcome and retries; observe the attempt's duration."""
        if step.attempt_only:
            outcome = "failed_attempt"
        else:
            outcome = "error" if step.error is not None else "result"
        self._child(self._steps, outcome).inc()
        if step.attempt > 1:
            self._retries.inc()
        if step.start_time is not None and step.end_time is not None:
            self._step_seconds.observe(max(step.end_time - step.start_time, 0) / 1000)

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _label(self, workflow: str) -> str:
        if workflow in self._workflows:
            return workflow
        if len(self._workflows) >= MAX_WORKFLOW_LABELS:
            return OTHER
        self._workflows.add(workflow)
        return workflow


class _FlowGauges(Collector):
    """The flow-control limits and their queues, as last read from the store."""

    def __init__(self) -> None:
        self.limits: list[FlowLimitState] = []
        self.read_at = -FLOW_REFRESH_SECONDS

    def collect(self) -> Iterator[Metric]:
        waiting = GaugeMetricFamily(
            "stepd_flow_waiting",
            "What waits under each flow-control limit: runs waiting for room "
            "(concurrency), for their turn (start_rate) or for their key to go quiet "
            "(debounce); turns taken and not begun (step_rate).",
            labels=["kind", "limit"],
        )
        keys = GaugeMetricFamily(
            "stepd_flow_keys_waiting",
            "How many keys of each flow-control limit have something waiting.",
            labels=["kind", "limit"],
        )
        active = GaugeMetricFamily(
            "stepd_concurrency_active_runs",
            "Runs counted against each concurrency limit (admitted, not ended).",
            labels=["limit"],
        )
        for state in self.limits:
            waiting.add_metric([state.kind.value, state.name], state.waiting)
            keys.add_metric([state.kind.value, state.name], state.keys_waiting)
            if state.kind is FlowLimitKind.CONCURRENCY:
                active.add_metric([state.name], state.active_runs)
        yield waiting
        yield keys
        yield active


class _EngineGauges(Collector):
    """Numbers read from the engine and the store at scrape time."""

    def __init__(self, engine: Engine, ready_since: dict[str, float]) -> None:
        self._engine = engine
        self._ready_since = ready_since

    def collect(self) -> Iterator[Metric]:
        engine = self._engine
        yield GaugeMetricFamily(
            "stepd_ready_runs",
            "Runs waiting in this server's ready queues for a worker.",
            value=engine.dispatcher.ready_count(),
        )
        oldest = min(self._ready_since.values(), default=None)
        yield GaugeMetricFamily(
            "stepd_oldest_ready_run_age_seconds",
            "How long the longest-waiting ready run has waited (0 when none waits).",
            value=0.0 if oldest is None else time.monotonic() - oldest,
        )
        yield GaugeMetricFamily(
            "stepd_timers_pending",
            "Timers, timeouts and delayed starts held in memory (those due within the "
            "loading horizon; later ones wait in the database).",
            value=engine.timers.scheduled_count() + engine.starts.scheduled_count(),
        )
        sessions = engine.dispatcher.sessions
        yield GaugeMetricFamily(
            "stepd_workers_connected", "Worker streams connected to this server.", len(sessions)
        )
        yield GaugeMetricFamily(
            "stepd_worker_free_slots",
            "Runs the connected workers could take now.",
            value=sum(max(session.free_slots, 0) for session in sessions),
        )
        stats = engine.store.commit_stats
        yield CounterMetricFamily(
            "stepd_store_commits", "Transactions the store committed.", value=stats.commits
        )
        yield CounterMetricFamily(
            "stepd_store_writes",
            "Writes the store committed; writes / commits is the mean group-commit batch.",
            value=stats.ops,
        )
        yield CounterMetricFamily(
            "stepd_store_batches_retried",
            "Batches rolled back and run again one write per transaction (a write in "
            "them failed; on PostgreSQL also a lock not granted within 100 ms).",
            value=stats.batches_retried,
        )
        yield GaugeMetricFamily(
            "stepd_store_largest_batch",
            "The most writes one transaction has carried since the server started.",
            value=stats.largest_batch,
        )
