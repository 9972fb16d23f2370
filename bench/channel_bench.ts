/**
 * In-process channel benchmarks: both ends live in this process, so each
 * case measures one send plus one receive (two kernel calls and the copies
 * around them) without any scheduler wake-up. Cross-process latency and
 * throughput are in `cross_process.ts`.
 *
 * Run: `deno bench --allow-ffi --allow-run --allow-read bench/`
 *
 * @module
 */

import {
  bytesChannel,
  channel,
  type IpcBytesReceiver,
  type IpcBytesSender,
  type IpcReceiver,
  type IpcSender,
} from "../mod.ts";

/** The small typed message: five fields of the common kinds. */
interface Small {
  id: number;
  name: string;
  ok: boolean;
  ratio: number;
  tags: string[];
}

const SMALL: Small = {
  id: 42,
  name: "sensor-7",
  ok: true,
  ratio: 0.25,
  tags: ["a", "b"],
};

const KiB = 1024;
const MiB = 1024 * KiB;

// One channel per case family, reused by every iteration: creation has its
// own group below.
const [bytesTx, bytesRx]: [IpcBytesSender, IpcBytesReceiver] = bytesChannel();
const [smallTx, smallRx]: [IpcSender<Small>, IpcReceiver<Small>] = channel();
const [blobTx, blobRx]: [
  IpcSender<{ id: number; data: Uint8Array }>,
  IpcReceiver<{ id: number; data: Uint8Array }>,
] = channel();
const [carrierTx, carrierRx]: [
  IpcSender<{ id: number; reply: IpcSender<number> }>,
  IpcReceiver<{ id: number; reply: IpcSender<number> }>,
] = channel();
const [replyTx, replyRx]: [IpcSender<number>, IpcReceiver<number>] = channel();

function check(condition: boolean, what: string): void {
  if (!condition) throw new Error(`benchmark sanity check failed: ${what}`);
}

// ---------------------------------------------------------------------------
// Creation.

Deno.bench({
  name: "bytesChannel() + close both ends",
  group: "create",
  baseline: true,
  fn() {
    const [tx, rx] = bytesChannel();
    tx.close();
    rx.close();
  },
});

Deno.bench({
  name: "channel<T>() + close both ends",
  group: "create",
  fn() {
    const [tx, rx] = channel<number>();
    tx.close();
    rx.close();
  },
});

Deno.bench({
  name: "sender.clone() + close",
  group: "create",
  fn() {
    bytesTx.clone().close();
  },
});

// ---------------------------------------------------------------------------
// Bytes channels by size: send, then recvSync of the waiting message.
// Up to the inline limit (~208 KiB) a message is one packet; beyond it the
// body goes through a sealed memfd.

const SIZES: [string, number][] = [
  ["8 B", 8],
  ["64 B", 64],
  ["4 KiB", 4 * KiB],
  ["64 KiB", 64 * KiB],
  ["1 MiB", MiB],
  ["16 MiB", 16 * MiB],
];

for (const [label, size] of SIZES) {
  const payload = new Uint8Array(size).fill(7);
  Deno.bench({
    name: `bytes ${label}: send + recvSync`,
    group: "bytes send+recv by size",
    baseline: size === 8,
    n: size >= 16 * MiB ? 50 : undefined,
    fn() {
      bytesTx.send(payload);
      const got = bytesRx.recvSync();
      if (got.length !== size) check(false, `${label} length`);
    },
  });
}

// ---------------------------------------------------------------------------
// The ways to take an 8-byte message that is already waiting.

const EIGHT = new Uint8Array(8);
const SIXTY_FOUR = new Uint8Array(64);

Deno.bench({
  name: "8 B: send + recvSync()",
  group: "receive paths (8 B, message waiting)",
  baseline: true,
  fn() {
    bytesTx.send(EIGHT);
    bytesRx.recvSync();
  },
});

Deno.bench({
  name: "8 B: send + tryRecv()",
  group: "receive paths (8 B, message waiting)",
  fn() {
    bytesTx.send(EIGHT);
    bytesRx.tryRecv();
  },
});

Deno.bench({
  name: "8 B: send + await recv()",
  group: "receive paths (8 B, message waiting)",
  async fn() {
    bytesTx.send(EIGHT);
    await bytesRx.recv();
  },
});

// ---------------------------------------------------------------------------
// Typed messages: the codec on top of the same path.

Deno.bench({
  name: "bytes 64 B: send + recvSync (no codec)",
  group: "typed small",
  baseline: true,
  fn() {
    bytesTx.send(SIXTY_FOUR);
    bytesRx.recvSync();
  },
});

Deno.bench({
  name: "typed 5-field object: send + recvSync",
  group: "typed small",
  fn() {
    smallTx.send(SMALL);
    const got = smallRx.recvSync();
    if (got.id !== 42) check(false, "small id");
  },
});

Deno.bench({
  name: "typed 5-field object: send + await recv()",
  group: "typed small",
  async fn() {
    smallTx.send(SMALL);
    await smallRx.recv();
  },
});

const BLOB = new Uint8Array(64 * KiB).fill(3);

Deno.bench({
  name: "bytes 64 KiB: send + recvSync (no codec)",
  group: "64 KiB: bytes vs inside a typed message",
  baseline: true,
  fn() {
    bytesTx.send(BLOB);
    bytesRx.recvSync();
  },
});

Deno.bench({
  name: "typed { id, data: 64 KiB Uint8Array }: send + recvSync",
  group: "64 KiB: bytes vs inside a typed message",
  fn() {
    blobTx.send({ id: 1, data: BLOB });
    const got = blobRx.recvSync();
    if (got.data.length !== BLOB.length) check(false, "blob length");
  },
});

// ---------------------------------------------------------------------------
// Endpoints inside messages: each one is a descriptor through SCM_RIGHTS,
// and the receiving side wraps (and here closes) a new sender.

Deno.bench({
  name: "typed 5-field object, no endpoint",
  group: "message carrying one sender",
  baseline: true,
  fn() {
    smallTx.send(SMALL);
    smallRx.recvSync();
  },
});

Deno.bench({
  name: "typed { id, reply: IpcSender } + close the received sender",
  group: "message carrying one sender",
  fn() {
    carrierTx.send({ id: 1, reply: replyTx });
    carrierRx.recvSync().reply.close();
  },
});

Deno.bench({
  name: "reply-channel round trip (create, send sender, reply, recv)",
  group: "message carrying one sender",
  fn() {
    const [tx, rx] = channel<number>();
    carrierTx.send({ id: 2, reply: tx });
    tx.close();
    const request = carrierRx.recvSync();
    request.reply.send(request.id + 1);
    request.reply.close();
    if (rx.recvSync() !== 3) check(false, "reply value");
    rx.close();
  },
});

// Keep the reply channel's receiver referenced (it is never read: the sender
// travels, the reply goes through fresh channels).
check(replyRx !== undefined, "reply receiver");
