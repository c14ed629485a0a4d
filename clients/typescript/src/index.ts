/**
 * A small typed client for stepd over gRPC (HTTP/2), for services written in
 * TypeScript. It wraps the generated `WorkflowService` (src/gen, made by
 * scripts/gen_protos.py) with the calls a service needs: start a run, get it
 * or wait for its result, signal it, execute a hook, publish an event, list
 * runs and read a run's history. Payloads are JSON values.
 *
 *     const stepd = new StepdClient("http://127.0.0.1:50051");
 *     const run = await stepd.trigger("orders.process", { orderId: "A-1" });
 *     const result = await stepd.result(run.runId);
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { DurationSchema, timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import {
  ListRunsRequestSchema,
  TriggerRequestSchema,
  WorkflowService,
} from "./gen/stepd/v1/workflow_service_pb.js";
import {
  PayloadSchema,
  RunEventType,
  RunStatus as WireStatus,
  type Payload,
  type Run,
  type RunEvent as WireEvent,
} from "./gen/stepd/v1/types_pb.js";

export { Code, ConnectError };

/** A run's status, as the Python SDK names it. */
export type RunStatus =
  | "pending"
  | "running"
  | "suspended"
  | "completed"
  | "failed"
  | "cancelled"
  | "unknown";

const STATUS_NAMES: Record<number, RunStatus> = {
  [WireStatus.PENDING]: "pending",
  [WireStatus.RUNNING]: "running",
  [WireStatus.SUSPENDED]: "suspended",
  [WireStatus.COMPLETED]: "completed",
  [WireStatus.FAILED]: "failed",
  [WireStatus.CANCELLED]: "cancelled",
};
const STATUS_VALUES = Object.fromEntries(
  Object.entries(STATUS_NAMES).map(([value, name]) => [name, Number(value)]),
) as Record<RunStatus, WireStatus>;

/** What the client knows about one run. */
export interface RunInfo {
  runId: string;
  workflow: string;
  version: string;
  status: RunStatus;
  input: unknown;
  result: unknown;
  errorType: string;
  errorMessage: string;
  parentRunId: string;
  createTime: Date | undefined;
  endTime: Date | undefined;
  /**
   * Why a pending run is not started yet (queued under its concurrency limit,
   * rate-limited or debounced until a time); "" otherwise.
   */
  waitingReason: string;
  /** The run's priority (higher: handed to a worker first). */
  priority: number;
  /** The run's debounce key; "" for a workflow without debounce. */
  debounceKey: string;
  /** The `traceparent` of the trace the run belongs to; "" when none. */
  traceparent: string;
}

/** One entry of a run's history, oldest first. */
export interface RunEvent {
  sequence: bigint;
  type: string;
  key: string;
  name: string;
  payload: unknown;
  detail: string;
  time: Date | undefined;
}

/** Thrown by `result()` when the run failed or was cancelled. */
export class RunEndedError extends Error {
  constructor(readonly run: RunInfo) {
    super(`run ${run.runId} ${run.status}: ${run.errorType} ${run.errorMessage}`.trim());
    this.name = "RunEndedError";
  }
}

export interface ClientOptions {
  /** An API key, sent as `authorization: Bearer <key>` on every call. */
  apiKey?: string;
  /** TLS: PEM CA bundle, and a client certificate and key for mutual TLS (use an https:// address). */
  tls?: { ca?: string | Buffer; cert?: string | Buffer; key?: string | Buffer };
}

export interface TriggerOptions {
  runId?: string;
  idempotencyKey?: string;
  version?: string;
  deadline?: Date;
  startTime?: Date;
  /** The run's key under its workflow's concurrency limit, instead of the one read from the input. */
  concurrencyKey?: string;
  /** The run's priority (-1000 to 1000), instead of its workflow's default. */
  priority?: number;
  /** The trigger's debounce key, instead of the one read from the input. */
  debounceKey?: string;
  /**
   * The W3C trace the run joins: the caller's `traceparent` (and optional
   * `tracestate`) header, e.g. from an OpenTelemetry context's propagator.
   */
  traceparent?: string;
  tracestate?: string;
}

