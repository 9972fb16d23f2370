/**
 * Shared test helpers: child Deno processes, fd counting, and waiting for the
 * poller to park so that Deno's op sanitizer sees no pending call.
 *
 * @module
 */

import { equal } from "node:assert/strict";
import { settled } from "../platform/mod.ts";
import { libc } from "../ffi/libc.ts";
import { LINKED } from "./fixtures/common.ts";

const F_GETFD = 1;
import {
  channel,
  IpcError,
  type IpcErrorKind,
  IpcOneShotServer,
  type IpcReceiver,
  type IpcSender,
} from "../mod.ts";

export { settled };

/**
 * Open file descriptors of this process, counted with `fcntl(fd, F_GETFD)`
 * through libc: Deno 2.9 wants `--allow-all` to list `/proc/self/fd`, and the
 * test task grants less. Scans until 4096 consecutive numbers are unused.
 */
export function openFds(): number {
  // Without /proc there is nothing to count; the checks become no-ops.
  if (Deno.build.os !== "linux") return 0;
  const lc = libc();
  let count = 0;
  for (let fd = 0, gap = 0; gap < 4096; fd++) {
    if (lc.fcntl(fd, F_GETFD, 0) >= 0) {
      count++;
      gap = 0;
    } else {
      gap++;
    }
  }
  return count;
}

/** Bytes where every position is checkable and shifts with `seed`. */
export function pattern(size: number, seed: number): Uint8Array {
  const data = new Uint8Array(size);
  let x = seed | 1;
  for (let i = 0; i < size; i += 4) {
    x = (x * 1_103_515_245 + 12_345) | 0;
    data[i] = x >>> 24;
    if (i + 1 < size) data[i + 1] = x >>> 16;
    if (i + 2 < size) data[i + 2] = x >>> 8;
    if (i + 3 < size) data[i + 3] = x;
  }
  return data;
}

/** Compares byte by byte, naming the first byte that differs. */
export function sameBytes(
  actual: Uint8Array,
  expected: Uint8Array,
  what: string,
): void {
  equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; i++) {
    if (actual[i] !== expected[i]) {
      throw new Error(
        `${what}: byte ${i} is ${actual[i]}, expected ${expected[i]}`,
      );
    }
  }
}

/** Absolute path of a fixture under tests/fixtures/. */
export function fixture(name: string): string {
  const url = new URL(`./fixtures/${name}`, import.meta.url);
  // A file URL works on every OS; `pathname` is not a Windows path.
  return Deno.build.os === "windows" ? url.href : url.pathname;
}

/** Starts `deno run` on a fixture with the given permissions and env. */
export function runFixture(
  name: string,
  options: {
    args?: string[];
    env?: Record<string, string>;
    permissions?: string[];
    stdout?: "piped" | "inherit" | "null";
  } = {},
): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      ...(options.permissions ?? ["--allow-ffi"]),
      fixture(name),
      ...(options.args ?? []),
    ],
    env: options.env,
    stdin: "null",
    stdout: options.stdout ?? "piped",
    stderr: "piped",
  }).spawn();
}

/**
 * A predicate for `throws`/`rejects`: the error is an {@linkcode IpcError} of
 * `kind` (and of OS error `code`, when given).
 */
export function ipcError(
  kind: IpcErrorKind,
  code?: string,
): (error: unknown) => true {
  return (error: unknown) => {
    if (!(error instanceof IpcError)) {
      throw new Error(`expected an IpcError of kind ${kind}, got ${error}`, {
        cause: error,
      });
    }
    if (error.kind !== kind || (code !== undefined && error.code !== code)) {
      throw new Error(
        `expected an IpcError of kind ${kind}${
          code ? ` code ${code}` : ""
        }, got kind ${error.kind} code ${error.code}: ${error.message}`,
        { cause: error },
      );
    }
    return true;
  };
}

/** Rejects with a clear message if `promise` has not settled in `ms`. */
export async function within<T>(
  promise: Promise<T>,
  ms: number,
  what: string,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`${what}: still pending after ${ms} ms`)),
          ms,
        );
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Output of a finished child. */
export interface ChildResult {
  code: number;
  signal: Deno.Signal | null;
  stdout: string;
  stderr: string;
}

/** Waits for a child started by {@linkcode runFixture}, killing it after `ms`. */
export async function finish(
  child: Deno.ChildProcess,
  ms = 45_000,
): Promise<ChildResult> {
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
  }, ms);
  try {
    const output = await child.output();
    return {
      code: output.code,
      signal: output.signal,
      stdout: new TextDecoder().decode(output.stdout),
      stderr: new TextDecoder().decode(output.stderr),
    };
  } finally {
    clearTimeout(timer);
  }
}

/** A child linked to this process by a pair of typed channels. */
export interface LinkedChild {
  process: Deno.ChildProcess;
  /** Sends to the child's `fromParent` receiver. */
  toChild: IpcSender<unknown>;
  /** Receives what the child sends after the handshake. */
  fromChild: IpcReceiver<unknown>;
}

/**
 * Starts a fixture that calls `link()` from fixtures/common.ts: the child
 * connects to a one-shot server named in its first argument and sends a
 * sender back, so each side ends up with a channel to the other. The first
 * message on that sender is the {@linkcode LINKED} ack, which `link()`
 * consumes.
 */
