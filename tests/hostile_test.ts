/**
 * Issue 2, point 9: a hostile peer writing garbage straight into a channel's
 * socket. Every bad packet makes recv/accept reject with an IpcError (no
 * crash, no hang, no huge allocation), stray descriptors are closed, and the
 * receiver stays usable for the next good message.
 */

import { equal, ok, rejects } from "node:assert/strict";
import { IpcError, IpcOneShotServer, type IpcReceiver } from "../mod.ts";
import {
  AF_UNIX,
  cString,
  errno,
  F_ADD_SEALS,
  F_SEAL_GROW,
  F_SEAL_SEAL,
  F_SEAL_SHRINK,
  F_SEAL_WRITE,
  libc,
  MFD_ALLOW_SEALING,
  MFD_CLOEXEC,
  MSG_NOSIGNAL,
  SOCK_CLOEXEC,
  SOCK_SEQPACKET,
} from "../ffi/libc.ts";
import {
  fdBaseline,
  fdTest,
  ipcError,
  linuxOnly,
  onLinux,
  openFds,
  settled,
  within,
} from "./helpers.ts";
import { rawConnect, rawSend as rawSendCounted } from "./raw_socket.ts";

const RAW_FRAMES =
  "writes raw Linux frames through libc (SOCK_SEQPACKET, SCM_RIGHTS, memfd)";
linuxOnly(import.meta, RAW_FRAMES);

/** One packet with `fds` in SCM_RIGHTS; the kernel must take all of it. */
function rawSend(fd: number, bytes: Uint8Array, fds: number[] = []): void {
  equal(rawSendCounted(fd, bytes, fds), bytes.length, "sendmsg");
}

/** An 8-byte frame header. */
function header(kind: number, fdCount: number, extra = 0): Uint8Array {
  const bytes = new Uint8Array(8 + extra);
  const view = new DataView(bytes.buffer);
  view.setUint16(0, 0x4950, true);
  bytes[2] = kind;
  view.setUint32(4, fdCount, true);
  return bytes;
}

/** An inline frame holding a short MessagePack string. */
function goodFrame(text: string, fdCount = 0): Uint8Array {
  const utf8 = new TextEncoder().encode(text);
  ok(utf8.length < 32);
  const frame = header(1, fdCount, 1 + utf8.length);
  frame[8] = 0xa0 | utf8.length;
  frame.set(utf8, 9);
  return frame;
}

/** A memfd frame header announcing `length` body bytes. */
function memfdHeader(length: bigint, fdCount = 1): Uint8Array {
  const frame = header(2, fdCount, 8);
  new DataView(frame.buffer).setBigUint64(8, length, true);
  return frame;
}

function memfd(size: number, seals: number): number {
  const lc = libc();
  const fd = lc.memfd_create(
    cString("hostile"),
    MFD_CLOEXEC | MFD_ALLOW_SEALING,
  );
  ok(fd >= 0);
  if (size > 0) {
    equal(lc.write(fd, new Uint8Array(size).fill(0x41), BigInt(size)), size);
  }
  if (seals) equal(lc.fcntl(fd, F_ADD_SEALS, seals), 0);
  return fd;
}

const ALL_SEALS = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL;

/** A receiver whose peer is a raw socket we write into. */
async function hostilePeer(): Promise<
  { raw: number; rx: IpcReceiver<unknown> }
> {
  const server = new IpcOneShotServer<unknown>();
  const raw = rawConnect(server.name);
  rawSend(raw, goodFrame("hello"));
  const [rx, first] = await within(server.accept(), 10_000, "accept");
  equal(first, "hello");
  return { raw, rx };
}

/**
 * Sends `bad` (with `fds`, which are then closed here), expects recv to
 * reject with an IpcError, checks that no descriptor stayed behind, and that
 * a good message after it arrives.
 */
