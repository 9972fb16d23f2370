/**
 * Worker processes side by side (issue #3, "Speed"): our `spawn` channels
 * against what a Deno user would pick instead.
 *
 * Run: `deno run -A bench/spawn_compare.ts [passes]` (default 5 passes).
 *
 * Contenders, each a fresh child per pass:
 * - ours, `await recv()` on both sides (`spawn_compare_child.ts`);
 * - ours, `recvSync()` on both sides (same child);
 * - Node `child_process.fork()` IPC, `serialization: "json"` and
 *   `"advanced"`: a real `node` parent (`spawn_compare_node.mjs`, started
 *   here with `Deno.Command`) forks a real `node` child
 *   (`spawn_compare_node_child.mjs`) and times everything itself, so Node's
 *   figures carry no Deno overhead; the `node` binary is `$NODE` or `node`
 *   on the PATH;
 * - JSON lines over `Deno.Command` stdio pipes with a Deno child
 *   (`spawn_compare_stdio_child.ts`), one `write` per message.
 *
 * Figures: spawn + first round trip (from starting the child to holding its
 * first reply; {@linkcode SPAWNS} per pass), round trip of `{ i: number }`
 * (median and p99 of {@linkcode ROUND_TRIPS} after a warm-up), and one-way
 * throughput: the parent sends {@linkcode MESSAGES} `{ i }` as fast as it
 * can and the clock stops when the child reports it has received them all.
 * The contenders alternate (reversed order every other pass) so drift hits
 * all alike; the table gives medians over passes (spawn: over all spawns).
 *
 * @module
 */

import { spawn, type SpawnedProcess } from "../mod.ts";
import { lines } from "./spawn_compare_lines.ts";
import type { Down, Up } from "./spawn_compare_protocol.ts";

const PASSES = Number(Deno.args[0] ?? 5);
/** Spawns timed per contender and pass; the last one runs the rest. */
const SPAWNS = 3;
const WARMUP_ROUND_TRIPS = 500;
const ROUND_TRIPS = 5_000;
const MESSAGES = 100_000;
/**
 * Streamed before the measured one, by every contender alike: a fresh
 * child's JIT needs about 100,000 small messages to reach its steady rate
 * (ours measured 424k msg/s over its first 50,000, 1.18M later).
 */
const WARMUP_MESSAGES = 100_000;

const here = new URL(".", import.meta.url);
const config = `--config=${new URL("../deno.json", here).pathname}`;
const NODE = Deno.env.get("NODE") ?? "node";

/** One contender's figures in one pass. */
interface PassResult {
  /** Spawn + first round trip, ms. */
  spawnMs: number[];
  /** Round trips, µs. */
  rtUs: number[];
  /** One-way messages per second. */
  rate: number;
}

interface Contender {
  key: string;
  label: string;
  ours: boolean;
  run(): Promise<PassResult>;
}

// ---------------------------------------------------------------------------
// Ours.

type Worker = SpawnedProcess<Down, Up>;

async function stop(worker: Worker): Promise<void> {
  worker.sender.send({ op: "exit", n: 0 });
  await worker.status;
  worker.sender.close();
  worker.receiver.close();
}

async function runOurs(sync: boolean): Promise<PassResult> {
  const take = sync
    ? (w: Worker) => Promise.resolve(w.receiver.recvSync())
    : (w: Worker) => w.receiver.recv();
  const spawnMs: number[] = [];
  let worker: Worker | undefined;
  for (let s = 0; s < SPAWNS; s++) {
    const begin = performance.now();
    const fresh = await spawn<Down, Up>(
      new URL("spawn_compare_child.ts", here),
      { denoArgs: ["--allow-ffi", config], stdin: "null" },
    );
    fresh.sender.send({ i: 0 });
    const reply = sync
      ? fresh.receiver.recvSync()
      : await fresh.receiver.recv();
    spawnMs.push(performance.now() - begin);
    if (!("i" in reply) || reply.i !== 0) throw new Error("bad first reply");
    if (worker) await stop(worker);
    worker = fresh;
  }
  const w = worker!;
  const { sender, receiver } = w;

  const rtUs = new Array<number>(ROUND_TRIPS);
  sender.send({
    op: sync ? "echoSync" : "echoAsync",
    n: WARMUP_ROUND_TRIPS + ROUND_TRIPS,
  });
  if (sync) {
    for (let k = -WARMUP_ROUND_TRIPS; k < ROUND_TRIPS; k++) {
      const begin = performance.now();
      sender.send({ i: k });
      const reply = receiver.recvSync();
      if (k >= 0) rtUs[k] = (performance.now() - begin) * 1000;
      if (!("i" in reply) || reply.i !== k) throw new Error("bad echo");
    }
  } else {
    for (let k = -WARMUP_ROUND_TRIPS; k < ROUND_TRIPS; k++) {
      const begin = performance.now();
      sender.send({ i: k });
      const reply = await receiver.recv();
      if (k >= 0) rtUs[k] = (performance.now() - begin) * 1000;
      if (!("i" in reply) || reply.i !== k) throw new Error("bad echo");
    }
  }

  const stream = async (count: number): Promise<number> => {
    sender.send({ op: sync ? "sinkSync" : "sinkAsync", n: count });
    const begin = performance.now();
    for (let k = 0; k < count; k++) sender.send({ i: k });
    const reply = await take(w);
    if (!("done" in reply) || reply.done !== count) {
      throw new Error("bad done");
    }
    return count / ((performance.now() - begin) / 1000);
  };
  await stream(WARMUP_MESSAGES);
  const rate = await stream(MESSAGES);
  await stop(w);
  return { spawnMs, rtUs, rate };
}

