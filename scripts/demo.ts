/**
 * The demo: a pool of worker processes counting primes. Each job travels to a
 * worker with a reply channel inside it; every worker answers on its own copy
 * of that one channel, which fans in to a single receiver here.
 *
 * Run: `deno task demo [workers] [jobs]`. Ctrl-C stops the workers cleanly.
 *
 * @module
 */

import { channel, type IpcSender, spawn, type SpawnedProcess } from "../mod.ts";

/** A range to count primes in, and where to send the answer. */
export interface Job {
  id: number;
  from: number;
  to: number;
  reply: IpcSender<Answer>;
}

/** A worker's answer. */
export interface Answer {
  id: number;
  pid: number;
  primes: number;
}

if (import.meta.main) {
  const workerCount = Number(Deno.args[0] ?? navigator.hardwareConcurrency);
  const jobCount = Number(Deno.args[1] ?? 4000);
  const span = 2_000;
  const inFlightPerWorker = 4;
  const encoder = new TextEncoder();
  const write = (text: string) => Deno.stdout.writeSync(encoder.encode(text));

  const started = performance.now();
  const workers: SpawnedProcess<Job, never>[] = await Promise.all(
    Array.from(
      { length: workerCount },
      () =>
        spawn<Job, never>(new URL("./demo_worker.ts", import.meta.url), {
          denoArgs: ["--allow-ffi", "--allow-read"],
        }),
    ),
  );
  const spawnMs = performance.now() - started;
  const stop = async () => {
    for (const worker of workers) await worker[Symbol.asyncDispose]();
  };
  // Set on Ctrl-C: the loop below must not feed workers being disposed.
  let interrupted = false;
  const onInterrupt = () => {
    if (interrupted) return;
    interrupted = true;
    write("\ninterrupted: stopping the workers\n");
    stop().then(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", onInterrupt);

  const [replies, answers] = channel<Answer>();
  let sent = 0;
  let done = 0;
  let primes = 0;
  const perWorker = new Map<number, number>();
  const sendNext = (worker: SpawnedProcess<Job, never>) => {
    if (sent >= jobCount || interrupted) return;
    const from = sent * span;
    worker.sender.send({ id: sent, from, to: from + span, reply: replies });
    sent++;
  };
  const byPid = new Map(workers.map((w) => [w.pid, w]));
  for (let i = 0; i < inFlightPerWorker; i++) workers.forEach(sendNext);

  const work = performance.now();
  let lastPrint = 0;
  for await (const answer of answers) {
    if (interrupted) break;
    done++;
    primes += answer.primes;
    perWorker.set(answer.pid, (perWorker.get(answer.pid) ?? 0) + 1);
    sendNext(byPid.get(answer.pid)!);
    const now = performance.now();
    if (now - lastPrint > 100 || done === jobCount) {
      lastPrint = now;
      const rate = done / ((now - work) / 1000);
      write(
        `\r${done}/${jobCount} jobs  ${primes} primes below ${done * span}  ${
          rate.toFixed(0)
        } jobs/s   `,
      );
    }
    if (done === jobCount) break;
  }
  // onInterrupt ends the process once the workers are gone.
  if (interrupted) await new Promise<never>(() => {});
  const seconds = (performance.now() - work) / 1000;
  replies.close();
  answers.close();
  Deno.removeSignalListener("SIGINT", onInterrupt);
  await stop();
  write("\n");
  console.log(
    `${workerCount} workers spawned and connected in ${spawnMs.toFixed(0)} ms`,
  );
  console.log(
    `${jobCount} jobs (${
      2 * jobCount
    } messages, each job carrying a reply channel) in ${
      seconds.toFixed(2)
    } s: ${(jobCount / seconds).toFixed(0)} jobs/s`,
  );
  for (const [pid, count] of perWorker) {
    console.log(`  worker ${pid}: ${count} jobs`);
  }
}
