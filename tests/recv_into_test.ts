/**
 * `recvSyncInto`/`tryRecvInto`: bytes messages received into a caller's
 * buffer, the path that streams 64 KiB messages fastest (issue 2's speed
 * target). What a user relies on: a message that fits is in their buffer, one
 * that does not comes whole in a buffer of its own, and a bad buffer is
 * refused before any message is taken.
 */

import { equal, notEqual, ok, throws } from "node:assert/strict";
import { bytesChannel, channel, type IpcBytesReceiver } from "../mod.ts";
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

const KiB = 1024;

// Inline up to the socket's packet limit (~212,960 bytes), a memfd past it.
const SIZES = [
  0,
  1,
  7,
  4096,
  65_535,
  65_536,
  65_537,
  212_928,
  212_943,
  212_944,
  212_945,
  212_961,
  300_000,
  1 << 20,
];

Deno.test("recvSyncInto: a message that fits is in the buffer, a larger one comes whole in its own", () => {
  const [tx, rx] = bytesChannel();
  // Inline and memfd messages both fit the larger buffer.
  for (const buffer of [new Uint8Array(64 * KiB), new Uint8Array(1 << 20)]) {
    for (const size of SIZES) {
      const data = pattern(size, size);
      tx.send(data);
      const got = rx.recvSyncInto(buffer);
      const what = `${size} bytes into ${buffer.length}`;
      sameBytes(got, data, what);
      if (size <= buffer.length) {
        equal(got.buffer, buffer.buffer, `${what}: a view of the buffer`);
        equal(got.byteOffset, 0);
      } else {
        notEqual(got.buffer, buffer.buffer, `${what}: not in the buffer`);
        equal(got.byteOffset, 0, `${what}: a buffer of its own`);
        equal(got.buffer.byteLength, size, `${what}: exactly its size`);
      }
    }
  }
  tx.close();
  rx.close();
});

Deno.test("recvSyncInto: a message too large for the buffer is not a view that later receives overwrite", () => {
  const [tx, rx] = bytesChannel();
  const buffer = new Uint8Array(16);
  const large = pattern(100_000, 3);
  tx.send(large);
  const kept = rx.recvSyncInto(buffer);
  // Further inline messages reuse the platform's receive buffer.
  for (let i = 0; i < 20; i++) {
    tx.send(pattern(150_000, 100 + i));
    rx.recvSyncInto(buffer);
    tx.send(pattern(8, i));
    rx.recvSyncInto(buffer);
  }
  sameBytes(kept, large, "the kept large message");
  tx.close();
  rx.close();
});

Deno.test("recvSyncInto: a batch sent before the first receive arrives in order and intact", () => {
  const [tx, rx] = bytesChannel();
  const sizes = Array.from({ length: 2_000 }, (_, i) => (i * 37) % 300);
  for (const [i, size] of sizes.entries()) tx.send(pattern(size, i));
  const buffer = new Uint8Array(512);
  for (const [i, size] of sizes.entries()) {
    sameBytes(rx.recvSyncInto(buffer), pattern(size, i), `message ${i}`);
  }
  throws(() => rx.tryRecvInto(buffer), ipcError("Empty"));
  tx.close();
  rx.close();
});

Deno.test("recvSyncInto: into a view at an offset writes only inside that view", () => {
  const [tx, rx] = bytesChannel();
  const backing = new Uint8Array(64).fill(0xee);
  const view = backing.subarray(16, 48);
  tx.send(pattern(32, 9));
  const got = rx.recvSyncInto(view);
  sameBytes(got, pattern(32, 9), "message");
  equal(got.buffer, backing.buffer);
  equal(got.byteOffset, 16);
  ok(backing.subarray(0, 16).every((byte) => byte === 0xee), "before");
  ok(backing.subarray(48).every((byte) => byte === 0xee), "after");
  // A shorter message leaves the rest of the view as it was.
  tx.send(new Uint8Array([1, 2]));
  const short = rx.recvSyncInto(view);
  equal(short.length, 2);
  equal(short.byteOffset, 16);
  equal(view[2], pattern(32, 9)[2]);
  tx.close();
  rx.close();
});

