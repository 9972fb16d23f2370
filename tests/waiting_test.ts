/**
 * Issue 2, point 7: waiting costs no threads, never blocks the event loop,
 * keeps a process alive only while something waits; timeouts, aborts and
 * close() end waits.
 */

import { deepStrictEqual, equal, ok, rejects } from "node:assert/strict";
import { bytesChannel, channel, IpcOneShotServer } from "../mod.ts";
import {
  fdBaseline,
  fdTest,
  finish,
  ipcError,
  openFds,
  settled,
  startLinked,
  within,
} from "./helpers.ts";

fdTest(
  import.meta,
  "1,000 receivers awaiting recv() at once all complete",
  async () => {
    const before = await fdBaseline();
    const pairs = Array.from({ length: 1000 }, () => channel<number>());
    const pending = pairs.map(([, rx]) => rx.recv());
    // Let the poller park with all of them registered.
    await new Promise((resolve) => setTimeout(resolve, 50));
    // Answer in a scrambled order.
    for (let k = 0; k < 1000; k++) {
      const i = (k * 617) % 1000;
      pairs[i][0].send(i);
    }
    const values = await within(Promise.all(pending), 30_000, "1,000 receives");
    deepStrictEqual(values, Array.from({ length: 1000 }, (_, i) => i));
    // A second round, with a bytes channel's worth of waiters mixed in.
    const again = pairs.map(([, rx]) => rx.recv());
    for (const [tx] of pairs) tx.close();
    for (const result of await Promise.allSettled(again)) {
      equal(result.status, "rejected");
      ok(ipcError("Disconnected")((result as PromiseRejectedResult).reason));
    }
    for (const [, rx] of pairs) rx.close();
    equal(openFds(), before);
    await settled();
  },
);

Deno.test("a timer fires while a recv is pending: the event loop is free", async () => {
  const [tx, rx] = channel<string>();
  let resolved = false;
  const pending = rx.recv().then((v) => {
    resolved = true;
    return v;
  });
  let ticks = 0;
  await new Promise<void>((resolve) => {
    const interval = setInterval(() => {
      if (++ticks === 5) {
        clearInterval(interval);
        resolve();
      }
    }, 5);
  });
  equal(ticks, 5);
  equal(resolved, false, "nothing was sent yet");
  // Other async work proceeds too.
  const file = await Deno.makeTempFile();
  await Deno.writeTextFile(file, "io works");
  equal(await Deno.readTextFile(file), "io works");
  await Deno.remove(file);
  tx.send("late");
  equal(await pending, "late");
  tx.close();
  rx.close();
  await settled();
});

Deno.test("several recv() on one receiver resolve in call order", async () => {
  const [tx, rx] = channel<number>();
  const pending = [rx.recv(), rx.recv(), rx.recv()];
  tx.send(1);
  tx.send(2);
  tx.send(3);
  deepStrictEqual(await Promise.all(pending), [1, 2, 3]);
  tx.close();
  rx.close();
  await settled();
});

Deno.test("a child with a pending recv stays alive until a message arrives", async () => {
  const child = await startLinked("child.ts", ["wait"]);
  const status = child.process.status;
  const early = await Promise.race([
    status.then(() => "exited"),
    new Promise((resolve) => setTimeout(() => resolve("alive"), 1500)),
  ]);
  equal(early, "alive", "the child exited with a recv pending");
  child.toChild.send({ go: [1, 2] });
  const result = await finish(child.process);
  equal(result.code, 0, result.stderr);
  equal(result.stdout.trim(), JSON.stringify({ go: [1, 2] }));
  child.toChild.close();
  child.fromChild.close();
  await settled();
});

Deno.test("a child with channels open but nothing pending exits promptly", async () => {
  const start = performance.now();
  const child = await startLinked("child.ts", ["idle"]);
  equal(await child.fromChild.recv(), "done");
  // Generous bound for a loaded 2-core machine; a hang would be killed at 45 s.
  const result = await finish(child.process, 20_000);
  equal(result.signal, null, "the child hung and was killed");
  equal(result.code, 0, result.stderr);
  equal(result.stdout.trim(), "done");
  ok(performance.now() - start < 20_000);
  child.toChild.close();
  child.fromChild.close();
  await settled();
});

