/**
 * Issue 2, points 10 and 11: the one-shot server in both orders and across
 * processes, its private directory, and channels with --allow-ffi alone.
 */

import {
  deepStrictEqual,
  equal,
  ok,
  rejects,
  throws,
} from "node:assert/strict";
import {
  channel,
  IpcBytesSender,
  IpcOneShotServer,
  IpcSender,
} from "../mod.ts";
import {
  fdBaseline,
  fdTest,
  finish,
  ipcError,
  onLinux,
  openFds,
  runFixture,
  settled,
  startLinked,
  within,
} from "./helpers.ts";

const SOCKET_DIRECTORY =
  "server names are sockets in a private directory on Linux only";
import { libc } from "../ffi/libc.ts";

function directoryOf(name: string): string {
  return name.slice(0, name.lastIndexOf("/"));
}

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

fdTest(import.meta, "connect before accept, in one process", async () => {
  const before = await fdBaseline();
  const server = new IpcOneShotServer<{ hello: string }>();
  const tx = IpcSender.connect<{ hello: string }>(server.name);
  tx.send({ hello: "first" });
  tx.send({ hello: "second" });
  const [rx, first] = await server.accept();
  deepStrictEqual(first, { hello: "first" });
  deepStrictEqual(await rx.recv(), { hello: "second" });
  tx.close();
  await rejects(rx.recv(), ipcError("Disconnected"));
  rx.close();
  server.close();
  equal(openFds(), before);
  await settled();
});

Deno.test("accept before connect, in one process", async () => {
  const server = new IpcOneShotServer<number>();
  const accepted = server.accept();
  await new Promise((resolve) => setTimeout(resolve, 20));
  const tx = IpcSender.connect<number>(server.name);
  tx.send(42);
  const [rx, first] = await within(accepted, 10_000, "accept");
  equal(first, 42);
  tx.close();
  rx.close();
  await settled();
});

Deno.test("endpoints travel in the first message through a server", async () => {
  const server = new IpcOneShotServer<{ reply: IpcSender<string> }>();
  const tx = IpcSender.connect<{ reply: IpcSender<string> }>(server.name);
  const [replyTx, replyRx] = channel<string>();
  tx.send({ reply: replyTx });
  const [rx, { reply }] = await server.accept();
  reply.send("pong");
  equal(await replyRx.recv(), "pong");
  for (const end of [tx, rx, replyTx, replyRx, reply]) end.close();
  await settled();
});

Deno.test("a child connects before the parent accepts (name in args)", async () => {
  const server = new IpcOneShotServer<
    { from: string; pid: number; extra: string }
  >();
  const child = runFixture("child.ts", {
    args: [server.name, "connect", "args"],
  });
  // The child sends and exits before we even accept.
  const result = await finish(child);
  equal(result.code, 0, result.stderr);
  const [rx, first] = await within(server.accept(), 10_000, "accept");
  equal(first.from, "child");
  equal(first.extra, "args");
  ok(first.pid > 0 && first.pid !== Deno.pid);
  await rejects(rx.recv(), ipcError("Disconnected"));
  rx.close();
  await settled();
});

Deno.test("the parent accepts before a child connects (name in env)", async () => {
  const server = new IpcOneShotServer<{ from: string; extra: string }>();
  const accepted = server.accept();
  const child = runFixture("child.ts", {
    args: ["-", "connect-env"],
    env: { IPC_TEST_SERVER: server.name },
    permissions: ["--allow-ffi", "--allow-env=IPC_TEST_SERVER"],
  });
  const [rx, first] = await within(accepted, 30_000, "accept");
  deepStrictEqual(first.extra, "env");
  const result = await finish(child);
  equal(result.code, 0, result.stderr);
  rx.close();
  await settled();
});

