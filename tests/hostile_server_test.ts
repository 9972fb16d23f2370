/**
 * Issue 5, point 2: hostile peers over real sockets against an IpcServer.
 * Raw sockets connected to the server's name send random packets, lying
 * length headers, truncated memfd frames, descriptors without frames and
 * frames without their descriptors, before and after a good first message,
 * while good clients stream. The server and the good clients keep working,
 * and once everyone is gone the fd count is back at its baseline.
 * (Single-receiver cases are in hostile_test.ts; this is the server side.)
 */

import { equal, ok } from "node:assert/strict";
import { IpcError, type IpcReceiver, IpcSender, IpcServer } from "../mod.ts";
import {
  fdBaseline,
  fdTest,
  linuxOnly,
  openFds,
  settled,
  within,
} from "./helpers.ts";
import {
  ALL_SEALS,
  frameHeader,
  memfd,
  memfdHeader,
  rawClose,
  rawConnect,
  rawSendOwned,
  stringFrame,
} from "./raw_socket.ts";

linuxOnly(
  import.meta,
  "writes raw Linux frames through libc (SOCK_SEQPACKET, SCM_RIGHTS, memfd)",
);

const LONG = Deno.env.get("IPC_LONG") === "1";

/** A hostile packet: bytes and the descriptors to attach. */
type Bad = [string, () => Uint8Array, () => number[]];

const badPackets: Bad[] = [
  [
    "random",
    () =>
      crypto.getRandomValues(
        new Uint8Array(1 + Math.floor(Math.random() * 2000)),
      ),
    () => [],
  ],
  ["random with magic", () => {
    const b = crypto.getRandomValues(new Uint8Array(40));
    b.set(frameHeader(1, 0).subarray(0, 3));
    return b;
  }, () => []],
  ["short", () => new Uint8Array([0x50, 0x49, 1]), () => []],
  [
    "memfd 2^60 sealed",
    () => memfdHeader(2n ** 60n),
    () => [memfd(16, ALL_SEALS)],
  ],
  ["memfd 2^32 unsealed", () => memfdHeader(2n ** 32n), () => [memfd(64, 0)]],
  [
    "memfd truncated header",
    () => memfdHeader(16n).subarray(0, 11),
    () => [memfd(16, ALL_SEALS)],
  ],
  [
    "memfd body shorter than announced",
    () => memfdHeader(1000n),
    () => [memfd(10, ALL_SEALS)],
  ],
  ["memfd frame without its fd", () => memfdHeader(16n, 1), () => []],
  [
    "fds without a frame",
    () => new Uint8Array([1, 2, 3, 4]),
    () => [memfd(8, 0), memfd(8, 0), memfd(8, ALL_SEALS)],
  ],
  ["frame announcing 4 fds, none sent", () => stringFrame("x", 4), () => []],
  [
    "frame announcing 0 fds, 3 sent",
    () => stringFrame("x", 0),
    () => [memfd(1, 0), memfd(1, 0), memfd(1, 0)],
  ],
  [
    "bad msgpack",
    () => new Uint8Array([...frameHeader(1, 0), 0xc1, 0xdd, 0xff]),
    () => [],
  ],
  [
    "array32 of 2^32-1 items",
    () => new Uint8Array([...frameHeader(1, 0), 0xdd, 0xff, 0xff, 0xff, 0xff]),
    () => [],
  ],
  [
    "handle index out of range",
    () => new Uint8Array([...frameHeader(1, 1), 0xd4, 0x12, 0x07]),
    () => [memfd(1, 0)],
  ],
];

function sendBad(raw: number, bad: Bad): void {
  const [, bytes, fds] = bad;
  // MSG_DONTWAIT: a server that stopped reading must not block the test.
  rawSendOwned(raw, bytes(), fds(), true);
}

function pick<T>(items: T[]): T {
  return items[Math.floor(Math.random() * items.length)];
}