Deno.test("tryRecvTimeout rejects Empty after the timeout, resolves if a message comes", async () => {
  const [tx, rx] = channel<number>();
  await rejects(rx.tryRecvTimeout(20), ipcError("Empty"));
  await rejects(rx.tryRecvTimeout(0), ipcError("Empty"));
  tx.send(1);
  equal(
    await rx.tryRecvTimeout(0),
    1,
    "a waiting message beats a zero timeout",
  );
  const pending = rx.tryRecvTimeout(10_000);
  setTimeout(() => tx.send(2), 20);
  equal(await pending, 2);
  // A timed-out wait does not eat the next message.
  await rejects(rx.tryRecvTimeout(10), ipcError("Empty"));
  tx.send(3);
  equal(await rx.recv(), 3);
  const [btx, brx] = bytesChannel();
  await rejects(brx.tryRecvTimeout(10), ipcError("Empty"));
  btx.send(new Uint8Array([4]));
  deepStrictEqual([...(await brx.tryRecvTimeout(1000))], [4]);
  for (const end of [tx, rx, btx, brx]) end.close();
  await settled();
});

Deno.test("an AbortSignal cancels a recv without losing the next message", async () => {
  const [tx, rx] = channel<string>();
  const controller = new AbortController();
  const reason = new Error("stop waiting");
  const pending = rx.recv({ signal: controller.signal });
  const other = rx.recv();
  controller.abort(reason);
  await rejects(pending, (e) => e === reason);
  tx.send("for the other waiter");
  equal(await other, "for the other waiter");
  // An already-aborted signal rejects at once when nothing waits.
  await rejects(
    rx.recv({ signal: AbortSignal.abort(reason) }),
    (e) => e === reason,
  );
  // Aborting after the message arrived changes nothing.
  const done = new AbortController();
  tx.send("done");
  equal(await rx.recv({ signal: done.signal }), "done");
  done.abort();
  // tryRecvTimeout takes a signal too.
  const third = new AbortController();
  const timed = rx.tryRecvTimeout(60_000, { signal: third.signal });
  third.abort(reason);
  await rejects(timed, (e) => e === reason);
  tx.close();
  rx.close();
  await settled();
});

Deno.test("an already-aborted signal rejects recv even when a message waits, and takes nothing", async () => {
  // DOM convention (fetch, streams, events.once): an aborted signal means
  // "do not start"; the waiting message stays for the next recv.
  const [tx, rx] = channel<string>();
  const reason = new Error("aborted before the call");
  tx.send("kept");
  let outcome: string;
  try {
    outcome = `resolved with ${await rx.recv({
      signal: AbortSignal.abort(reason),
    })}`;
  } catch (error) {
    outcome = error === reason ? "rejected" : `rejected with ${error}`;
  }
  const next = rx.tryRecv.bind(rx);
  let kept: string | undefined;
  try {
    kept = next();
  } catch { /* taken by the aborted call */ }
  tx.close();
  rx.close();
  await settled();
  equal(outcome, "rejected");
  equal(kept, "kept");
});

Deno.test("close() rejects pending recv with Closed", async () => {
  const [tx, rx] = channel<number>();
  const pending = [rx.recv(), rx.recv(), rx.tryRecvTimeout(60_000)];
  rx.close();
  for (const p of pending) await rejects(p, ipcError("Closed"));
  await rejects(rx.recv(), ipcError("Closed"));
  // The sender learns the receiver is gone.
  let error: unknown;
  try {
    tx.send(1);
  } catch (e) {
    error = e;
  }
  ok(ipcError("Disconnected")(error));
  tx.close();
  const [btx, brx] = bytesChannel();
  const bytesPending = brx.recv();
  brx[Symbol.dispose]();
  await rejects(bytesPending, ipcError("Closed"));
  btx.close();
  await settled();
});

Deno.test("a pending accept() is cancelled by an AbortSignal and by close()", async () => {
  const server = new IpcOneShotServer<string>();
  const controller = new AbortController();
  const reason = new Error("no client");
  const pending = server.accept({ signal: controller.signal });
  controller.abort(reason);
  await rejects(pending, (e) => e === reason);
  const second = server.accept();
  server.close();
  await rejects(second, ipcError("Closed"));
  await settled();
});
