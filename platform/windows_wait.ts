/**
 * One waiter for every pending operation of the process on Windows: the
 * counterpart of `epoll.ts`.
 *
 * Every asynchronous operation (a zero-byte read announcing a message, a
 * pending write, a pending `ConnectNamedPipe`) is an overlapped call whose
 * `OVERLAPPED.hEvent` is a manual-reset event. The poller waits on all of
 * those events with `WaitForMultipleObjects`: at most one call parked on
 * Deno's blocking pool per 63 events (the 64th slot is a wake event used to
 * rebuild the set), so a thousand pending `recv()` calls cost 16 threads, not
 * a thousand. Right after traffic it first polls with a zero timeout for a
 * bounded {@linkcode SPIN_MS}, like the Linux poller.
 *
 * Why not an I/O completion port: a handle is bound to one port for the life
 * of its file object, and receivers move between processes. A pipe bound to a
 * port in process A would keep posting its completions to A after it moved to
 * B. Events live in the `OVERLAPPED` of each call, so they move with nothing.
 *
 * A watch fires once: the callback runs on the event loop and re-arms (a new
 * overlapped call resets the event) or lets the watch go.
 *
 * @module
 */

import {
  handle,
  INFINITE,
  kernel32,
  lastError,
  MAXIMUM_WAIT_OBJECTS,
  WAIT_FAILED,
  WAIT_OBJECT_0,
  WAIT_TIMEOUT,
} from "../ffi/kernel32.ts";
import { winError } from "./windows_errors.ts";

/** How long the loop keeps polling after traffic before it parks. */
export const SPIN_MS = 0.05;
const RECENT_MS = 2;
const PER_WAIT = MAXIMUM_WAIT_OBJECTS - 1;

interface Watch {
  event: bigint;
  onSignaled: () => void;
}

class EventPoller {
  #wake = 0n;
  #watches = new Map<number, Watch>();
  #nextToken = 1;
  #running = false;
  #parked = false;
  #lastTraffic = -Infinity;
  #idle: Array<() => void> = [];

  #open(): void {
    if (this.#wake !== 0n) return;
    const wake = handle(kernel32().CreateEventW(null, 1, 0, null));
    if (wake === 0n) throw winError("CreateEventW", lastError());
    this.#wake = wake;
  }

  /** Calls `onSignaled` once, on the event loop, when `event` is signaled. */
  once(event: bigint, onSignaled: () => void): number {
    this.#open();
    const token = this.#nextToken++;
    this.#watches.set(token, { event, onSignaled });
    if (this.#parked) kernel32().SetEvent(this.#wake);
    if (!this.#running) this.#start();
    return token;
  }

  /** Forgets a watch that has not fired (does nothing if it did). */
  cancel(token: number): void {
    if (!this.#watches.delete(token)) return;
    if (this.#watches.size === 0 && this.#parked) {
      kernel32().SetEvent(this.#wake);
    }
  }

  /** Notes that a message just moved, so the next wait spins before parking. */
  traffic(): void {
    this.#lastTraffic = performance.now();
  }

  /** Resolves once nothing is watched and no wait is parked (for tests). */
  idle(): Promise<void> {
    if (!this.#running) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  #start(): void {
    this.#running = true;
    this.#loop().catch((error) => {
      queueMicrotask(() => {
        throw error;
      });
    });
  }

  /** The watched events in groups of at most 63, each with its tokens. */
  #groups(): { tokens: number[]; table: Uint8Array<ArrayBuffer> }[] {
    const groups = [];
    const entries = [...this.#watches];
    for (let at = 0; at < entries.length; at += PER_WAIT) {
      const slice = entries.slice(at, at + PER_WAIT);
      const table = new Uint8Array(new ArrayBuffer(8 * (slice.length + 1)));
      const view = new DataView(table.buffer);
      slice.forEach(([, watch], i) => {
        view.setBigInt64(8 * i, watch.event, true);
      });
      view.setBigInt64(8 * slice.length, this.#wake, true);
      groups.push({ tokens: slice.map(([token]) => token), table });
    }
    return groups;
  }

  /** Runs the callbacks of signaled watches found by a zero-timeout poll. */
  #pollOnce(): boolean {
    const k = kernel32();
    let fired = false;
    for (const group of this.#groups()) {
      const count = group.tokens.length;
      const result = k.WaitForMultipleObjects(count, group.table, 0, 0);
      if (result >= WAIT_OBJECT_0 && result < WAIT_OBJECT_0 + count) {
        fired = true;
        this.#fire(group.tokens[result - WAIT_OBJECT_0]);
      } else if (result === WAIT_FAILED) {
        throw winError("WaitForMultipleObjects", lastError());
      }
    }
    return fired;
  }

  #fire(token: number): void {
    const watch = this.#watches.get(token);
    if (watch === undefined) return;
    this.#watches.delete(token);
    this.traffic();
    watch.onSignaled();
  }

  async #loop(): Promise<void> {
    const k = kernel32();
    try {
      while (this.#watches.size > 0) {
        await null;
        if (this.#watches.size === 0) break;
        if (this.#pollOnce()) continue;
        if (performance.now() - this.#lastTraffic < RECENT_MS) {
          const start = performance.now();
          let fired = false;
          while (
            !fired && this.#watches.size > 0 &&
            performance.now() - start < SPIN_MS
          ) {
            fired = this.#pollOnce();
          }
          if (fired) continue;
          if (this.#watches.size === 0) break;
        }
        const groups = this.#groups();
        this.#parked = true;
        const waits = groups.map((group) =>
          k.WaitForMultipleObjectsParked(
            group.tokens.length + 1,
            group.table,
            0,
            INFINITE,
          )
        );
        if (waits.length > 1) {
          await Promise.race(waits);
          k.SetEvent(this.#wake);
        }
        const results = await Promise.all(waits);
        this.#parked = false;
        k.ResetEvent(this.#wake);
        results.forEach((result, i) => {
          const tokens = groups[i].tokens;
          if (
            result >= WAIT_OBJECT_0 && result < WAIT_OBJECT_0 + tokens.length
          ) {
            this.#fire(tokens[result - WAIT_OBJECT_0]);
          } else if (
            result !== WAIT_OBJECT_0 + tokens.length && result !== WAIT_TIMEOUT
          ) {
            // A failed wait (a handle closed under us): poll to find out.
          }
        });
      }
    } finally {
      this.#running = false;
      this.#parked = false;
      for (const resolve of this.#idle.splice(0)) resolve();
    }
  }
}

/** The process's poller. */
export const poller: EventPoller = new EventPoller();
