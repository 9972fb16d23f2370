/**
 * Issue 2, points 3 and 4: FIFO per sender, fan-in from clones and from
 * several processes, and sends that never block and never drop.
 */

import { deepStrictEqual, equal, ok, rejects } from "node:assert/strict";
import { bytesChannel, channel, type IpcBytesReceiver } from "../mod.ts";
import {
  fdBaseline,
  fdTest,
  finish,
  ipcError,
  openFds,
  settled,
  startLinked,
} from "./helpers.ts";

fdTest(
  import.meta,
  "1,000,000 small byte messages sent before the first recv arrive in order",
  async () => {
    const before = await fdBaseline();
    const [tx, rx] = bytesChannel();
    const message = new Uint8Array(4);
    const view = new DataView(message.buffer);
    // Under Wine every pipe call is a wineserver round trip (~0.6 ms a
    // message here): Windows sends 20,000, still far beyond the pipe's 64 KiB.
    const N = Deno.build.os === "windows" ? 20_000 : 1_000_000;
    for (let i = 0; i < N; i++) {
      view.setUint32(0, i, true);
      tx.send(message); // reused at once: send must have copied it
    }
    ok(tx.bufferedAmount > 0, "most of a million messages wait in user space");
    ok(
      tx.bufferedAmount <= N * 4,
      `bufferedAmount ${tx.bufferedAmount} counts bytes`,
    );
    const drained = tx.drained(0);
    let settledDrain = false;
    drained.then(() => settledDrain = true);
    // Alternate the three ways of receiving.
    for (let i = 0; i < N; i++) {
      const got = i % 3 === 0
        ? await rx.recv()
        : i % 3 === 1
        ? rx.recvSync()
        : rx.tryRecv();
      const value = new DataView(got.buffer, got.byteOffset).getUint32(0, true);
      if (value !== i) equal(value, i, `message ${i} arrived as ${value}`);
    }
    await drained;
    ok(settledDrain);
    equal(tx.bufferedAmount, 0);
    tx.close();
    await rejects(rx.recv(), ipcError("Disconnected"));
    rx.close();
    equal(openFds(), before);
    await settled();
  },
);

Deno.test(
  "200,000 small typed messages sent before the first recv arrive in order",
  async () => {
    const [tx, rx] = channel<number>();
    // A million takes ~13 s here on top of the bytes test above; the typed
    // path queues the same packets, so a fifth of it is enough.
    // Under Wine this path costs ~0.9 ms a message: Windows sends 20,000.
    const N = Deno.build.os === "windows" ? 20_000 : 200_000;
    for (let i = 0; i < N; i++) tx.send(i);
    ok(tx.bufferedAmount > 0);
    // Closing with a queue still delivers everything, then disconnects.
    tx.close();
    let expected = 0;
    for await (const n of rx) {
      if (n !== expected) equal(n, expected);
      expected++;
    }
    equal(expected, N);
    rx.close();
    await settled();
  },
);

Deno.test("bufferedAmount grows while queued and drained() resolves at a threshold", async () => {
  const [tx, rx] = bytesChannel();
  equal(tx.bufferedAmount, 0);
  tx.send(new Uint8Array(100));
  equal(tx.bufferedAmount, 0, "the socket took it");
  let sent = 1;
  while (tx.bufferedAmount === 0) {
    tx.send(new Uint8Array(100));
    sent++;
  }
  const first = tx.bufferedAmount;
  equal(first, 100);
  for (let i = 0; i < 99; i++) tx.send(new Uint8Array(100));
  sent += 99;
  equal(tx.bufferedAmount, 100 * 100);
  const half = tx.drained(5000);
  const all = tx.drained();
  await Promise.resolve();
  for (let i = 0; i < sent; i++) equal((await rx.recv()).length, 100);
  await half;
  await all;
  equal(tx.bufferedAmount, 0);
  throwsEmpty(rx);
  tx.close();
  rx.close();
  await settled();
});

