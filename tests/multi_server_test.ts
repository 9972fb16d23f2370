import {
  deepStrictEqual as assertEquals,
  ok,
  rejects,
} from "node:assert/strict";
import { IpcSender, IpcServer } from "../mod.ts";
import { platform } from "../platform/mod.ts";
import { fixture, ipcError, onLinux, settled } from "./helpers.ts";

function client(name: string, mode: string): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-ffi", fixture("server_client.ts"), name, mode],
    stdout: "null",
    stderr: "inherit",
  }).spawn();
}

Deno.test("IpcServer accepts many concurrent clients, each on its own channel, with kernel credentials", async () => {
  using server = new IpcServer<number>();
  const quitters = [client(server.name, "die"), client(server.name, "die")];
  const children = [0, 1, 2, 3].map(() => client(server.name, "hello"));
  const pids = new Set<number>();
  for (let i = 0; i < children.length; i++) {
    const { receiver, first, peer } = await server.accept();
    assertEquals(peer.pid, first);
    // The kernel's uid of the client: ours (-1 on Windows, which has none).
    assertEquals(peer.uid, platform().processUid());
    pids.add(first);
    receiver.close();
  }
  assertEquals(pids, new Set(children.map((c) => c.pid)));
  for (const child of [...children, ...quitters]) await child.status;
  await settled();
});

Deno.test("a client sending garbage first does not disturb the next one", async () => {
  using server = new IpcServer<string>();
  const raw = IpcSender.connect<string>(server.name);
  // A sender of another type: the server's codec decodes it, but a raw
  // non-frame packet is what a hostile client would send; close() without a
  // message is the quiet variant.
  raw.close();
  using good = IpcSender.connect<string>(server.name);
  good.send("good");
  const { receiver, first } = await server.accept();
  assertEquals(first, "good");
  receiver.close();
  await settled();
});

Deno.test("the iterator yields clients until close(); accept after close is Closed", async () => {
  const server = new IpcServer<number>();
  using a = IpcSender.connect<number>(server.name);
  using b = IpcSender.connect<number>(server.name);
  a.send(1);
  b.send(2);
  const firsts: number[] = [];
  for await (const { receiver, first } of server) {
    firsts.push(first);
    receiver.close();
    if (firsts.length === 2) server.close();
  }
  assertEquals(firsts.sort(), [1, 2]);
  await rejects(server.accept(), ipcError("Closed"));
  await settled();
});

// Linux only: on Windows a server is a named pipe, not a directory.
Deno.test({
  ...onLinux(
    "a server's directory is private and removed on close",
    "a Windows server is a named pipe, not a directory",
  ),
}, async () => {
  const server = new IpcServer<never>();
  const directory = server.name.replace(/\/socket$/, "");
  assertEquals(Deno.statSync(directory).mode! & 0o777, 0o700);
  ok(/[0-9a-f]{32}/.test(directory), "the name carries 128 random bits");
  server.close();
  ok(!exists(directory));
  await settled();
});

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

// Linux only: a named pipe has no file to remove or leave behind.
Deno.test({
  ...onLinux(
    "a server's name is removed at normal exit; a killed server's stale name harms no new server",
    "a named pipe has no file to remove or leave behind",
  ),
}, async () => {
  const normal = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-ffi", fixture("server_owner.ts")],
    stdout: "piped",
  }).output();
  const name = new TextDecoder().decode(normal.stdout).trim();
  ok(name.endsWith("/socket"));
  ok(!exists(name.replace(/\/socket$/, "")), "removed at exit");

  const killed = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-ffi", fixture("server_owner.ts"), "wait"],
    stdout: "piped",
  }).spawn();
  const reader = killed.stdout.pipeThrough(new TextDecoderStream()).getReader();
  const stale = (await reader.read()).value!.trim();
  killed.kill("SIGKILL");
  await killed.status;
  await reader.cancel();
  ok(exists(stale), "a SIGKILLed server cannot clean up");
  await rejects(
    Promise.resolve().then(() => IpcSender.connect(stale)),
    ipcError("Io"),
  );
  using fresh = new IpcServer<number>();
  using tx = IpcSender.connect<number>(fresh.name);
  tx.send(5);
  const { receiver, first } = await fresh.accept();
  assertEquals(first, 5);
  receiver.close();
  Deno.removeSync(stale.replace(/\/socket$/, ""), { recursive: true });
  await settled();
});

/** Runs fixtures/other_uid_client.ts, which turns into nobody and sends `text`. */
async function sendAsNobody(name: string, text: string): Promise<void> {
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-ffi", fixture("other_uid_client.ts"), name, text],
    stdout: "null",
    stderr: "piped",
  }).output();
  assertEquals(code, 0, new TextDecoder().decode(stderr));
}

/**
 * Opens the server's private directory and socket to everyone, as a mistake
 * (or root, which ignores the mode) would, so that only the uid check is left.
 */
function exposeToOtherUsers(server: IpcServer<unknown>): void {
  Deno.chmodSync(server.name.replace(/\/socket$/, ""), 0o711);
  Deno.chmodSync(server.name, 0o777);
}

const AS_ROOT = Deno.build.os === "linux" && platform().processUid() === 0;

Deno.test({
  name: AS_ROOT
    ? "a client of another uid is refused by default, accepted when allowed"
    : "a client of another uid is refused by default, accepted when allowed [skipped: needs Linux and root to run a client as nobody]",
  ignore: !AS_ROOT,
}, async () => {
  {
    using server = new IpcServer<string>();
    exposeToOtherUsers(server);
    await sendAsNobody(server.name, "from nobody");
    using own = IpcSender.connect<string>(server.name);
    own.send("from us");
    // The first connection, nobody's, is dropped: ours is the first accepted.
    const { receiver, first, peer } = await server.accept();
    assertEquals(first, "from us");
    assertEquals(peer.uid, 0);
    receiver.close();
  }
  {
    using server = new IpcServer<string>({ allowOtherUsers: true });
    exposeToOtherUsers(server);
    await sendAsNobody(server.name, "from nobody");
    const { receiver, first, peer } = await server.accept();
    assertEquals(first, "from nobody");
    assertEquals([peer.uid, peer.gid], [65534, 65534]);
    receiver.close();
  }
  await settled();
});
