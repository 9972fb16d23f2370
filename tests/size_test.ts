/**
 * Issue 2, point 5: messages of any size, and large messages from concurrent
 * senders that never interleave.
 */

import { equal, ok, rejects } from "node:assert/strict";
import { bytesChannel, channel } from "../mod.ts";
import {
  fdBaseline,
  fdTest,
  finish,
  ipcError,
  openFds,
  pattern,
  sameBytes,
  settled,
  startLinked,
} from "./helpers.ts";

// The default socket buffer lets through ~212,960-byte packets; bodies past
// that go through a memfd. Sweep across the boundary on both paths.
const AROUND_LIMIT = [
  212_000,
  212_900,
  212_927,
  212_928,
  212_929,
  212_943,
  212_944,
  212_945,
  212_952,
  212_960,
  212_961,
  212_991,
  212_992,
  212_993,
  213_000,
  262_144,
  262_145,
];

fdTest(
  import.meta,
  "bytes messages of 0 and 1 bytes, and around the inline limit",
  async () => {
    const before = await fdBaseline();
    const [tx, rx] = bytesChannel();
    for (const size of [0, 1, 2, 7, 8, 9, 4096, 65_536, ...AROUND_LIMIT]) {
      const data = pattern(size, size);
      tx.send(data);
      sameBytes(await rx.recv(), data, `${size} bytes (async)`);
      tx.send(data);
      sameBytes(rx.recvSync(), data, `${size} bytes (sync)`);
    }
    // A zero-byte message is a message, not the end of the stream.
    tx.send(new Uint8Array(0));
    tx.send(new Uint8Array(0));
    tx.close();
    equal((await rx.recv()).length, 0);
    equal(rx.tryRecv().length, 0);
    await rejects(rx.recv(), ipcError("Disconnected"));
    rx.close();
    equal(openFds(), before, "no memfd was left open");
    await settled();
  },
);

Deno.test("typed messages carrying byte arrays around the inline limit", async () => {
  const [tx, rx] = channel<{ n: number; data: Uint8Array; tail: string }>();
  for (const size of [0, 1, ...AROUND_LIMIT]) {
    const data = pattern(size, 3 * size);
    tx.send({ n: size, data, tail: "end" });
    const got = await rx.recv();
    equal(got.n, size);
    equal(got.tail, "end");
    sameBytes(got.data, data, `typed ${size}`);
  }
  tx.close();
  rx.close();
  await settled();
});

fdTest(
  import.meta,
  "1 MiB and 64 MiB, as bytes and inside a typed message",
  async () => {
    const before = await fdBaseline();
    for (const size of [1 << 20, 64 << 20]) {
      const data = pattern(size, 7);
      const [btx, brx] = bytesChannel();
      btx.send(data);
      sameBytes(await brx.recv(), data, `bytes ${size}`);
      btx.send(data);
      sameBytes(brx.recvSync(), data, `bytes ${size} (sync)`);
      btx.close();
      brx.close();

      const [tx, rx] = channel<{ data: Uint8Array; label: string }[]>();
      tx.send([{ data, label: "big" }, {
        data: new Uint8Array(3),
        label: "small",
      }]);
      const [big, small] = await rx.recv();
      equal(big.label, "big");
      equal(small.label, "small");
      sameBytes(big.data, data, `typed ${size}`);
      // A 64 MiB string survives too.
      if (size === 1 << 20) {
        const text = "abcdefgh".repeat(size / 8);
        tx.send([{ data: new Uint8Array(0), label: text }]);
        equal((await rx.recv())[0].label, text);
      }
      tx.close();
      rx.close();
    }
    equal(openFds(), before);
    await settled();
  },
);

fdTest(
  import.meta,
  "large messages queued behind small ones keep their order and content",
  async () => {
    const before = await fdBaseline();
    const [tx, rx] = bytesChannel();
    const sizes: number[] = [];
    for (let i = 0; i < 600; i++) {
      const size = i % 50 === 49 ? 300_000 + i : i % 7 === 0 ? 200_000 : 16;
      sizes.push(size);
      tx.send(pattern(size, i));
    }
    ok(tx.bufferedAmount > 0, "part of it is queued");
    for (let i = 0; i < sizes.length; i++) {
      sameBytes(await rx.recv(), pattern(sizes[i], i), `message ${i}`);
    }
    equal(tx.bufferedAmount, 0);
    tx.close();
    rx.close();
    equal(openFds(), before, "queued memfds were closed once sent");
    await settled();
  },
);

Deno.test("cloned senders in three children sending large messages never interleave", async () => {
  const [tx, rx] = channel<{ id: number; seq: number; data: Uint8Array }>();
  // Sizes on both sides of the inline limit.
  const plans = [[0, 12, 1_000_000], [1, 40, 150_000], [2, 12, 2_100_000]];
  const children = await Promise.all(
    plans.map((plan) =>
      startLinked("child.ts", ["fanin", ...plan.map(String)])
    ),
  );
  for (const child of children) child.toChild.send(tx.clone());
  tx.close();
  const next = [0, 0, 0];
  for await (const { id, seq, data } of rx) {
    const [, , size] = plans[id];
    equal(seq, next[id]++, `child ${id} out of order`);
    equal(data.length, size);
    const view = new DataView(data.buffer, data.byteOffset);
    equal(view.getUint32(0, true), id, "the id stamped in the body");
    equal(view.getUint32(4, true), seq, "the seq stamped in the body");
    const start = (id * 64 + seq * 7) & 0xff;
    for (let i = 8; i < size; i++) {
      if (data[i] !== ((start + i) & 0xff)) {
        throw new Error(`child ${id} message ${seq}: byte ${i} is foreign`);
      }
    }
  }
  equal(next.join(), plans.map(([, count]) => count).join());
  for (const child of children) {
    const result = await finish(child.process);
    equal(result.code, 0, result.stderr);
    child.toChild.close();
    child.fromChild.close();
  }
  rx.close();
  await settled();
});