export async function startLinked(
  name: string,
  args: string[] = [],
  permissions: string[] = ["--allow-ffi"],
): Promise<LinkedChild> {
  const server = new IpcOneShotServer<{ toChild: IpcSender<unknown> }>();
  const process = runFixture(name, {
    args: [server.name, ...args],
    permissions,
  });
  try {
    const [fromChild, hello] = await within(
      server.accept(),
      30_000,
      `handshake with ${name}`,
    );
    // link() waits for this: the child must outlive our read of its hello.
    hello.toChild.send(LINKED);
    return { process, toChild: hello.toChild, fromChild };
  } catch (error) {
    server.close();
    try {
      process.kill("SIGKILL");
    } catch { /* gone */ }
    const result = await finish(process);
    throw new Error(`${name} failed to link: ${result.stderr}`, {
      cause: error,
    });
  }
}

/**
 * The fd count to compare against after a test: taken once the process's
 * shared poller (an epoll fd and an eventfd, opened on first wait and kept)
 * exists, so that it does not count as a leak.
 */
export async function fdBaseline(): Promise<number> {
  const [tx, rx] = channel<number>();
  const pending = rx.recv();
  tx.send(0);
  await pending;
  tx.close();
  rx.close();
  await settled();
  return openFds();
}

const ISOLATED = "IPC_TEST_ISOLATED";

/** Test files whose fdTests only make sense on Linux, with the reason. */
const linuxOnlyFiles = new Map<string, string>();

/**
 * Marks the calling file's {@linkcode fdTest}s as Linux-only: elsewhere they
 * are registered as ignored, with `reason` in their name (never silently).
 */
export function linuxOnly(meta: ImportMeta, reason: string): void {
  if (Deno.build.os !== "linux") linuxOnlyFiles.set(meta.url, reason);
}

/** `ignore` for a Deno.test that needs Linux, with the reason in its name. */
export function onLinux(name: string, reason: string): {
  name: string;
  ignore: boolean;
} {
  const ignore = Deno.build.os !== "linux";
  return { name: ignore ? `${name} [skipped: ${reason}]` : name, ignore };
}

/** `ignore` for a Deno.test that cannot run on Windows, with the reason. */
export function offWindows(name: string, reason: string): {
  name: string;
  ignore: boolean;
} {
  const ignore = Deno.build.os === "windows";
  return { name: ignore ? `${name} [skipped: ${reason}]` : name, ignore };
}

/**
 * A test that compares open-fd counts. `deno test --parallel` runs test
 * files as workers of one process, so another file's channels would move the
 * count: such a test runs alone in a child `deno test` (filtered to it), and
 * its output becomes the failure message here.
 */
export function fdTest(
  meta: ImportMeta,
  name: string,
  fn: () => void | Promise<void>,
  /** Set to skip this one test off Linux, with this reason in its name. */
  linuxOnlyReason?: string,
): void {
  const skip = linuxOnlyFiles.get(meta.url) ??
    (Deno.build.os !== "linux" ? linuxOnlyReason : undefined);
  if (skip !== undefined) {
    Deno.test({ name: `${name} [skipped: ${skip}]`, ignore: true, fn });
    return;
  }
  if (Deno.env.get(ISOLATED) === "1") {
    Deno.test(name, fn);
    return;
  }
  Deno.test(name, async () => {
    const escaped = name.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
    const output = await new Deno.Command(Deno.execPath(), {
      args: [
        "test",
        "--allow-ffi",
        "--allow-run",
        "--allow-read",
        "--allow-env",
        "--allow-write",
        "--no-check",
        `--filter=/^${escaped}$/`,
        meta.filename ?? new URL(meta.url).pathname,
      ],
      env: { [ISOLATED]: "1", NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(output.stdout) +
      new TextDecoder().decode(output.stderr);
    if (!/ok \| 1 passed \| 0 failed/.test(text)) {
      throw new Error(`in an isolated child:\n${text}`);
    }
  });
}

/** `ps` with `args`: its exit code and what it printed, trimmed. Through
 * `ps`, because Deno asks for --allow-all before it reads another process's
 * /proc entry. */
async function ps(args: string[]): Promise<{ code: number; text: string }> {
  const { code, stdout } = await new Deno.Command("ps", {
    args,
    stdout: "piped",
    stderr: "null",
  }).output();
  return { code, text: new TextDecoder().decode(stdout).trim() };
}

/**
 * The `ps` state of a process (`"S"`, `"R"`, `"Z"` for a zombie…), or
 * undefined once it is gone and reaped.
 */
export async function processState(pid: number): Promise<string | undefined> {
  const { code, text } = await ps(["-o", "stat=", "-p", String(pid)]);
  return code === 0 && text !== "" ? text : undefined;
}

/** Pids of the live children of `pid`. */
export async function childPids(pid: number): Promise<number[]> {
  const { text } = await ps(["-o", "pid=", "--ppid", String(pid)]);
  return text.split(/\s+/).filter(Boolean).map(Number);
}

/** The command line of a process, as another user would see it with `ps`. */
export async function commandLine(pid: number): Promise<string> {
  return (await ps(["-o", "args=", "-p", String(pid)])).text;
}
