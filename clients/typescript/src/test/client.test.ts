// End-to-end: this client against a real stepd server with a Python worker.
// tests/e2e/test_typescript_client.py starts both and sets STEPD_ADDRESS
// (a worker serving tests.e2e.workflows); run alone, the test is skipped.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";

import { Code, ConnectError, RunEndedError, StepdClient } from "../index.js";

const address = process.env.STEPD_ADDRESS;
const skip = address ? false : "set STEPD_ADDRESS to a server with a worker of tests.e2e.workflows";

async function until<T>(probe: () => Promise<T | undefined>, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > end) throw new Error("timed out");
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

test("a run started from TypeScript is signalled, completes, and shows its history", { skip }, async () => {
  const stepd = new StepdClient(`http://${address}`);
  const tag = randomUUID().slice(0, 12);
  const started = await stepd.trigger("e2e.await_signal", { tag, name: "approve" });
  assert.equal(started.workflow, "e2e.await_signal");
  assert.deepEqual(started.input, { tag, name: "approve" });

  // The Python worker runs the workflow up to its wait.
  await until(async () => ((await stepd.getRun(started.runId)).status === "suspended" ? true : undefined));
  await stepd.signal(started.runId, "approve", { by: "typescript", amount: 42 }, `${tag}-1`);
  // A retried signal with the same request id is harmless.
  await stepd.signal(started.runId, "approve", { by: "typescript", amount: 42 }, `${tag}-1`);

  assert.deepEqual(await stepd.result(started.runId, 30_000), { by: "typescript", amount: 42 });
  const done = await stepd.getRun(started.runId);
  assert.equal(done.status, "completed");
  assert.ok(done.endTime instanceof Date);

  const history = await stepd.history(started.runId);
  const types = history.map((event) => event.type);
  assert.equal(types[0], "triggered");
  assert.ok(types.includes("signal_received"), types.join(","));
  assert.equal(types[types.length - 1], "completed");
  const signal = history.find((event) => event.type === "signal_received");
  assert.equal(signal?.name, "approve");
  assert.deepEqual(signal?.payload, { by: "typescript", amount: 42 });

  const listed = await stepd.listRuns({ workflow: "e2e.await_signal", statuses: ["completed"] });
  assert.ok(listed.runs.some((run) => run.runId === started.runId));
  assert.equal(done.traceparent, "");
});

test("a run started from TypeScript joins the caller's trace", { skip }, async () => {
  const stepd = new StepdClient(`http://${address}`);
  const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  const started = await stepd.trigger("e2e.square", 3, { traceparent, tracestate: "vendor=1" });
  assert.equal(started.traceparent, traceparent);
  assert.equal(await stepd.result(started.runId, 30_000), 9);
  await assert.rejects(stepd.trigger("e2e.square", 3, { traceparent: "not a traceparent" }), (error: unknown) => {
    assert.ok(error instanceof ConnectError, String(error));
    assert.equal(error.code, Code.InvalidArgument);
    return true;
  });
});

test("execute starts a run and answers with its result in one call", { skip }, async () => {
  const stepd = new StepdClient(`http://${address}`);
  const runId = `ts-execute-${randomUUID().slice(0, 12)}`;
  assert.equal(await stepd.execute("e2e.square", 12, { runId }, 30_000), 144);
  assert.equal((await stepd.getRun(runId)).status, "completed");
  await assert.rejects(stepd.execute("e2e.fail", { tag: randomUUID().slice(0, 12) }), RunEndedError);
});

test("a run started from TypeScript can have a priority", { skip }, async () => {
  const stepd = new StepdClient(`http://${address}`);
  const started = await stepd.trigger("e2e.square", 4, { priority: 7 });
  assert.equal(started.priority, 7);
  assert.equal(started.debounceKey, "");
  assert.equal(await stepd.result(started.runId, 30_000), 16);
  await assert.rejects(stepd.trigger("e2e.square", 4, { priority: 5000 }), (error: unknown) => {
    assert.ok(error instanceof ConnectError, String(error));
    assert.equal(error.code, Code.InvalidArgument);
    return true;
  });
});

test("a failed run and the server's errors reach TypeScript as typed errors", { skip }, async () => {
  const stepd = new StepdClient(`http://${address}`);
  const tag = randomUUID().slice(0, 12);
  const failing = await stepd.trigger("e2e.fail", { tag, value: 1 });
  await assert.rejects(stepd.result(failing.runId, 30_000), (error: unknown) => {
    assert.ok(error instanceof RunEndedError);
    assert.equal(error.run.status, "failed");
    assert.equal(error.run.errorMessage, `boom ${tag}`);
    return true;
  });
  await assert.rejects(stepd.getRun("no-such-run"), (error: unknown) => {
    assert.ok(error instanceof ConnectError);
    assert.equal(error.code, Code.NotFound);
    return true;
  });
  await assert.rejects(stepd.executeHook("forged-token", {}), (error: unknown) => {
    assert.ok(error instanceof ConnectError);
    assert.equal(error.code, Code.NotFound);
    return true;
  });
  const published = await stepd.publishEvent(`ts.nobody.listens.${randomUUID()}`, { n: 1 });
  assert.deepEqual(published.woken, []);
});
