/**
 * One process of scripts/soak.ts: part of a ring. Receives tokens on its
 * inbox, checks the body checksum and the shared memory pattern, and passes
 * each token to the next worker (or answers on the sender inside it once its
 * hops are done). The parent asks for figures with "stats".
 *
 * @module
 */

import {
  channel,
  connectToParent,
  IpcError,
  type IpcSender,
  type IpcSharedMemory,
} from "../mod.ts";
import { libc } from "../ffi/libc.ts";

/** A message travelling around the ring. */
export interface Token {
  id: number;
  hops: number;
  body: Uint8Array;
  sum: number;
  shm: IpcSharedMemory;
  reply: IpcSender<Result>;
}

/** What the last hop answers. */
export interface Result {
  id: number;
  ok: boolean;
  why?: string;
}

/** Parent to worker. */
export type Down =
  | { kind: "next"; next: IpcSender<Token> }
  | { kind: "stats" }
  | { kind: "stop" };

/** Worker to parent. */
export type Up =
  | { kind: "inbox"; inbox: IpcSender<Token> }
  | {
    kind: "stats";
    fds: number;
    rss: number;
    /** The highest RSS sampled since the previous stats. */
    peak: number;
    /** RSS right after a full collection (a leak survives it; garbage not). */
    collected: number;
    handled: number;
    errors: number;
  };

/** FNV-1a. */
export function checksum(bytes: Uint8Array): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) {
    h = Math.imul(h ^ bytes[i], 0x01000193);
  }
  return h >>> 0;
}

/** Open descriptors, counted with fcntl(F_GETFD) (no --allow-read needed). */
export function openFds(): number {
  const lc = libc();
  let count = 0;
  for (let fd = 0, gap = 0; gap < 1024; fd++) {
    if (lc.fcntl(fd, 1, 0) >= 0) {
      count++;
      gap = 0;
    } else gap++;
  }
  return count;
}

if (import.meta.main) {
  const { sender, receiver } = await connectToParent<Up, Down>();
  const [inbox, tokens] = channel<Token>();
  sender.send({ kind: "inbox", inbox });
  inbox.close();
  let next: IpcSender<Token> | undefined;
  let handled = 0;
  let errors = 0;
  let peak = 0;
  const sampler = setInterval(() => {
    peak = Math.max(peak, Deno.memoryUsage().rss);
  }, 100);

  const ring = (async () => {
    for (;;) {
      let token: Token;
      try {
        token = await tokens.recv();
      } catch (error) {
        if (
          error instanceof IpcError &&
          (error.kind === "Disconnected" || error.kind === "Closed")
        ) return;
        errors++;
        continue;
      }
      handled++;
      let why: string | undefined;
      if (checksum(token.body) !== token.sum) why = "body checksum";
      const bytes = token.shm.bytes;
      for (let i = 0; i < bytes.length && !why; i += 257) {
        if (bytes[i] !== (token.id & 0xff)) why = "shared memory pattern";
      }
      try {
        if (why === undefined && token.hops > 1 && next !== undefined) {
          next.send({ ...token, hops: token.hops - 1 });
        } else {
          token.reply.send({ id: token.id, ok: why === undefined, why });
        }
      } catch (error) {
        errors++;
        console.error(`worker ${Deno.pid}: ${error}`);
      }
      token.shm.close();
      token.reply.close();
    }
  })();

  for await (const message of receiver) {
    if (message.kind === "next") {
      next = message.next;
    } else if (message.kind === "stats") {
      const collected = await collectedRss();
      sender.send({
        kind: "stats",
        fds: openFds(),
        rss: Deno.memoryUsage().rss,
        peak: Math.max(peak, Deno.memoryUsage().rss),
        collected,
        handled,
        errors,
      });
    } else {
      break;
    }
    if (message.kind === "stats") peak = 0;
  }
  clearInterval(sampler);
  next?.close();
  tokens.close();
  await ring;
  await sender.drained();
  sender.close();
  receiver.close();
}

/**
 * RSS after a full garbage collection (run with --v8-flags=--expose-gc),
 * once the finalizers it scheduled (which release shared-memory mappings)
 * have run.
 */
export async function collectedRss(): Promise<number> {
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  await new Promise((resolve) => setTimeout(resolve, 20));
  gc?.();
  return Deno.memoryUsage().rss;
}