function throwsEmpty(rx: IpcBytesReceiver): void {
  try {
    rx.tryRecv();
  } catch (error) {
    ipcError("Empty")(error);
    return;
  }
  throw new Error("expected nothing to wait");
}

Deno.test("FIFO per sender with four cloned senders feeding one receiver", async () => {
  const [tx, rx] = channel<[number, number]>();
  const senders = [tx, tx.clone(), tx.clone(), tx.clone()];
  const N = 20_000;
  for (let i = 0; i < N; i++) {
    // Interleave irregularly, so the queue holds a mixture.
    const s = (i * 7 + (i >> 5)) % 4;
    senders[s].send([s, i]);
  }
  for (const s of senders) s.close();
  const last = [-1, -1, -1, -1];
  let count = 0;
  for await (const [s, i] of rx) {
    ok(i > last[s], `sender ${s}: ${i} after ${last[s]}`);
    last[s] = i;
    count++;
  }
  equal(count, N);
  rx.close();
  await settled();
});

Deno.test("a child that sends N messages and ends naturally delivers all N", async () => {
  // Scaled down under Wine (100,000 take 30 s there).
  const N = Deno.build.os === "windows" ? 20_000 : 100_000;
  const child = await startLinked("child.ts", ["send", String(N)]);
  // Read nothing until the child's script has finished sending: from then
  // on only its queue, flushed as we read, keeps it alive.
  const lines = child.process.stdout.pipeThrough(new TextDecoderStream())
    .getReader();
  let stdout = "";
  while (!stdout.includes("\n")) {
    const { value, done } = await lines.read();
    if (done) break;
    stdout += value;
  }
  ok(
    /^queued [1-9]\d*$/m.test(stdout),
    `the child had messages queued when its script ended: ${stdout}`,
  );
  for (let i = 0; i < N; i++) {
    const got = await child.fromChild.recv() as { seq: number };
    if (got.seq !== i) equal(got.seq, i);
  }
  await rejects(child.fromChild.recv(), ipcError("Disconnected"));
  await lines.cancel();
  const status = await child.process.status;
  const stderr = await new Response(child.process.stderr).text();
  equal(status.code, 0, stderr);
  child.toChild.close();
  child.fromChild.close();
  await settled();
});

Deno.test("a child's bytes sender left open at exit still delivers everything", async () => {
  // Scaled down under Wine (200,000 take 70 s there).
  const N = Deno.build.os === "windows" ? 20_000 : 200_000;
  const child = await startLinked("child.ts", ["send-bytes", String(N)]);
  const rx = await child.fromChild.recv() as IpcBytesReceiver;
  // Let the child finish its script first: only its pending queue keeps it.
  await new Promise((resolve) => setTimeout(resolve, 200));
  for (let i = 0; i < N; i++) {
    const got = rx.recvSync();
    const value = new DataView(got.buffer, got.byteOffset).getUint32(0, true);
    if (value !== i) equal(value, i);
  }
  await rejects(rx.recv(), ipcError("Disconnected"));
  const result = await finish(child.process);
  equal(result.code, 0, result.stderr);
  for (const end of [rx, child.toChild, child.fromChild]) end.close();
  await settled();
});

Deno.test("cloned senders in three child processes feed one receiver, FIFO each", async () => {
  const [tx, rx] = channel<{ id: number; seq: number; data: Uint8Array }>();
  const COUNT = 5000;
  const children = await Promise.all(
    [0, 1, 2].map((id) =>
      startLinked("child.ts", ["fanin", String(id), String(COUNT), "16"])
    ),
  );
  for (const child of children) child.toChild.send(tx.clone());
  tx.close();
  const next = [0, 0, 0];
  let total = 0;
  for await (const { id, seq } of rx) {
    equal(seq, next[id], `child ${id} out of order`);
    next[id]++;
    total++;
  }
  deepStrictEqual(next, [COUNT, COUNT, COUNT]);
  equal(total, 3 * COUNT);
  for (const child of children) {
    const result = await finish(child.process);
    equal(result.code, 0, result.stderr);
    child.toChild.close();
    child.fromChild.close();
  }
  rx.close();
  await settled();
});
