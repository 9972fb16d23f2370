/**
 * Issue 5, point 4: fd exhaustion under `ulimit -n 64`, beyond the first
 * EMFILE of each constructor (leaks_test.ts): ten cycles of exhausting and
 * recovering without drift, shared memory at the limit, a message carrying
 * more descriptors than are free (an error for that message only, the fds
 * that arrived closed, the next message fine), and a server whose client
 * arrives while no descriptor is free.
 */

import { deepStrictEqual, equal, ok } from "node:assert/strict";
import { finish, fixture, onLinux } from "./helpers.ts";

const EMFILE = { kind: "Io", code: "EMFILE" };

// deno-lint-ignore no-explicit-any
async function report(): Promise<Record<string, any>> {
  const child = new Deno.Command("sh", {
    args: [
      "-c",
      `ulimit -n 64; exec "$0" run --allow-ffi "$1"`,
      Deno.execPath(),
      fixture("rel_emfile.ts"),
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const result = await finish(child);
  equal(result.code, 0, result.stderr);
  return JSON.parse(result.stdout);
}

Deno.test(
  onLinux(
    "fd exhaustion (ulimit -n 64): clear errors, recovery every time, no drift, no crash",
    "ulimit and descriptor counts are Linux-specific here",
  ),
  async () => {
    const r = await report();
    console.log(
      `base ${r.base} fds; per cycle ${
        r.cycles[0].created
      } channels until EMFILE; fds after each cycle: ${
        r.cycles.map((c: { fds: number }) => c.fds).join(",")
      }; many: ${JSON.stringify(r.many)}; server: ${JSON.stringify(r.server)}`,
    );
    for (const [i, cycle] of r.cycles.entries()) {
      deepStrictEqual(
        cycle.error,
        EMFILE,
        `cycle ${i}: channel() at the limit`,
      );
      ok(cycle.created > 10, `cycle ${i}: created ${cycle.created} first`);
      ok(
        cycle.shm === "created" ||
          JSON.stringify(cycle.shm) === JSON.stringify(EMFILE),
        `cycle ${i}: shared memory at the limit: ${JSON.stringify(cycle.shm)}`,
      );
      equal(
        cycle.works,
        true,
        `cycle ${i}: everything works after closing some`,
      );
      equal(cycle.fds, r.base, `cycle ${i}: back to the baseline`);
    }
    // A message with 40 descriptors and 6 free: that message fails...
    deepStrictEqual(r.many.outcome, EMFILE, "the message is an EMFILE error");
    // ...the descriptors that did arrive are closed...
    equal(r.many.freeAfter, r.many.free, "no descriptor of it stayed open");
    // ...and the next message on the same channel arrives.
    equal(r.many.next, "after");
    equal(r.afterMany, r.base);
    // A client arriving at EMFILE: a clear error, then accepted once fds free.
    deepStrictEqual(r.server.during, EMFILE);
    equal(r.server.after, "hello at EMFILE");
    equal(r.afterServer, r.base);
    equal(r.end, r.base);
  },
);