// ---------------------------------------------------------------------------
// JSON lines over Deno.Command stdio.

const encoder = new TextEncoder();

interface StdioWorker {
  process: Deno.ChildProcess;
  writer: WritableStreamDefaultWriter<Uint8Array>;
  input: AsyncGenerator<string, void, undefined>;
}

function stdioSend(w: StdioWorker, message: Down): Promise<void> {
  return w.writer.write(encoder.encode(JSON.stringify(message) + "\n"));
}

async function stdioNext(w: StdioWorker): Promise<Up> {
  const { value, done } = await w.input.next();
  if (done) throw new Error("the stdio child closed its stdout");
  return JSON.parse(value) as Up;
}

async function stdioStop(w: StdioWorker): Promise<void> {
  await stdioSend(w, { op: "exit", n: 0 });
  await w.writer.close();
  await w.process.status;
  await w.input.return();
}

async function runStdio(): Promise<PassResult> {
  const spawnMs: number[] = [];
  let worker: StdioWorker | undefined;
  for (let s = 0; s < SPAWNS; s++) {
    const begin = performance.now();
    const process = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        config,
        new URL("spawn_compare_stdio_child.ts", here).pathname,
      ],
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const fresh: StdioWorker = {
      process,
      writer: process.stdin.getWriter(),
      input: lines(process.stdout),
    };
    await stdioSend(fresh, { i: 0 });
    const reply = await stdioNext(fresh);
    spawnMs.push(performance.now() - begin);
    if (!("i" in reply) || reply.i !== 0) throw new Error("bad first reply");
    if (worker) await stdioStop(worker);
    worker = fresh;
  }
  const w = worker!;

  const rtUs = new Array<number>(ROUND_TRIPS);
  await stdioSend(w, {
    op: "echoAsync",
    n: WARMUP_ROUND_TRIPS + ROUND_TRIPS,
  });
  for (let k = -WARMUP_ROUND_TRIPS; k < ROUND_TRIPS; k++) {
    const begin = performance.now();
    await stdioSend(w, { i: k });
    const reply = await stdioNext(w);
    if (k >= 0) rtUs[k] = (performance.now() - begin) * 1000;
    if (!("i" in reply) || reply.i !== k) throw new Error("bad echo");
  }

  const stream = async (count: number): Promise<number> => {
    await stdioSend(w, { op: "sinkAsync", n: count });
    const begin = performance.now();
    // One write per message, not awaited one by one (the stream queues).
    let last: Promise<void> = Promise.resolve();
    for (let k = 0; k < count; k++) last = stdioSend(w, { i: k });
    await last;
    const reply = await stdioNext(w);
    if (!("done" in reply) || reply.done !== count) {
      throw new Error("bad done");
    }
    return count / ((performance.now() - begin) / 1000);
  };
  await stream(WARMUP_MESSAGES);
  const rate = await stream(MESSAGES);
  await stdioStop(w);
  return { spawnMs, rtUs, rate };
}

// ---------------------------------------------------------------------------
// Node fork IPC, timed by a node parent.

