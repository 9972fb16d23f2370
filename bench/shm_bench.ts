/**
 * Shared memory and receiver-set figures between two Deno processes:
 *
 * 1. send an existing 16 MiB region to another process and have it mapped
 *    (round trip with a `null` reply, less the same round trip without the
 *    region; target ≤ 50 µs, Rust 43–49 µs);
 * 2. select over 100 channels while the other process streams `null`s
 *    round-robin (target ≤ 1.5 × Rust's 6.3 µs per message);
 * 3. a 4 MiB shared-memory ping-pong adding 1 to every byte per hop, in place
 *    and with a copy plus a new region per hop (Rust's `ipc_shared_mem`).
 *
 * Run: deno run --allow-ffi --allow-run --allow-read bench/shm_bench.ts
 *
 * @module
 */
import {
  channel,
  IpcOneShotServer,
  IpcReceiverSet,
  type IpcSender,
  IpcSharedMemory,
} from "../mod.ts";
import { settled } from "../platform/mod.ts";

type Up = { down: IpcSender<unknown> } | null | IpcSharedMemory | "turn";

async function start(mode: string, ...args: string[]) {
  const server = new IpcOneShotServer<Up>();
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-ffi",
      new URL("./shm_bench_child.ts", import.meta.url).pathname,
      server.name,
      mode,
      ...args,
    ],
    stdin: "null",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
  const [up, hello] = await server.accept();
  const down = (hello as { down: IpcSender<unknown> }).down;
  return { up, down, child };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

async function mapBench(): Promise<void> {
  const { up, down, child } = await start("map");
  using region = IpcSharedMemory.fromByte(1, 16 << 20);
  const iterations = 2000;
  const withRegion: number[] = [];
  for (let i = 0; i < iterations; i++) {
    const t0 = performance.now();
    down.send(region);
    await up.recv();
    withRegion.push(performance.now() - t0);
  }
  down.send("stop");
  await child.status;
  up.close();
  down.close();

  // The same round trip carrying `null` instead of the region.
  const base = await start("map");
  const baseline: number[] = [];
  for (let i = 0; i < iterations; i++) {
    const t0 = performance.now();
    base.down.send(null);
    await base.up.recv();
    baseline.push(performance.now() - t0);
  }
  base.down.send("stop");
  await base.child.status;
  base.up.close();
  base.down.close();
  const a = median(withRegion) * 1000;
  const b = median(baseline) * 1000;
  console.log(
    `16 MiB region sent and mapped: round trip ${a.toFixed(1)} µs ` +
      `(null instead: ${b.toFixed(1)} µs; one-way estimate ${
        (a / 2).toFixed(1)
      } µs, mapping cost ${(a - b).toFixed(1)} µs)`,
  );
}

async function selectBench(): Promise<void> {
  const count = 200_000;
  const { up, down, child } = await start("stream", String(count));
  using set = new IpcReceiverSet();
  const senders: IpcSender<null>[] = [];
  for (let i = 0; i < 100; i++) {
    const [tx, rx] = channel<null>();
    senders.push(tx);
    set.add(rx);
  }
  down.send(senders);
  for (const tx of senders) tx.close();
  let got = 0;
  let closed = 0;
  let t0 = 0;
  while (closed < 100) {
    for (const result of await set.select()) {
      if (result.type === "closed") closed++;
      else {
        if (got === 0) t0 = performance.now();
        result.message.to<null>();
        got++;
      }
    }
  }
  const elapsed = performance.now() - t0;
  await child.status;
  up.close();
  down.close();
  console.log(
    `select over 100 channels, streaming: ${
      (elapsed * 1000 / (got - 1)).toFixed(2)
    } µs per message (${got} messages)`,
  );
}

async function pingPong(inPlace: boolean): Promise<void> {
  const hops = 100;
  const { up, down, child } = await start("pingpong");
  let shm = IpcSharedMemory.fromByte(0, 4 << 20);
  const t0 = performance.now();
  if (inPlace) {
    down.send(shm); // the child adds 1 and hands back its own handle
    shm = (await up.recv()) as IpcSharedMemory;
    for (let i = 1; i < hops - 1; i += 2) {
      const bytes = shm.bytes;
      for (let j = 0; j < bytes.length; j++) bytes[j]++;
      down.send("turn");
      await up.recv();
    }
    const bytes = shm.bytes;
    for (let j = 0; j < bytes.length; j++) bytes[j]++;
  } else {
    for (let i = 0; i < hops; i += 2) {
      down.send(shm);
      shm.close();
      const back = (await up.recv()) as IpcSharedMemory;
      const copy = back.take();
      for (let j = 0; j < copy.length; j++) copy[j]++;
      shm = IpcSharedMemory.fromBytes(copy);
    }
  }
  const elapsed = performance.now() - t0;
  const check = shm.bytes[12345];
  down.send("stop");
  await child.status;
  shm.close();
  up.close();
  down.close();
  console.log(
    `4 MiB ping-pong ${inPlace ? "in place" : "copy + new region"}: ` +
      `${(elapsed / hops).toFixed(3)} ms per hop over ${hops} hops ` +
      `(byte value ${check})`,
  );
}

await mapBench();
await selectBench();
await pingPong(true);
await pingPong(false);
await settled();