async function expectRejected(
  name: string,
  bad: Uint8Array,
  makeFds: () => number[] = () => [],
  kind?: IpcError["kind"],
): Promise<void> {
  const { raw, rx } = await hostilePeer();
  const base = openFds();
  sendBad(raw, bad, makeFds);
  await rejects(
    within(rx.recv(), 10_000, `${name}: recv`),
    (error) => {
      ok(error instanceof IpcError, `${name}: rejected with ${error}`);
      if (kind !== undefined) ipcError(kind)(error);
      return true;
    },
  );
  equal(
    openFds(),
    base,
    `${name}: the descriptors that came with it were closed`,
  );
  rawSend(raw, goodFrame("next"));
  equal(
    await within(rx.recv(), 10_000, `${name}: next recv`),
    "next",
    `${name}: usable afterwards`,
  );
  // And the sync path too.
  sendBad(raw, bad, makeFds);
  let syncError: unknown;
  try {
    rx.recvSync();
  } catch (error) {
    syncError = error;
  }
  ok(syncError instanceof IpcError, `${name}: recvSync threw ${syncError}`);
  rawSend(raw, goodFrame("after sync"));
  equal(rx.recvSync(), "after sync");
  equal(openFds(), base, `${name}: no descriptor left after the sync path`);
  libc().close(raw);
  await rejects(rx.recv(), ipcError("Disconnected"));
  rx.close();
  await settled();
}

/** Sends `bad` with fresh descriptors, then closes our copies of them. */
function sendBad(raw: number, bad: Uint8Array, makeFds: () => number[]): void {
  const fds = makeFds();
  rawSend(raw, bad, fds);
  for (const fd of fds) libc().close(fd);
}

fdTest(import.meta, "random bytes", async () => {
  await fdBaseline();
  const bytes = crypto.getRandomValues(new Uint8Array(100));
  bytes[0] = 0x00; // never the magic by chance
  await expectRejected("random bytes", bytes, undefined, "Io");
  for (const size of [8, 9, 1000, 65_536]) {
    const noise = crypto.getRandomValues(new Uint8Array(size));
    noise[1] = 0x00;
    await expectRejected(`${size} random bytes`, noise);
  }
});

fdTest(import.meta, "packets shorter than a frame header", async () => {
  for (const size of [1, 3, 7]) {
    await expectRejected(
      `${size}-byte packet`,
      new Uint8Array(size).fill(0x50),
      undefined,
      "Io",
    );
  }
  // The first 7 bytes of a real header are still too short.
  await expectRejected(
    "truncated header",
    goodFrame("x").subarray(0, 7),
    undefined,
    "Io",
  );
});

fdTest(
  import.meta,
  "a header announcing 3 descriptors with none attached",
  async () => {
    await expectRejected(
      "3 announced, 0 attached",
      goodFrame("x", 3),
      undefined,
      "Io",
    );
  },
);

fdTest(
  import.meta,
  "a header announcing no descriptor with 2 attached (they are closed)",
  async () => {
    await expectRejected(
      "0 announced, 2 attached",
      goodFrame("x", 0),
      () => [memfd(4, 0), memfd(4, 0)],
      "Io",
    );
  },
);

fdTest(
  import.meta,
  "descriptors attached to a packet that is not a frame are closed",
  async () => {
    await expectRejected(
      "garbage with 3 fds",
      new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9]),
      () => [memfd(1, 0), memfd(1, 0), memfd(1, 0)],
    );
    await expectRejected(
      "short packet with 2 fds",
      new Uint8Array([0x50]),
      () => [memfd(1, 0), memfd(1, 0)],
    );
  },
);

fdTest(
  import.meta,
  "a memfd frame claiming 2^60 bytes with a small unsealed memfd",
  async () => {
    await expectRejected(
      "2^60, unsealed",
      memfdHeader(2n ** 60n),
      () => [memfd(16, 0)],
      "Io",
    );
  },
);

fdTest(
  import.meta,
  "a memfd frame claiming 2^60 bytes with a small sealed memfd",
  async () => {
    await expectRejected(
      "2^60, sealed",
      memfdHeader(2n ** 60n),
      () => [memfd(16, ALL_SEALS)],
      "Io",
    );
    await expectRejected(
      "2^64-1, sealed",
      memfdHeader(2n ** 64n - 1n),
      () => [memfd(16, ALL_SEALS)],
      "Io",
    );
  },
);

