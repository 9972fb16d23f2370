// Sends made in one task travel as one batch packet; a receiver that has
// read part of a batch and then moves (inside a message, into a set) must
// hand every remaining message on, in order.
import {
  deepStrictEqual as assertEquals,
  ok,
  rejects,
} from "node:assert/strict";
import {
  bytesChannel,
  channel,
  type IpcReceiver,
  IpcReceiverSet,
  spawn,
} from "../mod.ts";
import { fixture, offWindows, settled } from "./helpers.ts";

Deno.test("a burst of sends arrives complete and in order", async () => {
  const [tx, rx] = channel<number>();
  for (let i = 0; i < 10_000; i++) tx.send(i);
  for (let i = 0; i < 10_000; i++) assertEquals(await rx.recv(), i);
  tx.close();
  await rejects(
    rx.recv(),
    (e: Error) => (e as { kind?: string }).kind === "Disconnected",
  );
  rx.close();
  await settled();
});

Deno.test("a receiver sent away after reading part of a batch hands on the rest, in order", async () => {
  const [tx, rx] = channel<number>();
  for (let i = 0; i < 10; i++) tx.send(i); // one at once, nine batched
  await null; // let the batch leave
  assertEquals(rx.recvSync(), 0);
  assertEquals(rx.recvSync(), 1); // reads the batch: 2..9 wait in memory
  const [carrier, arrivals] = channel<IpcReceiver<number>>();
  carrier.send(rx);
  const moved = await arrivals.recv();
  tx.send(10);
  const rest: number[] = [];
  for (let i = 2; i <= 10; i++) rest.push(await moved.recv());
  assertEquals(rest, [2, 3, 4, 5, 6, 7, 8, 9, 10]);
  tx.close();
  await rejects(moved.recv());
  for (const end of [moved, carrier, arrivals]) end.close();
  await settled();
});

Deno.test("the same, across a process boundary", async () => {
  const [tx, rx] = channel<string>();
  for (let i = 0; i < 6; i++) tx.send(`m${i}`);
  await null;
  assertEquals(rx.recvSync(), "m0");
  assertEquals(rx.recvSync(), "m1");
  await using child = await spawn<{ receiver: IpcReceiver<string> }, string[]>(
    fixture("spawn_relay.ts"),
  );
  child.sender.send({ receiver: rx });
  // The relay child reads three messages from what it was given.
  assertEquals(await child.receiver.recv(), ["m2", "m3", "m4"]);
  tx.close();
  await settled();
});

Deno.test("a receiver added to a set after reading part of a batch loses nothing", async () => {
  const [tx, rx] = bytesChannel();
  for (let i = 0; i < 5; i++) tx.send(new Uint8Array([i]));
  await null;
  assertEquals(rx.recvSync()[0], 0);
  assertEquals(rx.recvSync()[0], 1);
  using set = new IpcReceiverSet();
  const id = set.add(rx);
  const seen: number[] = [];
  while (seen.length < 3) {
    for (const result of await set.select()) {
      ok(result.type === "message" && result.id === id);
      if (result.type === "message") {
        seen.push(result.message.bytes[0]);
      }
    }
  }
  assertEquals(seen, [2, 3, 4]);
  tx.close();
  await settled();
});

// The Windows backend does not batch: each send is a WriteFile that a pipe
// with room takes at once, so a burst of three leaves nothing buffered.
Deno.test(
  offWindows(
    "bufferedAmount counts a burst until the task yields",
    "the Windows backend writes each send at once (no per-task batching)",
  ),
  async () => {
    const [tx, rx] = bytesChannel();
    tx.send(new Uint8Array(10));
    tx.send(new Uint8Array(20));
    tx.send(new Uint8Array(30));
    assertEquals(tx.bufferedAmount, 50);
    await tx.drained();
    assertEquals(tx.bufferedAmount, 0);
    for (const length of [10, 20, 30]) {
      assertEquals((await rx.recv()).length, length);
    }
    tx.close();
    rx.close();
    await settled();
  },
);
