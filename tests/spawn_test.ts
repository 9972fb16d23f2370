import {
  deepStrictEqual as assertEquals,
  equal,
  ok,
  rejects,
  throws,
} from "node:assert/strict";
import { channel, connectToParent, type IpcReceiver, spawn } from "../mod.ts";
import {
  commandLine,
  fdBaseline,
  fdTest,
  fixture,
  ipcError,
  offWindows,
  onLinux,
  openFds,
  processState,
  settled,
  within,
} from "./helpers.ts";

const ECHO = fixture("spawn_echo.ts");

Deno.test("spawn connects typed channels both ways", async () => {
  await using child = await spawn<unknown, unknown>(ECHO);
  const value = { n: 1, list: [1, 2], map: new Map([["k", 2n]]) };
  child.sender.send(value);
  assertEquals(await child.receiver.recv(), value);
  ok(child.pid > 0);
  await settled();
});

Deno.test("spawned workers skip Deno's release check unless env says otherwise", async () => {
  const name = "DENO_NO_UPDATE_CHECK";
  const inherited = Deno.env.get(name);
  // Not inherited from the test task: the default must come from spawn.
  Deno.env.delete(name);
  const denoArgs = ["--allow-ffi", `--allow-env=${name}`];
  const cases: [Record<string, string> | undefined, string][] = [
    [undefined, "1"],
    [{ [name]: "mine" }, "mine"],
  ];
  try {
    for (const [env, expected] of cases) {
      await using child = await spawn<unknown, unknown>(ECHO, {
        denoArgs,
        env,
      });
      child.sender.send({ env: name });
      equal(await child.receiver.recv(), expected);
    }
  } finally {
    if (inherited !== undefined) Deno.env.set(name, inherited);
  }
});

Deno.test("connectToParent outside spawn rejects kind Io", async () => {
  await rejects(connectToParent(), (e: Error) => {
    ipcError("Io")(e);
    ok(/not started by spawn/.test(e.message));
    return true;
  });
});

fdTest(
  import.meta,
  "a child SIGKILLed mid-stream: recv and send fail Disconnected, no fd left",
  async () => {
    const before = await fdBaseline();
    const child = await spawn<never, number>(fixture("spawn_stream.ts"));
    for (let i = 0; i < 50; i++) assertEquals(await child.receiver.recv(), i);
    // A recv that is pending when the child dies.
    const pending = (async () => {
      for (;;) await child.receiver.recv();
    })();
    child.kill("SIGKILL");
    const killedAt = performance.now();
    await rejects(pending, ipcError("Disconnected"));
    // The issue asks for 100 ms: bench/disconnect_latency.ts measures it
    // (tests make no timing claims); this bound only guards against a hang.
    ok(performance.now() - killedAt < 5000);
    const status = await child.status;
    // Windows has no signals: kill() is TerminateProcess and signal is null.
    if (Deno.build.os !== "windows") assertEquals(status.signal, "SIGKILL");
    // Reaped, not a zombie (state "Z" until its parent waits for it).
    if (Deno.build.os === "linux") {
      equal(await processState(child.pid), undefined);
    }
    throws(
      () => child.sender.send(undefined as never),
      ipcError("Disconnected"),
    );
    child.sender.close();
    child.receiver.close();
    await settled();
    assertEquals(openFds(), before);
  },
);

Deno.test("a module that throws before connecting makes spawn reject with its exit code", async () => {
  await rejects(spawn(fixture("spawn_throws.ts"), { stderr: "null" }), (e) => {
    ipcError("Disconnected")(e);
    ok(/exit code 1/.test((e as Error).message), (e as Error).message);
    return true;
  });
});

Deno.test("a module that throws after connecting: Disconnected, then its exit code", async () => {
  const child = await spawn<unknown, unknown>(ECHO, { stderr: "null" });
  child.sender.send("throw");
  await rejects(child.receiver.recv(), ipcError("Disconnected"));
  assertEquals((await child.status).code, 1);
  child.sender.close();
  child.receiver.close();
  await settled();
});