Deno.test(
  onLinux(
    "the server's directory is private (0700) and removed on close",
    SOCKET_DIRECTORY,
  ),
  () => {
    const server = new IpcOneShotServer<number>();
    const directory = directoryOf(server.name);
    ok(server.name.startsWith("/"), "the name is an absolute path");
    const info = Deno.statSync(directory);
    ok(info.isDirectory);
    equal(
      (info.mode ?? 0) & 0o777,
      0o700,
      `mode ${(info.mode ?? 0).toString(8)}`,
    );
    equal(info.uid, libc().getuid(), "owned by this user");
    ok(Deno.lstatSync(server.name).isSocket, "the name is a socket");
    const entries = [...Deno.readDirSync(directory)].map((e) => e.name);
    equal(entries.length, 1, `only the socket lives there: ${entries}`);
    server.close();
    ok(!exists(server.name), "the socket is removed");
    ok(!exists(directory), "the directory is removed");
    server.close(); // twice is harmless
    // Each server gets its own directory.
    const a = new IpcOneShotServer<number>();
    const b = new IpcOneShotServer<number>();
    ok(directoryOf(a.name) !== directoryOf(b.name));
    a.close();
    b.close();
  },
);

Deno.test(
  onLinux("the server's directory is removed after accept", SOCKET_DIRECTORY),
  async () => {
    const server = new IpcOneShotServer<number>();
    const directory = directoryOf(server.name);
    const tx = IpcSender.connect<number>(server.name);
    tx.send(1);
    const [rx] = await server.accept();
    ok(!exists(directory), "the directory is gone after accept");
    // One server, one client: a second client cannot connect.
    throws(() => IpcSender.connect<number>(server.name), ipcError("Io"));
    tx.close();
    rx.close();
    server.close();
    await settled();
  },
);

Deno.test(
  onLinux(
    "the server's directory is removed when its process ends normally",
    SOCKET_DIRECTORY,
  ),
  async () => {
    const child = runFixture("child.ts", { args: ["-", "server"] });
    const result = await finish(child);
    equal(result.code, 0, result.stderr);
    const name = result.stdout.trim();
    ok(name.endsWith("/socket"), `child printed ${name}`);
    ok(!exists(name), "the socket is gone");
    ok(!exists(directoryOf(name)), "the directory is gone");
  },
);

fdTest(import.meta, "connect to a missing name throws kind Io", async () => {
  const missing =
    `/tmp/ipc-channel-does-not-exist-${crypto.randomUUID()}/socket`;
  throws(() => IpcSender.connect(missing), ipcError("Io", "ENOENT"));
  throws(() => IpcSender.connect("/tmp"), ipcError("Io"));
  throws(() => IpcSender.connect(""), ipcError("Io"));
  throws(() => IpcSender.connect(`/tmp/${"x".repeat(200)}`), ipcError("Io"));
  // Not a string at all: refused before it reaches the OS.
  const posing = { length: -1, startsWith: () => true, toString: () => "x" };
  for (const bad of [undefined, 42, posing]) {
    for (const connect of [IpcSender.connect, IpcBytesSender.connect]) {
      throws(
        () => connect(bad as unknown as string),
        (error: unknown) =>
          error instanceof TypeError &&
          /server name string/.test(error.message),
      );
    }
  }
  const server = new IpcOneShotServer<number>();
  const name = server.name;
  server.close();
  throws(() => IpcSender.connect(name), ipcError("Io"));
  await rejects(server.accept(), ipcError("Closed"));
  const before = await fdBaseline();
  for (let i = 0; i < 50; i++) {
    throws(() => IpcSender.connect(missing), ipcError("Io"));
  }
  equal(openFds(), before, "a failed connect leaks nothing");
  await settled();
});

Deno.test("a child with only --allow-ffi creates channels, connects and sends", async () => {
  const child = await startLinked("child.ts", ["permissions"], ["--allow-ffi"]);
  const report = await within(child.fromChild.recv(), 30_000, "report") as {
    answer: string;
    first: string;
    bigger: Uint8Array;
  };
  equal(report.answer, "n+1=42");
  equal(report.first, "through a server");
  equal(report.bigger.length, 1 << 20);
  ok(report.bigger.every((b) => b === 3));
  const result = await finish(child.process);
  equal(result.code, 0, result.stderr);
  equal(result.stderr.includes("NotCapable"), false, result.stderr);
  child.toChild.close();
  child.fromChild.close();
  await settled();
});
