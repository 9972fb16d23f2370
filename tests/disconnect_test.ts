/**
 * Issue 2, point 6: disconnection in every direction, including a child
 * killed with SIGKILL, and no SIGPIPE.
 */

import {
  deepStrictEqual,
  equal,
  ok,
  rejects,
  throws,
} from "node:assert/strict";
import { bytesChannel, channel, type IpcSender } from "../mod.ts";
import { finish, ipcError, settled, startLinked, within } from "./helpers.ts";

Deno.test("recv drains the queue, then rejects Disconnected once every clone closed", async () => {
  const [tx, rx] = channel<number>();
  const clones = [tx.clone(), tx.clone()];
  tx.send(1);
  clones[0].send(2);
  tx.close();
  clones[0].close();
  clones[1].send(3);
  equal(await rx.recv(), 1);
  equal(await rx.recv(), 2);
  equal(await rx.recv(), 3);
  // One sender is still open: nothing to report yet.
  await rejects(rx.tryRecvTimeout(50), ipcError("Empty"));
  clones[1].close();
  await rejects(rx.recv(), ipcError("Disconnected"));
  // It stays that way for every kind of receive.
  await rejects(rx.recv(), ipcError("Disconnected"));
  throws(() => rx.tryRecv(), ipcError("Disconnected"));
  throws(() => rx.recvSync(), ipcError("Disconnected"));
  await rejects(rx.tryRecvTimeout(10), ipcError("Disconnected"));
  rx.close();
  await settled();
});

Deno.test("queued messages are all received before Disconnected", async () => {
  const [tx, rx] = channel<number>();
  tx.send(1);
  tx.send(2);
  tx.close();
  equal(rx.tryRecv(), 1);
  equal(await rx.recv(), 2);
  await rejects(rx.recv(), ipcError("Disconnected"));
  rx.close();
  await settled();
});

Deno.test("a pending recv rejects Disconnected when the last sender closes", async () => {
  const [tx, rx] = bytesChannel();
  const pending = [rx.recv(), rx.recv(), rx.recv()];
  tx.send(new Uint8Array([1]));
  tx.close();
  deepStrictEqual([...(await pending[0])], [1]);
  await rejects(pending[1], ipcError("Disconnected"));
  await rejects(pending[2], ipcError("Disconnected"));
  rx.close();
  await settled();
});

Deno.test("async iteration ends when every sender is gone", async () => {
  const [tx, rx] = channel<string>();
  const second = tx.clone();
  const seen: string[] = [];
  const done = (async () => {
    for await (const s of rx) seen.push(s);
  })();
  tx.send("a");
  second.send("b");
  tx.close();
  await new Promise((resolve) => setTimeout(resolve, 20));
  second.send("c");
  second.close();
  await within(done, 10_000, "iteration");
  deepStrictEqual(seen, ["a", "b", "c"]);
  const [btx, brx] = bytesChannel();
  btx.send(new Uint8Array([5]));
  btx.close();
  const bytes: number[] = [];
  for await (const b of brx) bytes.push(...b);
  deepStrictEqual(bytes, [5]);
  rx.close();
  brx.close();
  await settled();
});

Deno.test("a sender that only travelled inside messages still counts until closed", async () => {
  const [tx, rx] = channel<number>();
  const [carrier, carried] = channel<IpcSender<number>>();
  carrier.send(tx);
  tx.close();
  // The copy sits unread in the carrier's socket: still a sender.
  await rejects(rx.tryRecvTimeout(50), ipcError("Empty"));
  const copy = await carried.recv();
  copy.send(9);
  copy.close();
  equal(await rx.recv(), 9);
  await rejects(rx.recv(), ipcError("Disconnected"));
  for (const end of [rx, carrier, carried]) end.close();
  await settled();
});

