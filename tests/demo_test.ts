/**
 * The demo (`deno task demo`, issue 3 point 5) as a user runs it: it
 * finishes with a summary, and Ctrl-C sent to the demo alone stops its
 * workers and exits 130 without an uncaught error.
 */
import { equal, match, ok } from "node:assert/strict";
import { childPids, finish, onLinux, processState } from "./helpers.ts";

const DEMO = new URL("../scripts/demo.ts", import.meta.url);
const PERMISSIONS = [
  "--allow-ffi",
  "--allow-run",
  "--allow-read",
  "--allow-env",
];

function startDemo(args: string[]): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", ...PERMISSIONS, DEMO.href, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

Deno.test("the demo runs its jobs on 2 workers and prints a summary", async () => {
  const result = await finish(startDemo(["2", "60"]));
  equal(result.code, 0, result.stderr);
  match(result.stdout, /2 workers spawned and connected in \d+ ms/);
  match(
    result.stdout,
    /60 jobs \(120 messages, [^)]*\) in [\d.]+ s: \d+ jobs\/s/,
  );
  // Both workers took part: the summary lists one line per worker.
  equal(result.stdout.match(/worker \d+: \d+ jobs/g)?.length, 2);
});

Deno.test(
  onLinux(
    "SIGINT to the demo alone stops its workers and exits 130",
    "finds the workers with ps and sends a POSIX signal",
  ),
  async () => {
    const demo = startDemo(["2", "1000000"]);
    // Wait for the first progress line: the workers are connected and busy.
    const reader = demo.stdout.getReader();
    let output = "";
    while (!output.includes("jobs/s")) {
      const { value, done } = await reader.read();
      if (done) break;
      output += new TextDecoder().decode(value);
    }
    reader.releaseLock();
    const workers = await childPids(demo.pid);
    equal(workers.length, 2, `workers of ${demo.pid}: ${workers}`);
    demo.kill("SIGINT");
    const result = await finish(demo);
    output += result.stdout;
    equal(result.code, 130, result.stderr);
    match(output, /interrupted: stopping the workers/);
    ok(!/Uncaught|error/i.test(result.stderr), result.stderr);
    // Disposed and reaped by the demo before it exited: no process, no zombie.
    for (const pid of workers) equal(await processState(pid), undefined);
  },
);