Deno.test("a child that sends one message and exits at once is connected and its message arrives", async () => {
  const children = [0, 1, 2].map(() =>
    spawn<never, string>(fixture("spawn_once.ts"))
  );
  // Keeps this thread from reading the children's hellos until they have had
  // time to connect and, were they not made to wait, to exit: on Windows the
  // parent takes the hello's sender out of the child as it reads it.
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 3_000);
  for (const child of await Promise.all(children)) {
    equal(await child.receiver.recv(), `pid ${child.pid}`);
    assertEquals((await child.status).code, 0);
    await rejects(child.receiver.recv(), ipcError("Disconnected"));
    await child[Symbol.asyncDispose]();
  }
  await settled();
});

// Not on Windows: there (measured under Wine 8.0 with Deno's Windows build)
// killing the middle process ends the grandchild too, so no orphan is left
// to observe the disconnection.
Deno.test({
  ...offWindows(
    "when the parent dies, the child's recv rejects Disconnected and it exits cleanly",
    "killing the middle process on Windows ends the grandchild too",
  ),
}, async () => {
  const middle = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-ffi",
      "--allow-run",
      "--allow-read",
      fixture("spawn_middle.ts"),
    ],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = middle.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let output = "";
  while (!/grandchild \d+\n/.test(output)) {
    const { value, done } = await reader.read();
    if (done) break;
    output += value;
  }
  middle.kill("SIGKILL");
  await middle.status;
  // The grandchild shares the pipe; it closes once the grandchild exits.
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    output += value;
  }
  ok(output.includes("orphan saw Disconnected"), output);
});

Deno.test(
  onLinux(
    "spawn's bootstrap name is private: not on the command line, gone from the env, and an impostor is not taken for the child",
    "reads the child's command line with ps",
  ),
  async () => {
    await using child = await spawn<
      never,
      { pid: number; name: string; envAfter: string | undefined }
    >(fixture("spawn_impostor.ts"), {
      denoArgs: ["--allow-ffi", "--allow-run", "--allow-read", "--allow-env"],
    });
    // The impostor connected first; spawn waited for the child's own pid.
    const report = await child.receiver.recv();
    equal(report.pid, child.pid);
    ok(report.name.length > 0);
    equal(report.envAfter, undefined, "connectToParent removes the name");
    const line = await commandLine(child.pid);
    ok(line.includes("spawn_impostor.ts"), line);
    ok(!line.includes(report.name), line);
  },
);

Deno.test("a process that spawn() turns away gets Disconnected from connectToParent, not a wait", async () => {
  await using child = await spawn<never, string>(fixture("spawn_stray.ts"), {
    denoArgs: ["--allow-ffi", "--allow-run", "--allow-read"],
  });
  equal(
    await within(child.receiver.recv(), 30_000, "the turned-away helper"),
    "rejected Disconnected",
  );
});

Deno.test("a receiver travels A→B→C and C reads what A sends", async () => {
  const [tx, rx] = channel<string>();
  await using b = await spawn<{ receiver: IpcReceiver<string> }, string[]>(
    fixture("spawn_relay.ts"),
    {
      args: ["forward"],
      denoArgs: ["--allow-ffi", "--allow-run", "--allow-read"],
    },
  );
  b.sender.send({ receiver: rx });
  throws(() => rx.tryRecv(), ipcError("Closed"));
  for (const word of ["one", "two", "three"]) tx.send(word);
  assertEquals(await b.receiver.recv(), ["one", "two", "three"]);
  tx.close();
  await settled();
});

Deno.test("many children fan in to one receiver, each in its own order", async () => {
  const [tx, rx] = channel<string>();
  const children = await Promise.all(
    [0, 1, 2].map(() => spawn<typeof tx, never>(fixture("spawn_fan_in.ts"))),
  );
  for (const child of children) child.sender.send(tx);
  tx.close();
  const seen = new Map<string, number[]>();
  for await (const message of rx) {
    const [pid, i] = message.split(":");
    seen.set(pid, [...(seen.get(pid) ?? []), Number(i)]);
  }
  assertEquals(seen.size, 3);
  for (const list of seen.values()) {
    assertEquals(list, [...Array(10).keys()]);
  }
  for (const child of children) await child[Symbol.asyncDispose]();
  rx.close();
  await settled();
});
