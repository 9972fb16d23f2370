import {
  deepStrictEqual as assertEquals,
  equal,
  ok,
  rejects,
  throws,
} from "node:assert/strict";
import {
  channel,
  IpcError,
  IpcReceiverSet,
  type IpcSelectionResult,
  type IpcSender,
  IpcSharedMemory,
} from "../mod.ts";
import { settled } from "./helpers.ts";

function kind(k: string) {
  return (e: unknown) => e instanceof IpcError && e.kind === k;
}

function messages<T>(results: IpcSelectionResult[]): [number, T][] {
  return results.flatMap((r) =>
    r.type === "message" ? [[r.id, r.message.to<T>()] as [number, T]] : []
  );
}

Deno.test("select returns every ready message, in order per member", async () => {
  using set = new IpcReceiverSet();
  const [tx1, rx1] = channel<number>();
  const [tx2, rx2] = channel<number>();
  const id1 = set.add(rx1);
  const id2 = set.add(rx2);
  ok(id1 !== id2);
  equal(set.size, 2);
  throws(() => rx1.tryRecv(), kind("Closed"));
  tx1.send(1);
  tx1.send(2);
  tx2.send(10);
  const got = messages<number>(await set.select());
  assertEquals(got.filter(([id]) => id === id1).map(([, v]) => v), [1, 2]);
  assertEquals(got.filter(([id]) => id === id2).map(([, v]) => v), [10]);
  throws(() => set.trySelect(), kind("Empty"));
  tx1.close();
  tx2.close();
  await settled();
});

Deno.test("a pending select wakes on a later send, and closed channels are reported once", async () => {
  using set = new IpcReceiverSet();
  const [tx, rx] = channel<string>();
  const id = set.add(rx);
  const pending = set.select();
  setTimeout(() => tx.send("late"), 5);
  const [first] = await pending;
  equal(first.type, "message");
  if (first.type === "message") equal(first.message.to<string>(), "late");
  tx.close();
  assertEquals(await set.select(), [{ type: "closed", id }]);
  equal(set.size, 0);
  await rejects(set.select(), kind("Empty"));
  await settled();
});

Deno.test("trySelectTimeout rejects Empty; close rejects pending selects", async () => {
  const set = new IpcReceiverSet();
  const [tx, rx] = channel<number>();
  set.addOpaque(rx.toOpaque());
  await rejects(set.trySelectTimeout(5), kind("Empty"));
  const pending = set.select();
  set.close();
  await rejects(pending, kind("Closed"));
  throws(() => set.add(channel<number>()[1]), kind("Closed"));
  // The receiver was closed with the set.
  throws(() => tx.send(1), kind("Disconnected"));
  tx.close();
  await settled();
});

Deno.test("remove closes the member and forgets it", async () => {
  using set = new IpcReceiverSet();
  const [tx, rx] = channel<number>();
  const id = set.add(rx);
  set.remove(id);
  equal(set.size, 0);
  throws(() => set.remove(id), kind("Io"));
  throws(() => tx.send(1), kind("Disconnected"));
  tx.close();
  await settled();
});

Deno.test("a receiver with a pending recv moves into the set; the recv rejects Closed", async () => {
  using set = new IpcReceiverSet();
  const [tx, rx] = channel<number>();
  const waiting = rx.recv();
  set.add(rx);
  await rejects(waiting, kind("Closed"));
  tx.send(3);
  assertEquals(messages(await set.select()).map(([, v]) => v), [3]);
  tx.close();
  await settled();
});

Deno.test("opaque messages adopt their handles once; undecoded handles are released", async () => {
  using set = new IpcReceiverSet();
  const [tx, rx] = channel<
    { reply: IpcSender<number>; shm: IpcSharedMemory }
  >();
  set.add(rx);
  const [replyTx, replyRx] = channel<number>();
  using shm = IpcSharedMemory.fromByte(5, 16);
  tx.send({ reply: replyTx, shm });
  tx.send({ reply: replyTx, shm });
  const results = await set.select();
  equal(results.length, 2);
  const [a, b] = results;
  if (a.type !== "message" || b.type !== "message") throw new Error();
  const value = a.message.to<
    { reply: IpcSender<number>; shm: IpcSharedMemory }
  >();
  throws(() => a.message.to(), kind("Closed"));
  equal(value.shm.bytes[15], 5);
  value.reply.send(9);
  equal(await replyRx.recv(), 9);
  value.reply.close();
  value.shm.close();
  b.message.close(); // releases the second sender and region unused
  replyTx.close();
  await rejects(replyRx.recv(), kind("Disconnected"));
  replyRx.close();
  tx.close();
  await settled();
});

for (
  const [m, n] of [
    [1, 1],
    [1, 5],
    [2, 5],
    [5, 5],
    [1, 20],
    [5, 20],
    [20, 20],
    [1, 100],
    [5, 100],
    [20, 100],
    [100, 100],
  ]
) {
  Deno.test(`send on ${m} of ${n}: select until ${m} results`, async () => {
    using set = new IpcReceiverSet();
    const senders: IpcSender<null>[] = [];
    const ids: number[] = [];
    for (let i = 0; i < n; i++) {
      const [tx, rx] = channel<null>();
      senders.push(tx);
      ids.push(set.add(rx));
    }
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < m; i++) senders[(i * 7 + round) % n].send(null);
      const seen: number[] = [];
      while (seen.length < m) {
        for (const r of await set.select()) {
          equal(r.type, "message");
          if (r.type === "message") {
            equal(r.message.to(), null);
            seen.push(r.id);
          }
        }
      }
      equal(seen.length, m);
    }
    for (const tx of senders) tx.close();
    const closed = new Set<number>();
    while (closed.size < n) {
      for (const r of await set.select()) {
        if (r.type === "closed") closed.add(r.id);
      }
    }
    assertEquals([...closed].sort((x, y) => x - y), ids);
    await settled();
  });
}