function toPayload(value: unknown): MessageInitShape<typeof PayloadSchema> {
  return { json: JSON.stringify(value === undefined ? null : value) };
}

function fromPayload(payload: Payload | undefined): unknown {
  return payload && payload.json !== "" ? JSON.parse(payload.json) : null;
}

function runInfo(run: Run | undefined): RunInfo {
  if (!run) throw new Error("the server answered without a run");
  return {
    runId: run.runId,
    workflow: run.workflowName,
    version: run.workflowVersion,
    status: STATUS_NAMES[run.status] ?? "unknown",
    input: fromPayload(run.input),
    result: fromPayload(run.result),
    errorType: run.error?.type ?? "",
    errorMessage: run.error?.message ?? "",
    parentRunId: run.parentRunId,
    createTime: run.createTime ? timestampDate(run.createTime) : undefined,
    endTime: run.endTime ? timestampDate(run.endTime) : undefined,
    waitingReason: run.waitingReason,
    priority: run.priority,
    debounceKey: run.debounceKey,
    traceparent: run.traceContext?.traceparent ?? "",
  };
}

const TERMINAL: ReadonlySet<RunStatus> = new Set(["completed", "failed", "cancelled"]);
/** The header a waiting Trigger sends once its run is stored. */
const RUN_ID_HEADER = "stepd-run-id";
/** Codes of a call that broke on the way (the server may have stored the run). */
const BROKEN: ReadonlySet<Code> = new Set([Code.Unavailable, Code.DeadlineExceeded]);

function duration(ms: number): MessageInitShape<typeof DurationSchema> {
  return { seconds: BigInt(Math.floor(ms / 1000)), nanos: Math.floor(ms % 1000) * 1_000_000 };
}
/** The server answers a waiting GetRun after at most this long; result() asks again. */
const WAIT_SLICE_MS = 30_000;

/** Start and inspect stepd runs from TypeScript. */
export class StepdClient {
  private readonly service: Client<typeof WorkflowService>;

  /** `address` is `http://host:port`, or `https://host:port` with `options.tls`. */
  constructor(address: string, options: ClientOptions = {}) {
    const interceptors: Interceptor[] = [];
    if (options.apiKey) {
      const bearer = `Bearer ${options.apiKey}`;
      interceptors.push((next) => (request) => {
        request.header.set("authorization", bearer);
        return next(request);
      });
    }
    const transport = createGrpcTransport({
      baseUrl: address,
      interceptors,
      nodeOptions: options.tls ? { ...options.tls } : undefined,
    });
    this.service = createClient(WorkflowService, transport);
  }

  /** Start a run of `workflow` with `input` (any JSON value). */
  async trigger(workflow: string, input?: unknown, options: TriggerOptions = {}): Promise<RunInfo> {
    const answer = await this.service.trigger(this.triggerRequest(workflow, input, options));
    return runInfo(answer.run);
  }

  private triggerRequest(
    workflow: string,
    input: unknown,
    options: TriggerOptions,
  ): MessageInitShape<typeof TriggerRequestSchema> {
    return {
      workflowName: workflow,
      input: toPayload(input),
      runId: options.runId ?? "",
      idempotencyKey: options.idempotencyKey ?? "",
      workflowVersion: options.version ?? "",
      deadline: options.deadline ? timestampFromDate(options.deadline) : undefined,
      startTime: options.startTime ? timestampFromDate(options.startTime) : undefined,
      concurrencyKey: options.concurrencyKey ?? "",
      priority: options.priority,
      debounceKey: options.debounceKey ?? "",
      traceContext: options.traceparent
        ? { traceparent: options.traceparent, tracestate: options.tracestate ?? "" }
        : undefined,
    };
  }

