/**
 * Windows-only properties of the named-pipe backend.
 *
 * @module
 */

import {
  deepStrictEqual as assertEquals,
  ok,
  rejects,
} from "node:assert/strict";
import { channel, type IpcSender, IpcServer } from "../mod.ts";
import { ipcError, settled } from "./helpers.ts";
import {
  FILE_FLAG_FIRST_PIPE_INSTANCE,
  handle,
  INVALID_HANDLE_VALUE,
  kernel32,
  PIPE_ACCESS_INBOUND,
  PIPE_TYPE_MESSAGE,
  wideString,
} from "../ffi/kernel32.ts";

const windows = Deno.build.os === "windows";
/** Wine passes the Unix environment through; real Windows has no WINEPREFIX. */
const wine = windows && Deno.env.get("WINEPREFIX") !== undefined;

Deno.test({
  name: "server names are local pipes with 128 random bits",
  ignore: !windows,
}, async () => {
  using server = new IpcServer<number>();
  ok(/^\\\\\.\\pipe\\ipc-channel-[0-9a-f]{32}$/.test(server.name), server.name);
  await settled();
});

// Wine 8.0 does not enforce FILE_FLAG_FIRST_PIPE_INSTANCE (measured, issue 6):
// a squatter's instance would be accepted there, so this runs on Windows only.
Deno.test({
  name: "a server's pipe name cannot be squatted: FIRST_PIPE_INSTANCE",
  ignore: !windows || wine,
}, async () => {
  const name = `\\\\.\\pipe\\ipc-channel-squat-${crypto.randomUUID()}`;
  const k = kernel32();
  const squatter = handle(
    k.CreateNamedPipeW(
      wideString(name),
      PIPE_ACCESS_INBOUND,
      PIPE_TYPE_MESSAGE,
      255,
      0,
      4096,
      0,
      null,
    ),
  );
  ok(squatter !== INVALID_HANDLE_VALUE);
  const second = handle(
    k.CreateNamedPipeW(
      wideString(name),
      PIPE_ACCESS_INBOUND | FILE_FLAG_FIRST_PIPE_INSTANCE,
      PIPE_TYPE_MESSAGE,
      255,
      0,
      4096,
      0,
      null,
    ),
  );
  assertEquals(second, INVALID_HANDLE_VALUE);
  k.CloseHandle(squatter);
  await settled();
});

Deno.test({
  name: "messages far larger than the pipe buffer arrive whole, in order",
  ignore: !windows,
}, async () => {
  const [tx, rx] = channel<Uint8Array>();
  const sizes = [0, 1, 65_535, 65_536, 200_000, 8 << 20];
  for (const size of sizes) tx.send(new Uint8Array(size).fill(size % 251));
  ok(tx.bufferedAmount > 0, "the big ones wait in a pending write");
  for (const size of sizes) {
    const got = await rx.recv();
    assertEquals(got.length, size);
    if (size > 0) assertEquals(got[size - 1], size % 251);
  }
  await tx.drained();
  tx.close();
  await rejects(rx.recv(), ipcError("Disconnected"));
  rx.close();
  await settled();
});

Deno.test({
  name: "a receiver that moved still gets endpoints sent after the move (#310)",
  ignore: !windows,
}, async () => {
  const [carrierTx, carrierRx] = channel<{ rx: unknown }>();
  const [tx, rx] = channel<{ reply: IpcSender<string> }>();
  carrierTx.send({ rx });
  const { rx: moved } = await carrierRx.recv() as unknown as {
    rx: typeof rx;
  };
  const [replyTx, replyRx] = channel<string>();
  tx.send({ reply: replyTx });
  replyTx.close();
  const { reply } = await moved.recv();
  reply.send("hello");
  assertEquals(await replyRx.recv(), "hello");
  reply.close();
  await rejects(replyRx.recv(), ipcError("Disconnected"));
  for (const end of [carrierTx, carrierRx, tx, moved, replyRx]) end.close();
  await settled();
});

Deno.test({
  name: "closing a receiver reclaims endpoints in its unread messages",
  ignore: !windows,
}, async () => {
  const [tx, rx] = channel<{ inner: IpcSender<number> }>();
  const [innerTx, innerRx] = channel<number>();
  tx.send({ inner: innerTx });
  innerTx.close();
  // Unread: the message's copy of innerTx lives in this process until the
  // reader takes it; close() takes and closes it, so innerRx sees the end.
  rx.close();
  await rejects(innerRx.recv(), ipcError("Disconnected"));
  tx.close();
  innerRx.close();
  await settled();
});