async function runNode(
  serialization: "json" | "advanced",
): Promise<PassResult> {
  const output = await new Deno.Command(NODE, {
    args: [
      new URL("spawn_compare_node.mjs", here).pathname,
      serialization,
      String(SPAWNS),
      String(WARMUP_ROUND_TRIPS),
      String(ROUND_TRIPS),
      String(MESSAGES),
      String(WARMUP_MESSAGES),
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!output.success) {
    throw new Error(`${NODE} spawn_compare_node.mjs failed (${output.code})`);
  }
  return JSON.parse(new TextDecoder().decode(output.stdout)) as PassResult;
}

// ---------------------------------------------------------------------------
// Statistics and the table.

function quantile(values: number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const at = Math.min(
    sorted.length - 1,
    Math.max(0, Math.ceil(q * sorted.length) - 1),
  );
  return sorted[at];
}

const median = (values: number[]) => quantile(values, 0.5);

const contenders: Contender[] = [
  {
    key: "oursAsync",
    label: "ours, `await recv()` both sides",
    ours: true,
    run: () => runOurs(false),
  },
  {
    key: "oursSync",
    label: "ours, `recvSync()` both sides",
    ours: true,
    run: () => runOurs(true),
  },
  {
    key: "nodeJson",
    label: "Node `fork()` IPC, json",
    ours: false,
    run: () => runNode("json"),
  },
  {
    key: "nodeAdvanced",
    label: "Node `fork()` IPC, advanced",
    ours: false,
    run: () => runNode("advanced"),
  },
  {
    key: "stdio",
    label: "JSON lines, `Deno.Command` stdio",
    ours: false,
    run: runStdio,
  },
];

interface Summary {
  spawnMs: number;
  rtMedian: number;
  rtP99: number;
  rate: number;
}

const started = performance.now();
const nodeVersion = new TextDecoder().decode(
  (await new Deno.Command(NODE, { args: ["--version"], stdout: "piped" })
    .output()).stdout,
).trim();

// Warm the module caches (Deno's transpile cache, npm packages) once.
await runOurs(false).catch((error) => {
  throw new Error(`warm-up failed: ${error}`);
});

const results = new Map<string, PassResult[]>(
  contenders.map((c) => [c.key, []]),
);
for (let pass = 0; pass < PASSES; pass++) {
  const order = pass % 2 === 0 ? contenders : [...contenders].reverse();
  for (const contender of order) {
    const result = await contender.run();
    results.get(contender.key)!.push(result);
    console.error(
      `pass ${pass + 1}/${PASSES} ${contender.key}: spawn ${
        median(result.spawnMs).toFixed(0)
      } ms, rt ${median(result.rtUs).toFixed(1)} µs, ${
        (result.rate / 1000).toFixed(0)
      }k msg/s`,
    );
  }
}

const summaries = new Map<string, Summary>();
for (const contender of contenders) {
  const passes = results.get(contender.key)!;
  summaries.set(contender.key, {
    spawnMs: median(passes.flatMap((p) => p.spawnMs)),
    rtMedian: median(passes.map((p) => median(p.rtUs))),
    rtP99: median(passes.map((p) => quantile(p.rtUs, 0.99))),
    rate: median(passes.map((p) => p.rate)),
  });
}

const oursAsync = summaries.get("oursAsync")!;
const oursSync = summaries.get("oursSync")!;

function ratios(ours: Summary, other: Summary): string {
  const spawnX = other.spawnMs / ours.spawnMs;
  const rtX = other.rtMedian / ours.rtMedian;
  const rateX = ours.rate / other.rate;
  return `${spawnX.toFixed(2)}× / ${rtX.toFixed(2)}× / ${rateX.toFixed(2)}×`;
}

const fmtRate = (rate: number) =>
  rate >= 1e6
    ? `${(rate / 1e6).toFixed(2)}M`
    : `${(rate / 1000).toFixed(rate >= 1e5 ? 0 : 1)}k`;

const lines_: string[] = [];
lines_.push(
  `Deno ${Deno.version.deno}, Node ${nodeVersion}; ${PASSES} passes, ` +
    `${SPAWNS} spawns/pass, ${ROUND_TRIPS} round trips/pass, ` +
    `${MESSAGES} one-way messages/pass; medians over passes.`,
  "",
  "| contender | spawn + first RT | RT median | RT p99 | one-way msgs/s | " +
    "ours (await) ×: spawn / RT / msgs/s | ours (recvSync) ×: spawn / RT / msgs/s |",
  "|---|---:|---:|---:|---:|---:|---:|",
);
for (const contender of contenders) {
  const s = summaries.get(contender.key)!;
  lines_.push(
    `| ${contender.label} | ${s.spawnMs.toFixed(1)} ms | ` +
      `${s.rtMedian.toFixed(1)} µs | ${s.rtP99.toFixed(1)} µs | ` +
      `${fmtRate(s.rate)} | ` +
      `${contender.ours ? "–" : ratios(oursAsync, s)} | ` +
      `${contender.ours ? "–" : ratios(oursSync, s)} |`,
  );
}
lines_.push(
  "",
  "× = how many times better ours is (their time ÷ ours; our rate ÷ theirs). " +
    "Targets (issue #3): RT ≥ 2×, msgs/s ≥ 4× against Node fork IPC and " +
    "stdio JSON lines.",
  "",
);
for (
  const [name, ours] of [["await", oursAsync], ["recvSync", oursSync]] as const
) {
  for (const key of ["nodeJson", "nodeAdvanced", "stdio"]) {
    const other = summaries.get(key)!;
    const rtX = other.rtMedian / ours.rtMedian;
    const rateX = ours.rate / other.rate;
    const label = contenders.find((c) => c.key === key)!.label;
    lines_.push(
      `- ours (${name}) vs ${label}: RT ${rtX.toFixed(2)}× ${
        rtX >= 2 ? "meets" : "MISSES"
      } ≥ 2×; msgs/s ${rateX.toFixed(2)}× ${
        rateX >= 4 ? "meets" : "MISSES"
      } ≥ 4×`,
    );
  }
}
lines_.push(
  "",
  `Total ${((performance.now() - started) / 1000).toFixed(0)} s.`,
);
console.log(lines_.join("\n"));