fdTest(
  import.meta,
  "a memfd frame whose body is not sealed, or sealed only partly",
  async () => {
    await expectRejected(
      "unsealed, right size",
      memfdHeader(300_000n),
      () => [memfd(300_000, 0)],
      "Io",
    );
    await expectRejected(
      "shrink seal only",
      memfdHeader(300_000n),
      () => [memfd(300_000, F_SEAL_SHRINK)],
      "Io",
    );
    await expectRejected(
      "no write seal",
      memfdHeader(300_000n),
      () => [memfd(300_000, F_SEAL_SHRINK | F_SEAL_GROW)],
      "Io",
    );
  },
);

fdTest(
  import.meta,
  "a memfd frame whose descriptor is not a memfd",
  async () => {
    await expectRejected("a socket as body", memfdHeader(16n), () => {
      const pair = new Int32Array(2);
      libc().socketpair(
        AF_UNIX,
        SOCK_SEQPACKET | SOCK_CLOEXEC,
        0,
        new Uint8Array(pair.buffer),
      );
      libc().close(pair[1]);
      return [pair[0]];
    }, "Io");
  },
);

fdTest(
  import.meta,
  "a memfd frame that is truncated or has no descriptor",
  async () => {
    await expectRejected(
      "memfd header cut to 12 bytes",
      memfdHeader(16n).subarray(0, 12),
      () => [memfd(16, ALL_SEALS)],
      "Io",
    );
    await expectRejected(
      "memfd frame without fd",
      memfdHeader(16n, 0),
      undefined,
      "Io",
    );
    await expectRejected(
      "memfd frame with trailing bytes",
      new Uint8Array([...memfdHeader(16n), 1, 2, 3]),
      () => [memfd(16, ALL_SEALS)],
      "Io",
    );
  },
);

fdTest(
  import.meta,
  "unknown frame kinds and a nonzero reserved byte",
  async () => {
    const unknown = goodFrame("x");
    unknown[2] = 7;
    await expectRejected("kind 7", unknown, undefined, "Io");
    const zero = goodFrame("x");
    zero[2] = 0;
    await expectRejected("kind 0", zero, undefined, "Io");
    const reserved = goodFrame("x");
    reserved[3] = 1;
    await expectRejected("reserved byte", reserved, undefined, "Io");
  },
);

fdTest(
  import.meta,
  "a valid frame with a body that is not MessagePack",
  async () => {
    const frame = header(1, 0, 3);
    frame.set([0xc1, 0xc1, 0xc1], 8); // 0xc1 is never used in MessagePack
    await expectRejected("bad msgpack", frame, undefined, "Serialization");
    const truncated = header(1, 0, 2);
    truncated.set([0xdb, 0xff], 8); // str32 with its length cut off
    await expectRejected(
      "truncated msgpack",
      truncated,
      undefined,
      "Serialization",
    );
    const huge = header(1, 0, 5);
    huge.set([0xdd, 0x7f, 0xff, 0xff, 0xff], 8); // array32 of 2^31 items, no items
    await expectRejected(
      "array claiming 2^31 items",
      huge,
      undefined,
      "Serialization",
    );
  },
);

fdTest(
  import.meta,
  "the MessagePack byte 0xC1 (never used) is refused, not decoded",
  async () => {
    // msgpackr decodes a lone 0xC1 as a `C1Type` object; a message must not.
    const frame = header(1, 0, 1);
    frame[8] = 0xc1;
    await expectRejected("lone 0xC1", frame, undefined, "Serialization");
    const inArray = header(1, 0, 3);
    inArray.set([0x92, 0xc1, 0x01], 8); // [0xC1, 1]
    await expectRejected(
      "0xC1 inside an array",
      inArray,
      undefined,
      "Serialization",
    );
  },
);