  /**
   * Start a run and wait for its result in one call (Trigger with `wait`);
   * throws RunEndedError if it did not complete. Past one wait (at most 30 s)
   * it waits on with `result`; so it does when the call breaks after the
   * server said the run is stored (its `stepd-run-id` header).
   */
  async execute(
    workflow: string,
    input?: unknown,
    options: TriggerOptions = {},
    timeoutMs = 60_000,
  ): Promise<unknown> {
    const until = Date.now() + timeoutMs;
    const waitMs = Math.max(1, Math.min(timeoutMs, WAIT_SLICE_MS));
    let stored = "";
    let run: RunInfo;
    try {
      const request = create(TriggerRequestSchema, this.triggerRequest(workflow, input, options));
      request.wait = true;
      request.waitTimeout = create(DurationSchema, duration(waitMs));
      const answer = await this.service.trigger(request, {
        onHeader: (headers) => (stored = headers.get(RUN_ID_HEADER) ?? ""),
      });
      run = runInfo(answer.run);
    } catch (error) {
      const broken = error instanceof ConnectError && BROKEN.has(error.code);
      if (!stored || !broken) throw error;
      return this.result(stored, Math.max(1, until - Date.now()));
    }
    if (!TERMINAL.has(run.status)) return this.result(run.runId, Math.max(1, until - Date.now()));
    if (run.status !== "completed") throw new RunEndedError(run);
    return run.result;
  }

  /** The run now; with `waitMs`, wait up to that long for it to end first. */
  async getRun(runId: string, waitMs?: number): Promise<RunInfo> {
    const wait = waitMs !== undefined && waitMs > 0;
    const answer = await this.service.getRun({
      runId,
      wait,
      waitTimeout: wait ? duration(waitMs) : undefined,
    });
    return runInfo(answer.run);
  }

  /** Wait for the run to end and return its result; throws RunEndedError if it did not complete. */
  async result(runId: string, timeoutMs = 60_000): Promise<unknown> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const left = until - Date.now();
      const run = await this.getRun(runId, Math.max(1, Math.min(left, WAIT_SLICE_MS)));
      if (TERMINAL.has(run.status)) {
        if (run.status !== "completed") throw new RunEndedError(run);
        return run.result;
      }
      if (Date.now() >= until) {
        throw new ConnectError(`run ${runId} is still ${run.status}`, Code.DeadlineExceeded);
      }
    }
  }

  /** Send a signal; `requestId` makes a retry harmless. */
  async signal(runId: string, name: string, payload?: unknown, requestId = ""): Promise<void> {
    await this.service.signal({ runId, name, payload: toPayload(payload), requestId });
  }

  /** Execute a hook by its token; returns the id of the run it belongs to. */
  async executeHook(token: string, payload?: unknown): Promise<string> {
    return (await this.service.executeHook({ token, payload: toPayload(payload) })).runId;
  }

  /** Publish an event; returns the runs it woke and the runs it started. */
  async publishEvent(
    name: string,
    payload?: unknown,
    eventId = "",
  ): Promise<{ eventId: string; woken: string[]; started: string[] }> {
    const answer = await this.service.publishEvent({ name, payload: toPayload(payload), eventId });
    return { eventId: answer.eventId, woken: answer.wokenRunIds, started: answer.startedRunIds };
  }

  /** One page of runs, newest first, and the token of the next page ("" at the end). */
  async listRuns(
    filter: { workflow?: string; statuses?: RunStatus[]; pageSize?: number; pageToken?: string } = {},
  ): Promise<{ runs: RunInfo[]; nextPageToken: string }> {
    const request = create(ListRunsRequestSchema, {
      workflowName: filter.workflow ?? "",
      statuses: (filter.statuses ?? []).map((s) => STATUS_VALUES[s]),
      pageSize: filter.pageSize ?? 0,
      pageToken: filter.pageToken ?? "",
    });
    const answer = await this.service.listRuns(request);
    return { runs: answer.runs.map(runInfo), nextPageToken: answer.nextPageToken };
  }

  /** The run's whole history, oldest first (every page). */
  async history(runId: string): Promise<RunEvent[]> {
    const events: RunEvent[] = [];
    let pageToken = "";
    do {
      const page = await this.service.listRunEvents({ runId, pageToken, pageSize: 500 });
      events.push(...page.events.map(runEvent));
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
    return events;
  }
}

function runEvent(event: WireEvent): RunEvent {
  const type = RunEventType[event.type] ?? "UNKNOWN";
  return {
    sequence: event.sequence,
    type: type.toLowerCase(),
    key: event.key,
    name: event.name,
    payload: fromPayload(event.payload),
    detail: event.detail,
    time: event.time ? timestampDate(event.time) : undefined,
  };
}
