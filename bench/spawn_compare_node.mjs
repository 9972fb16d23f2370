// The Node side of spawn_compare.ts, run by the `node` binary: forks
// spawn_compare_node_child.mjs with child_process.fork() and times, in this
// process, spawn + first round trip, round trips, and one-way throughput.
// Usage: node spawn_compare_node.mjs <json|advanced> <spawns> <warmup> <roundTrips> <messages> <warmupMessages>
// Prints one JSON object on stdout.

import { fork } from "node:child_process";
import { fileURLToPath } from "node:url";

const [serialization, spawns, warmup, roundTrips, messages, warmupMessages] = [
  process.argv[2],
  ...process.argv.slice(3).map(Number),
];
const childPath = fileURLToPath(
  new URL("./spawn_compare_node_child.mjs", import.meta.url),
);

/** A child with a queue of the messages it sent us. */
function start() {
  const child = fork(childPath, [], { serialization, stdio: "inherit" });
  const queue = [];
  let waiting;
  child.on("message", (message) => {
    if (waiting) {
      const resolve = waiting;
      waiting = undefined;
      resolve(message);
    } else queue.push(message);
  });
  const next = () =>
    queue.length > 0
      ? Promise.resolve(queue.shift())
      : new Promise((resolve) => (waiting = resolve));
  return { child, next };
}

function exited(child) {
  return new Promise((resolve) => child.once("exit", resolve));
}

const spawnMs = [];
let kept;
for (let s = 0; s < spawns; s++) {
  const begin = performance.now();
  const worker = start();
  worker.child.send({ i: 0 });
  const reply = await worker.next();
  spawnMs.push(performance.now() - begin);
  if (reply.i !== 0) throw new Error("bad first reply");
  if (kept) {
    kept.child.send({ op: "exit", n: 0 });
    await exited(kept.child);
  }
  kept = worker;
}
const { child, next } = kept;

const roundTrip = async (count, times) => {
  for (let k = 0; k < count; k++) {
    const begin = performance.now();
    child.send({ i: k });
    const reply = await next();
    if (times) times[k] = (performance.now() - begin) * 1000;
    if (reply.i !== k) throw new Error("bad echo");
  }
};
child.send({ op: "echo", n: warmup + roundTrips });
await roundTrip(warmup);
const rtUs = new Array(roundTrips);
await roundTrip(roundTrips, rtUs);

// One-way: a warm-up stream, then the measured one.
const stream = async (count) => {
  child.send({ op: "sink", n: count });
  const begin = performance.now();
  for (let k = 0; k < count; k++) child.send({ i: k });
  const reply = await next();
  if (reply.done !== count) throw new Error("bad done");
  return count / ((performance.now() - begin) / 1000);
};
await stream(warmupMessages);
const rate = await stream(messages);

child.send({ op: "exit", n: 0 });
await exited(child);
process.stdout.write(JSON.stringify({ spawnMs, rtUs, rate }) + "\n");
