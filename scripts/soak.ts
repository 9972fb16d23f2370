/**
 * Soak: N worker processes in a ring exchange messages with a body, shared
 * memory and a sender inside, for a given time; then prints messages per
 * second, fds, RSS and errors, and exits 1 if anything was lost or grew.
 *
 *   deno run --allow-ffi --allow-run --allow-read --allow-env scripts/soak.ts \
 *     [--seconds 60] [--workers 4] [--window 8]
 *
 * Each token starts at a worker, travels `workers` hops (each hop checks its
 * checksum and the shared memory pattern, and forwards body, region and
 * reply sender to the next worker), and the last hop answers the parent on
 * the sender inside it. fds and RSS are taken after a warm-up and again at
 * the end, both times with nothing in flight.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  channel,
  IpcSharedMemory,
  spawn,
  type SpawnedProcess,
} from "../mod.ts";
import {
  checksum,
  collectedRss,
  type Down,
  openFds,
  type Result,
  type Token,
  type Up,
} from "./soak_worker.ts";
import type { IpcSender } from "../mod.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    seconds: { type: "string", default: "60" },
    workers: { type: "string", default: "4" },
    window: { type: "string", default: "8" },
  },
});
const seconds = Number(values.seconds);
const workerCount = Math.max(2, Number(values.workers));
const window = Number(values.window);
const MiB = 2 ** 20;

const workers: SpawnedProcess<Down, Up>[] = [];
const inboxes: IpcSender<Token>[] = [];
for (let i = 0; i < workerCount; i++) {
  const worker = await spawn<Down, Up>(
    new URL("./soak_worker.ts", import.meta.url),
    // gc() lets each worker report its RSS after a full collection.
    { stdin: "null", denoArgs: ["--allow-ffi", "--v8-flags=--expose-gc"] },
  );
  const hello = await worker.receiver.recv();
  if (hello.kind !== "inbox") throw new Error("worker: no inbox");
  workers.push(worker);
  inboxes.push(hello.inbox);
}
for (let i = 0; i < workerCount; i++) {
  workers[i].sender.send({
    kind: "next",
    next: inboxes[(i + 1) % workerCount],
  });
}

const [replyTx, replies] = channel<Result>();
let nextId = 0;
let injected = 0;
let completed = 0;
let failed = 0;
let messages = 0;
const failures: string[] = [];
const inFlight = new Set<number>();

function inject(at: number): void {
  const id = nextId++;
  // Sizes from a few bytes to past the inline limit (memfd bodies).
  const size = [16, 4_000, 60_000, 300_000][id % 4] + (id % 97);
  const body = new Uint8Array(size);
  crypto.getRandomValues(body.subarray(0, Math.min(size, 65_536)));
  body[size - 1] = id & 0xff;
  const shm = IpcSharedMemory.fromByte(id & 0xff, 4096 * (1 + (id % 4)));
  inboxes[at].send({
    id,
    hops: workerCount,
    body,
    sum: checksum(body),
    shm,
    reply: replyTx,
  });
  shm.close();
  injected++;
  inFlight.add(id);
}

/** Runs traffic for `ms`, then waits until nothing is in flight. */
async function phase(ms: number): Promise<void> {
  const until = performance.now() + ms;
  for (let w = 0; w < workerCount; w++) {
    for (let k = 0; k < window; k++) inject(w);
  }
  while (inFlight.size > 0) {
    // Not AbortSignal.timeout per recv: each one would live for 30 s, and
    // ~40k live timers are ~8 MiB of heap the RSS check would take for a leak.
    const result = await replies.tryRecvTimeout(30_000)
      .catch((error) => {
        throw new Error(
          `${inFlight.size} tokens still in flight after 30 s: ${error}`,
        );
      });
    inFlight.delete(result.id);
    completed++;
    messages += workerCount;
    if (!result.ok) {
      failed++;
      if (failures.length < 5) failures.push(`${result.id}: ${result.why}`);
    }
    if (performance.now() < until) inject(result.id % workerCount);
  }
}

async function stats(): Promise<Extract<Up, { kind: "stats" }>[]> {
  const out = [];
  for (const worker of workers) {
    worker.sender.send({ kind: "stats" });
    const s = await worker.receiver.recv();
    if (s.kind !== "stats") throw new Error("worker: no stats");
    out.push(s);
  }
  return out;
}

