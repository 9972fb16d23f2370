/**
 * Issue 2, point 8: descriptors are released by close(), by `using`, and by
 * the garbage collector; EMFILE becomes a clear "Io" error.
 */

import { deepStrictEqual, equal, ok } from "node:assert/strict";
import {
  bytesChannel,
  channel,
  IpcOneShotServer,
  type IpcReceiver,
  IpcSender,
} from "../mod.ts";
import {
  fdBaseline,
  fdTest,
  finish,
  fixture,
  offWindows,
  onLinux,
  openFds,
  runFixture,
  settled,
} from "./helpers.ts";

/**
 * Why the tests that need a real count are Linux-only: openFds() counts fds
 * through fcntl, and is 0 elsewhere; Wine's GetProcessHandleCount reports 0
 * too. The before/after tests still run everywhere (and catch crashes).
 */
const COUNTS =
  "counts open descriptors, which openFds() can only do on Linux (Wine's GetProcessHandleCount is 0)";
/** Why the EMFILE tests are skipped on Windows. */
const NO_ULIMIT =
  "needs `sh -c 'ulimit -n 64'`; Windows has no per-process descriptor limit";

fdTest(import.meta, "close() releases descriptors at once", async () => {
  const before = await fdBaseline();
  const [tx, rx] = channel<number>();
  equal(openFds(), before + 2);
  const clone = tx.clone();
  equal(openFds(), before + 3);
  clone.close();
  equal(openFds(), before + 2);
  tx.close();
  equal(openFds(), before + 1);
  rx.close();
  equal(openFds(), before);
  // Closing twice is harmless.
  tx.close();
  rx.close();
  equal(openFds(), before);
  await settled();
}, COUNTS);

fdTest(
  import.meta,
  "`using` releases descriptors at the end of the block",
  async () => {
    const before = await fdBaseline();
    {
      const [a, b] = channel<number>();
      using tx = a;
      using rx = b;
      const [c, d] = bytesChannel();
      using btx = c;
      using brx = d;
      using server = new IpcOneShotServer<number>();
      using client = IpcSender.connect<number>(server.name);
      tx.send(1);
      btx.send(new Uint8Array([1]));
      client.send(1);
      equal(rx.tryRecv(), 1);
      equal(brx.tryRecv()[0], 1);
      ok(openFds() > before);
    }
    equal(openFds(), before);
    await settled();
  },
  COUNTS,
);

fdTest(
  import.meta,
  "opaque conversions and endpoints travelling keep the count exact",
  async () => {
    const before = await fdBaseline();
    {
      const [tx, rx] = channel<unknown>();
      const [a, b] = channel<number>();
      const opaqueA = a.toOpaque();
      const opaqueB = b.toOpaque();
      tx.send({ opaqueA, opaqueB }); // the sender is copied, the receiver moved
      const got = await rx.recv() as Record<string, { close(): void }>;
      opaqueA.close();
      got.opaqueA.close();
      got.opaqueB.close();
      opaqueB.close();
      tx.close();
      rx.close();
    }
    equal(openFds(), before);
    // A received message whose endpoints are never adopted: decode closes the
    // ones the value does not use... and the rest are closed by close().
    {
      const [tx, rx] = channel<IpcReceiver<number>[]>();
      const pairs = Array.from({ length: 10 }, () => channel<number>());
      tx.send(pairs.map(([, r]) => r));
      for (const r of await rx.recv()) r.close();
      for (const [s] of pairs) s.close();
      tx.close();
      rx.close();
    }
    equal(openFds(), before);
    // Unread messages with endpoints inside are released with the receiver.
    {
      const [tx, rx] = channel<unknown>();
      const [a, b] = channel<number>();
      tx.send([a, b]);
      a.close();
      tx.close();
      rx.close();
    }
    equal(openFds(), before);
    await settled();
  },
);

fdTest(
  import.meta,
  "a closed sender with a queue releases its descriptor once flushed",
  async () => {
    const before = await fdBaseline();
    const [tx, rx] = bytesChannel();
    while (tx.bufferedAmount === 0) tx.send(new Uint8Array(512));
    tx.close();
    let count = 0;
    for await (const _ of rx) count++;
    ok(count > 1);
    rx.close();
    equal(openFds(), before);
    await settled();
  },
);

fdTest(
  import.meta,
  "creating and closing 100,000 channels leaves the fd count unchanged",
  async () => {
    const before = await fdBaseline();
    for (let i = 0; i < 100_000; i++) {
      if (i % 2) {
        const [tx, rx] = channel<number>();
        if (i % 1000 === 1) {
          tx.send(i);
          equal(rx.tryRecv(), i);
        }
        tx.close();
        rx.close();
      } else {
        const [tx, rx] = bytesChannel();
        tx.close();
        rx.close();
      }
    }
    equal(openFds(), before);
    await settled();
  },
);

Deno.test(
  onLinux(
    "endpoints dropped without close are released by the garbage collector",
    COUNTS,
  ),
  async () => {
    const child = runFixture("gc.ts", {
      permissions: ["--allow-ffi", "--v8-flags=--expose-gc"],
    });
    const result = await finish(child);
    equal(result.code, 0, result.stderr);
    const { before, peak, after } = JSON.parse(result.stdout);
    ok(
      peak > before + 500,
      `the fixture really held many fds: ${before} → ${peak}`,
    );
    equal(
      after,
      before,
      `fds after gc: before ${before}, peak ${peak}, after ${after}`,
    );
  },
);

/** Runs fixtures/emfile.ts with at most 64 descriptors. */
async function emfileReport(): Promise<Record<string, Record<string, string>>> {
  const child = new Deno.Command("sh", {
    args: [
      "-c",
      `ulimit -n 64; exec "$0" run --allow-ffi "$1"`,
      Deno.execPath(),
      fixture("emfile.ts"),
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const result = await finish(child);
  equal(result.code, 0, result.stderr);
  return JSON.parse(result.stdout);
}

Deno.test(
  offWindows(
    "EMFILE becomes kind Io with code EMFILE, and the process recovers",
    NO_ULIMIT,
  ),
  async () => {
    const report = await emfileReport();
    for (const what of ["channel", "clone", "server"]) {
      deepStrictEqual(
        { kind: report[what].kind, code: report[what].code },
        { kind: "Io", code: "EMFILE" },
        `${what}: ${JSON.stringify(report[what])}`,
      );
    }
    ok(/descriptor/i.test(report.channel.message), report.channel.message);
    equal(
      report.receive.kind,
      "Io",
      `receiving an fd at EMFILE: ${JSON.stringify(report.receive)}`,
    );
    equal(report.after as unknown, "recovered");
  },
);

Deno.test(
  offWindows(
    "a message whose descriptors cannot be installed (EMFILE) is not blamed on the peer",
    NO_ULIMIT,
  ),
  async () => {
    // recvmsg sets MSG_CTRUNC when the receiver has no free descriptor; the
    // frame announced one descriptor, so the peer did nothing wrong.
    const { receive } = await emfileReport();
    equal(
      receive.code,
      "EMFILE",
      `receiving an fd at EMFILE: ${JSON.stringify(receive)}`,
    );
  },
);