Deno.test("tryRecvInto: Empty when nothing waits, the message when one does, Disconnected after the drain", () => {
  const [tx, rx] = bytesChannel();
  const buffer = new Uint8Array(8);
  throws(() => rx.tryRecvInto(buffer), ipcError("Empty"));
  tx.send(new Uint8Array([4, 5, 6]));
  tx.send(pattern(1_000, 1));
  const first = rx.tryRecvInto(buffer);
  equal(first.buffer, buffer.buffer);
  sameBytes(first, new Uint8Array([4, 5, 6]), "first");
  sameBytes(rx.tryRecvInto(buffer), pattern(1_000, 1), "second, larger");
  tx.close();
  throws(() => rx.tryRecvInto(buffer), ipcError("Disconnected"));
  throws(() => rx.recvSyncInto(buffer), ipcError("Disconnected"));
  rx.close();
  throws(() => rx.recvSyncInto(buffer), ipcError("Closed"));
});

Deno.test("recvSyncInto: Disconnected once the sender is gone and the queue drained", () => {
  const [tx, rx] = bytesChannel();
  tx.send(new Uint8Array([1]));
  tx.close();
  equal(rx.recvSyncInto(new Uint8Array(4))[0], 1);
  throws(() => rx.recvSyncInto(new Uint8Array(4)), ipcError("Disconnected"));
  rx.close();
});

Deno.test("recvSyncInto and tryRecvInto refuse a bad buffer and leave the messages queued", () => {
  const [tx, rx] = bytesChannel();
  // Sent in one task: the first goes alone, the rest share a batch packet,
  // so after one receive the others wait in the receiver's backlog.
  for (let i = 0; i < 5; i++) tx.send(pattern(100, i));
  sameBytes(rx.recvSyncInto(new Uint8Array(100)), pattern(100, 0), "first");
  sameBytes(rx.recvSyncInto(new Uint8Array(100)), pattern(100, 1), "second");
  const notBytes = [
    undefined,
    null,
    new ArrayBuffer(100),
    new Uint16Array(100),
    new DataView(new ArrayBuffer(100)),
    [1, 2, 3],
    // Things that pass `instanceof Uint8Array` without being one.
    new Proxy(new Uint8Array(100), {}),
    Object.create(Uint8Array.prototype),
    Object.setPrototypeOf({ length: 100 }, Uint8Array.prototype),
  ];
  for (const [index, bad] of notBytes.entries()) {
    for (const receive of [rx.recvSyncInto, rx.tryRecvInto]) {
      throws(
        () => receive.call(rx, bad as unknown as Uint8Array),
        (error: unknown) =>
          error instanceof TypeError &&
          /takes a Uint8Array/.test(error.message),
        `bad buffer ${index}`,
      );
    }
  }
  const detached = new Uint8Array(new ArrayBuffer(128));
  structuredClone(detached.buffer, { transfer: [detached.buffer] });
  const resizable = new ArrayBuffer(128, { maxByteLength: 256 });
  const shrunk = new Uint8Array(resizable, 64, 64);
  resizable.resize(32);
  for (const bad of [detached, shrunk]) {
    for (const receive of [rx.recvSyncInto, rx.tryRecvInto]) {
      throws(
        () => receive.call(rx, bad),
        (error: unknown) =>
          error instanceof TypeError &&
          /detached or out of bounds/.test(error.message),
      );
    }
  }
  for (let i = 2; i < 5; i++) {
    sameBytes(rx.recvSyncInto(new Uint8Array(100)), pattern(100, i), "kept");
  }
  throws(() => rx.tryRecvInto(new Uint8Array(100)), ipcError("Empty"));
  tx.close();
  rx.close();
});

