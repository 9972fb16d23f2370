/**
 * A demo worker: counts the primes in each range it is sent and answers on
 * the reply channel that came inside the job.
 *
 * @module
 */

import { connectToParent } from "../mod.ts";
import type { Job } from "./demo.ts";

function countPrimes(from: number, to: number): number {
  let count = 0;
  for (let n = Math.max(2, from); n < to; n++) {
    let prime = true;
    for (let d = 2; d * d <= n; d++) {
      if (n % d === 0) {
        prime = false;
        break;
      }
    }
    if (prime) count++;
  }
  return count;
}

const { sender, receiver } = await connectToParent<never, Job>();
sender.close();
for await (const job of receiver) {
  job.reply.send({
    id: job.id,
    pid: Deno.pid,
    primes: countPrimes(job.from, job.to),
  });
  job.reply.close();
}