// Warm-up, then the baseline with nothing in flight.
// Anonymous memory (the malloc arenas of Deno's threads) grows for the first
// ~15 s of traffic and is flat after; measured: a parent's RssAnon 74 MiB at
// 8 s, 90 MiB at 16 s, 90-91 MiB to 40 s. Measure after that.
const warmup = Math.min(12, Math.max(4, seconds / 2));
await phase(warmup * 1000);
const fdsStart = openFds();
const rssStart = Deno.memoryUsage().rss;
const workersStart = await stats();
const messagesBefore = messages;
const started = performance.now();
// RSS is a GC sawtooth: "flat" means the peak of the second half of the run
// is not above the peak of the first half by more than the slack.
let peakRss = rssStart;
const sampler = setInterval(() => {
  peakRss = Math.max(peakRss, Deno.memoryUsage().rss);
}, 100);
let firstHalf:
  | { parent: number; workers: number[]; collected: number[] }
  | undefined;
const midpoint = setTimeout(async () => {
  const parent = peakRss;
  peakRss = 0;
  const midStats = await stats();
  firstHalf = {
    parent,
    workers: midStats.map((s) => s.peak),
    collected: [await collectedRss(), ...midStats.map((s) => s.collected)],
  };
}, seconds * 500);
let error: unknown;
try {
  await phase(seconds * 1000);
} catch (e) {
  error = e;
}
clearTimeout(midpoint);
clearInterval(sampler);
const elapsed = (performance.now() - started) / 1000;
const fdsEnd = openFds();
const rssEnd = Deno.memoryUsage().rss;
const workersEnd = await stats();

for (const worker of workers) worker.sender.send({ kind: "stop" });
for (const inbox of inboxes) inbox.close();
replyTx.close();
replies.close();
const statuses = [];
for (const worker of workers) {
  statuses.push(await worker.status);
  worker.sender.close();
  worker.receiver.close();
}

const lost = injected - completed;
const workerErrors = workersEnd.reduce((n, s) => n + s.errors, 0);
const rate = Math.round((messages - messagesBefore) / elapsed);
const mb = (n: number) => `${(n / MiB).toFixed(1)} MiB`;
const fdsFlat = fdsEnd === fdsStart &&
  workersEnd.every((s, i) => s.fds === workersStart[i].fds);
const secondHalf = {
  parent: Math.max(peakRss, rssEnd),
  workers: workersEnd.map((s) => s.peak),
};
// Peaks ride the GC sawtooth; what a leak cannot hide is the RSS right
// after a full collection, compared between the midpoint and the end.
const collectedEnd = [
  await collectedRss(),
  ...workersEnd.map((s) => s.collected),
];
const rssGrowth = firstHalf === undefined ? Infinity : Math.max(
  ...collectedEnd.map((rss, i) => rss - firstHalf!.collected[i]),
);
const RSS_SLACK = 16 * MiB;
const collectedFigures = firstHalf === undefined ? "" : collectedEnd.map((
  rss,
  i,
) =>
  `${(firstHalf!.collected[i] / MiB).toFixed(1)} -> ${(rss / MiB).toFixed(1)}`
).join(", ");
console.log(`soak: ${workerCount} workers, ${elapsed.toFixed(1)} s`);
console.log(
  `  messages: ${
    messages - messagesBefore
  } hops (${rate}/s), ${completed} tokens completed, ${lost} lost, ${failed} corrupt`,
);
console.log(
  `  errors: ${workerErrors} in workers${error ? `, parent: ${error}` : ""}${
    failures.length ? `, ${failures.join("; ")}` : ""
  }`,
);
console.log(
  `  fds: parent ${fdsStart} -> ${fdsEnd}; workers ${
    workersStart.map((s, i) => `${s.fds} -> ${workersEnd[i].fds}`).join(", ")
  }`,
);
console.log(
  `  rss after GC, midpoint -> end (parent first, MiB): ${collectedFigures}`,
);
console.log(
  `  rss peaks, first half -> second half: parent ${
    mb(firstHalf?.parent ?? NaN)
  } -> ${mb(secondHalf.parent)}; workers ${
    secondHalf.workers.map((p, i) =>
      `${mb(firstHalf?.workers[i] ?? NaN)} -> ${mb(p)}`
    ).join(", ")
  } (after warm-up: parent ${mb(rssStart)}, workers ${
    workersStart.map((s) => mb(s.rss)).join(", ")
  })`,
);
console.log(
  `  exits: ${statuses.map((s) => s.signal ?? s.code).join(", ")}`,
);
const ok = !error && lost === 0 && failed === 0 && workerErrors === 0 &&
  fdsFlat && rssGrowth < RSS_SLACK && statuses.every((s) => s.code === 0);
console.log(
  ok
    ? `  OK: nothing lost, fds flat, RSS growth after GC ${
      mb(rssGrowth)
    } (under ${mb(RSS_SLACK)})`
    : `  FAILED (fds flat: ${fdsFlat}, largest RSS growth after GC ${
      mb(rssGrowth)
    })`,
);
Deno.exit(ok ? 0 : 1);