fdTest(
  import.meta,
  "a frame whose value refers to a handle it does not carry",
  async () => {
    const frame = header(1, 0, 3);
    frame.set([0xd4, 0x12, 0x05], 8); // fixext1, first endpoint type, index 5
    await expectRejected(
      "handle index 5 of 0",
      frame,
      undefined,
      "Serialization",
    );
    const twice = header(1, 1, 7);
    twice.set([0x92, 0xd4, 0x12, 0x00, 0xd4, 0x12, 0x00], 8); // [handle 0, handle 0]
    await expectRejected(
      "handle used twice",
      twice,
      () => [memfd(1, 0)],
      "Serialization",
    );
  },
);

fdTest(
  import.meta,
  "descriptors the value does not refer to are closed after decoding",
  async () => {
    const { raw, rx } = await hostilePeer();
    const base = openFds();
    const fds = [memfd(1, 0), memfd(1, 0)];
    rawSend(raw, goodFrame("stray", 2), fds);
    for (const fd of fds) libc().close(fd);
    equal(await rx.recv(), "stray");
    equal(openFds(), base);
    libc().close(raw);
    rx.close();
    await settled();
  },
);

Deno.test({
  ...onLinux(
    "a zero-length packet is reported as an IpcError, never a hang",
    RAW_FRAMES,
  ),
}, async () => {
  // SOCK_SEQPACKET returns 0 both for an empty packet and at end of stream.
  const { raw, rx } = await hostilePeer();
  rawSend(raw, new Uint8Array(0));
  await rejects(
    within(rx.recv(), 10_000, "recv"),
    (e) => e instanceof IpcError,
  );
  libc().close(raw);
  rx.close();
  await settled();
});

fdTest(
  import.meta,
  "a client whose first message is garbage is dropped; accept() waits for a good one",
  async () => {
    // Since the multi-client IpcServer, a one-shot server accepts the first
    // client whose first message decodes: a hostile client cannot make the
    // bootstrap fail, and is disconnected.
    const before = await fdBaseline();
    const server = new IpcOneShotServer<unknown>();
    const accepted = server.accept();
    let outcome = "pending";
    accepted.then(() => outcome = "resolved", () => outcome = "rejected");
    const bad: [string, Uint8Array, () => number[]][] = [
      ["random", new Uint8Array([9, 9, 9, 9, 9, 9, 9, 9, 9]), () => []],
      ["short", new Uint8Array([1]), () => []],
      [
        "stray fds",
        new Uint8Array([1, 2, 3]),
        () => [memfd(1, 0), memfd(1, 0)],
      ],
      ["bad msgpack", new Uint8Array([...header(1, 0), 0xc1, 0xc1]), () => []],
      ["2^60 memfd", memfdHeader(2n ** 60n), () => [memfd(8, 0)]],
      ["3 fds announced", goodFrame("x", 3), () => []],
    ];
    const raws: number[] = [];
    for (const [, bytes, makeFds] of bad) {
      const raw = rawConnect(server.name);
      raws.push(raw);
      sendBad(raw, bytes, makeFds);
    }
    // A client that connects and leaves without a word.
    libc().close(rawConnect(server.name));
    // Every bad client is dropped: the server closes its end of each.
    for (const raw of raws) {
      const probe = new Uint8Array(8);
      let dropped = false;
      // At most 200 probes: fewer than the ~278 packets a socket buffers.
      for (let i = 0; i < 200 && !dropped; i++) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        dropped = libc().send(raw, probe, 8n, 0x40 | MSG_NOSIGNAL) < 0 &&
          errno() !== 11;
      }
      ok(
        dropped,
        `the server still holds garbage client ${
          raws.indexOf(raw)
        }: errno ${errno()}`,
      );
      libc().close(raw);
    }
    equal(outcome, "pending", "a garbage client settled accept()");
    const client = rawConnect(server.name);
    rawSend(client, goodFrame("the real client"));
    const [rx, first] = await within(
      accepted,
      10_000,
      "accept of the good client",
    );
    equal(first, "the real client");
    libc().close(client);
    await rejects(rx.recv(), ipcError("Disconnected"));
    rx.close();
    equal(openFds(), before);
    await settled();
  },
);