Deno.test("a child killed with SIGKILL holding the only sender disconnects the parent", async () => {
  const child = await startLinked("child.ts", ["hold"]);
  equal(await child.fromChild.recv(), "ready");
  const pending = child.fromChild.recv();
  child.process.kill("SIGKILL");
  await rejects(
    within(pending, 20_000, "recv after SIGKILL"),
    ipcError("Disconnected"),
  );
  const result = await finish(child.process);
  // Windows has no signals: Deno's kill() is TerminateProcess, reported as
  // a non-zero exit code with no signal.
  if (Deno.build.os === "windows") {
    equal(result.signal, null);
    ok(result.code !== 0, `killed child exited with ${result.code}`);
  } else {
    equal(result.signal, "SIGKILL");
  }
  // Sending to the dead child's receiver throws, without killing us.
  throws(() => child.toChild.send("anyone?"), ipcError("Disconnected"));
  child.toChild.close();
  child.fromChild.close();
  await settled();
});

Deno.test("a killed child's clone of a parent's sender is released with it", async () => {
  const [tx, rx] = channel<string>();
  const child = await startLinked("child.ts", ["hold-sender"]);
  child.toChild.send(tx);
  tx.close();
  equal(await child.fromChild.recv(), "ready");
  equal(await rx.recv(), "holding");
  const pending = rx.recv();
  child.process.kill("SIGKILL");
  await rejects(
    within(pending, 20_000, "recv after SIGKILL"),
    ipcError("Disconnected"),
  );
  await finish(child.process);
  for (const end of [rx, child.toChild, child.fromChild]) end.close();
  await settled();
});

Deno.test("a child ending normally with a sender open disconnects the parent", async () => {
  const child = await startLinked("child.ts", ["idle"]);
  equal(await child.fromChild.recv(), "done");
  await rejects(
    within(child.fromChild.recv(), 20_000, "recv"),
    ipcError("Disconnected"),
  );
  const result = await finish(child.process);
  equal(result.code, 0, result.stderr);
  child.toChild.close();
  child.fromChild.close();
  await settled();
});

Deno.test("send to a closed receiver throws Disconnected, again and again", async () => {
  const [tx, rx] = channel<number>();
  rx.close();
  for (let i = 0; i < 3; i++) {
    throws(() => tx.send(i), ipcError("Disconnected"));
  }
  await rejects(tx.drained(), ipcError("Disconnected"));
  const clone = tx.clone();
  throws(() => clone.send(1), ipcError("Disconnected"));
  tx.close();
  clone.close();
  throws(() => tx.send(1), ipcError("Closed"), "a closed sender says Closed");
  await settled();
});

Deno.test("a receiver closing under a queued sender fails later sends and drained()", async () => {
  const [tx, rx] = bytesChannel();
  while (tx.bufferedAmount === 0) tx.send(new Uint8Array(1000));
  tx.send(new Uint8Array(1000));
  const drain = tx.drained();
  rx.close();
  // The flush discovers the gone receiver; drained() must not hang.
  await rejects(within(drain, 20_000, "drained()"), ipcError("Disconnected"));
  throws(() => tx.send(new Uint8Array(1)), ipcError("Disconnected"));
  equal(tx.bufferedAmount, 0, "the queue was dropped");
  tx.close();
  await settled();
});

Deno.test("sends to a gone receiver never kill the process with SIGPIPE", async () => {
  const child = await startLinked("child.ts", ["sigpipe"]);
  const [tx, rx] = channel<number>();
  child.toChild.send(tx);
  tx.close();
  equal(await child.fromChild.recv(), "ready");
  rx.close(); // the child's sender now points at nothing
  child.toChild.send("go");
  const result = await finish(child.process);
  equal(result.signal, null, `the child died of ${result.signal}`);
  equal(result.code, 0, result.stderr);
  const kinds = JSON.parse(result.stdout) as string[];
  deepStrictEqual(kinds.slice(0, 3), [
    "Disconnected",
    "Disconnected",
    "Disconnected",
  ]);
  deepStrictEqual(kinds.slice(3), [
    "Disconnected",
    "Disconnected",
    "Disconnected",
  ]);
  child.toChild.close();
  child.fromChild.close();
  await settled();
});
