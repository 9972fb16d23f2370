/**
 * Shared test helpers: child Deno processes, fd counting, and waiting for the
 * poller to park so that Deno's op sanitizer sees no pending call.
 *
 * @module
 */

import { settled } from "../platform/mod.ts";
import { IpcError, type IpcErrorKind } from "../mod.ts";

export { settled };

/** Open file descriptors of this process. */
export function openFds(): number {
  // Without /proc there is nothing to count; the checks become no-ops.
  if (Deno.build.os !== "linux") return 0;
  let count = 0;
  for (const _ of Deno.readDirSync("/proc/self/fd")) count++;
  return count;
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