Deno.test("recvSyncInto uses none of a Uint8Array subclass's overrides, so they never see the receive buffer", () => {
  const seen: string[] = [];
  class Sneaky extends Uint8Array {
    static get [Symbol.species](): Uint8ArrayConstructor {
      seen.push("species");
      throw new Error("species");
    }
    override get length(): number {
      seen.push("length");
      // Would make set() throw after the message was taken.
      return 1 << 30;
    }
    override set(source: ArrayLike<number>, offset?: number): void {
      seen.push(`set of ${source.length}`);
      super.set(source, offset);
    }
    override subarray(): Uint8Array<ArrayBuffer> {
      seen.push("subarray");
      throw new Error("subarray");
    }
  }
  const [tx, rx] = bytesChannel();
  const buffer = new Sneaky(64);
  tx.send(new Uint8Array([1, 2, 3]));
  const got = rx.recvSyncInto(buffer);
  equal(got.constructor, Uint8Array);
  equal(got.buffer, buffer.buffer);
  equal([...got].join(), "1,2,3");
  tx.send(new Uint8Array([4, 5]));
  equal([...rx.tryRecvInto(buffer)].join(), "4,5");
  tx.send(pattern(100, 1));
  sameBytes(rx.recvSyncInto(buffer), pattern(100, 1), "longer than 64");
  equal(seen.join(), "", "no override ran");
  tx.close();
  rx.close();
});

Deno.test("recvSyncInto into a buffer that grows with its resizable ArrayBuffer", () => {
  const [tx, rx] = bytesChannel();
  const resizable = new ArrayBuffer(4, { maxByteLength: 1024 });
  const tracking = new Uint8Array(resizable);
  tx.send(pattern(10, 2));
  notEqual(rx.recvSyncInto(tracking).buffer, resizable, "10 > 4 bytes");
  resizable.resize(1024);
  tx.send(pattern(1000, 2));
  const got = rx.recvSyncInto(tracking);
  equal(got.buffer, resizable);
  sameBytes(got, pattern(1000, 2), "after the resize");
  tx.close();
  rx.close();
});

fdTest(
  import.meta,
  "recvSyncInto closes the endpoints a typed sender put in a bytes message",
  async () => {
    const before = await fdBaseline();
    const [tx, rx] = bytesChannel();
    const typed = tx.toOpaque().to<unknown>();
    const buffer = new Uint8Array(512 * KiB);
    for (let round = 0; round < 50; round++) {
      const [innerTx, innerRx] = channel<number>();
      // Every third message is too large for one packet: a memfd body.
      const padding = new Uint8Array(round % 3 === 0 ? 300_000 : 10);
      typed.send({ round, endpoints: [innerTx, innerRx], padding });
      innerTx.close();
      const got = round % 2 === 0
        ? rx.recvSyncInto(buffer)
        : rx.tryRecvInto(buffer);
      ok(got.length > padding.length, "the codec's bytes arrive");
      equal(got.buffer, buffer.buffer);
    }
    typed.close();
    rx.close();
    await settled();
    equal(openFds(), before, "every carried fd is closed");
  },
);

Deno.test("recvSyncInto across processes: a child's 64 KiB stream, in order and intact", async () => {
  const count = 2_000;
  const size = 64 * KiB;
  const child = await startLinked("child.ts", [
    "send-bytes",
    String(count),
    String(size),
  ]);
  using rx = (await child.fromChild.recv()) as IpcBytesReceiver;
  const buffer = new Uint8Array(size);
  for (let i = 0; i < count; i++) {
    const got = rx.recvSyncInto(buffer);
    equal(got.buffer, buffer.buffer);
    equal(got.length, size);
    equal(new DataView(got.buffer).getUint32(0, true), i, "in order");
    for (let k = 4; k < size; k++) {
      if (got[k] !== ((i + k) & 0xff)) {
        throw new Error(`message ${i}: byte ${k} is ${got[k]}`);
      }
    }
  }
  const result = await finish(child.process);
  equal(result.code, 0, result.stderr);
  throws(() => rx.recvSyncInto(buffer), ipcError("Disconnected"));
  child.toChild.close();
  child.fromChild.close();
  await settled();
});
