/**
 * Shared test helpers: child Deno processes, fd counting, and waiting for the
 * poller to park so that Deno's op sanitizer sees no pending call.
 *
 * @module
 */

import { settled } from "../platform/mod.ts";

export { settled };

/** Open file descriptors of this process. */
export function openFds(): number {
  let count = 0;
  for (const _ of Deno.readDirSync("/proc/self/fd")) count++;
  return count;
}

/** Absolute path of a fixture under tests/fixtures/. */
export function fixture(name: string): string {
  return new URL(`./fixtures/${name}`, import.meta.url).pathname;
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
