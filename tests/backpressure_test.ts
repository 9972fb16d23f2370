/**
 * Issue 5, point 5: backpressure. A bounded producer (it awaits
 * `drained(mark)` whenever `bufferedAmount` exceeds a 1 MiB mark) streams to
 * a slow reader in another process (it sleeps 1 ms every 4 reads); the
 * producer's peak RSS stays under 64 MiB above its start, and the reader
 * gets every byte intact.
 *
 * The suite streams 1 GiB in 64 KiB chunks (~13 s here; the codec packs
 * into one reused buffer and queued copies go to recycled memory, so the
 * peak stays near +17 MiB). IPC_LONG=1 adds 1 GiB in 32 KiB chunks.
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
    "backpressure: 1 GiB in 64 KiB chunks to a slow reader, peak RSS under 64 MiB above start",
    "reads VmHWM from /proc/self/status",
  ),
  async () => {
    under64(await stream(1024, 64 * 1024));
  },
);

Deno.test({
  ...onLinux(
    "backpressure: 1 GiB in 32 KiB chunks, peak RSS under 64 MiB above start (IPC_LONG=1)",
    "reads VmHWM from /proc/self/status",
  ),
  ignore: !LONG || Deno.build.os !== "linux",
}, async () => {
  under64(await stream(1024, 32 * 1024));
});
