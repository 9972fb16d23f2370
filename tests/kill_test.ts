/**
 * Issue 5, point 3: kill at random. A child streaming large messages with
 * endpoints and shared memory inside is SIGKILLed at a random moment, 20
 * times (100 with IPC_LONG=1). The parent
 * never hangs, every message it received is intact (checksums, shared
 * memory contents, a working endpoint pair) and in order, and afterwards its
 * fd count and its ipc-channel mappings are back where they started.
 *
 * The parent side runs in fixtures/rel_kill_parent.ts: reading
 * /proc/self/maps needs --allow-all, and its own process keeps the counts
 * free of other test files.
 */

import { equal, ok } from "node:assert/strict";
import { finish, fixture, onLinux } from "./helpers.ts";

const LONG = Deno.env.get("IPC_LONG") === "1";

Deno.test(
  onLinux(
    `a streaming child SIGKILLed at random ${
      LONG ? 100 : 20
    } times: nothing torn, nothing leaked, no hang`,
    "reads /proc/self/maps and counts fds through libc",
  ),
  async () => {
    const rounds = LONG ? 100 : 20;
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--v8-flags=--expose-gc",
        fixture("rel_kill_parent.ts"),
        String(rounds),
        "300",
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const result = await finish(child, LONG ? 600_000 : 90_000);
    equal(result.code, 0, result.stderr);
    const report = JSON.parse(result.stdout);
    console.log(JSON.stringify(report));
    equal(report.rounds, rounds);
    equal(report.hangs, 0, "the parent never hung");
    equal(report.corrupt, 0, "every message received was intact");
    equal(report.gaps, 0, "messages arrived in order, none skipped");
    ok(report.received > rounds, "messages did flow before the kills");
    ok(
      report.killedWithMessages >= rounds / 2,
      `most kills hit a child mid-stream (${report.killedWithMessages})`,
    );
    equal(report.errors.Disconnected, rounds, "each death is Disconnected");
    equal(report.fdsAfter, report.fdsBefore, "fds back to the start");
    equal(report.mapsAfter, report.mapsBefore, "mappings back to the start");
  },
);