/** Drains one accepted connection until its peer is gone. */
async function drain(
  receiver: IpcReceiver<unknown>,
  seen: unknown[],
  errors: { count: number; kinds: Set<string> },
): Promise<void> {
  for (;;) {
    try {
      seen.push(await within(receiver.recv(), 20_000, "a connection's recv"));
    } catch (error) {
      if (!(error instanceof IpcError)) throw error;
      if (error.kind === "Disconnected") break;
      errors.count++;
      errors.kinds.add(`${error.kind}/${error.code ?? ""}`);
    }
  }
  receiver.close();
}

fdTest(
  import.meta,
  "hostile raw clients cannot disturb an IpcServer or its good clients, and leave no descriptor behind",
  async () => {
    const before = await fdBaseline();
    const server = new IpcServer<unknown>();
    const GOOD = 4;
    const HOSTILE = LONG ? 60 : 16;
    const MESSAGES = LONG ? 2000 : 200;
    const goodSeen = new Map<string, unknown[]>();
    const errors = { count: 0, kinds: new Set<string>() };
    const drains: Promise<void>[] = [];
    let accepted = 0;
    const acceptLoop = (async () => {
      for await (const { receiver, first } of server) {
        accepted++;
        const seen: unknown[] = [first];
        if (typeof first === "string" && first.startsWith("good ")) {
          goodSeen.set(first, seen);
        }
        drains.push(drain(receiver, seen, errors));
      }
    })();

    // Hostile clients: half start with garbage (never accepted), half with a
    // good first message (accepted, then hostile).
    const hostile: number[] = [];
    for (let i = 0; i < HOSTILE; i++) {
      const raw = rawConnect(server.name);
      hostile.push(raw);
      if (i % 2 === 0) sendBad(raw, pick(badPackets));
      else rawSendOwned(raw, stringFrame(`evil ${i}`), []);
    }
    // A client that connects and leaves at once.
    rawClose(rawConnect(server.name));

    const good = Array.from({ length: GOOD }, (_, i) => {
      const tx = IpcSender.connect<unknown>(server.name);
      tx.send(`good ${i}`);
      return tx;
    });
    let hostileSent = 0;
    for (let n = 0; n < MESSAGES; n++) {
      for (const [i, tx] of good.entries()) {
        tx.send({ from: i, n, pad: "x".repeat(n % 7 === 0 ? 250_000 : 10) });
      }
      for (const raw of hostile) {
        if (Math.random() < 0.5) {
          sendBad(raw, pick(badPackets));
          hostileSent++;
        }
      }
      if (n % 20 === 0) {
        await new Promise((resolve) => setTimeout(resolve, 1));
      }
    }
    // A new good client still gets in after all of that.
    const late = IpcSender.connect<unknown>(server.name);
    late.send("good late");
    for (const tx of good) await tx.drained();
    for (const tx of [...good, late]) tx.close();
    for (const raw of hostile) rawClose(raw);

    // Wait until every good client's stream has been read to its end.
    const deadline = Date.now() + 30_000;
    while (
      (goodSeen.size < GOOD + 1 || drains.length < accepted) &&
      Date.now() < deadline
    ) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    await within(Promise.all(drains), 30_000, "all connections drained");
    server.close();
    await acceptLoop;

    for (let i = 0; i < GOOD; i++) {
      const seen = goodSeen.get(`good ${i}`);
      ok(seen, `good client ${i} was accepted`);
      equal(seen.length, MESSAGES + 1, `good client ${i}: everything arrived`);
      seen.slice(1).forEach((m, n) => {
        const { from, n: k } = m as { from: number; n: number };
        equal(from, i);
        equal(k, n, `good client ${i}: in order`);
      });
    }
    ok(goodSeen.has("good late"), "a client connecting afterwards is accepted");
    ok(errors.count > 0, "the hostile packets were seen and refused");
    console.log(
      `server: ${GOOD} good clients x ${MESSAGES} messages intact; ${HOSTILE} hostile clients sent ${hostileSent} bad packets; ${errors.count} IpcErrors (${
        [...errors.kinds].join(", ")
      }); ${accepted} connections accepted`,
    );
    equal(openFds(), before, "every stray descriptor was closed");
    await settled();
  },
);
