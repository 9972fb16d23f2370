/**
 * A FIFO of pending promises, each cancellable by an AbortSignal or a timeout.
 *
 * @module
 */

import { IpcError, type OsWaitOptions } from "./types.ts";

interface Waiter<T, K> {
  key: K;
  resolve(value: T): void;
  reject(error: unknown): void;
}

/** Pending waits in arrival order; `K` is a per-waiter key (e.g. a threshold). */
export class Waiters<T, K = undefined> {
  #list: Waiter<T, K>[] = [];
  readonly #what: string;

  /** @param what what a timeout says was not found, e.g. "no message" */
  constructor(what: string) {
    this.#what = what;
  }

  /** How many are waiting. */
  get size(): number {
    return this.#list.length;
  }

  /**
   * Adds a waiter. `onCancel` runs after a timeout or abort removed it.
   * A timeout rejects with kind "Empty"; an abort with the signal's reason.
   */
  add(key: K, options?: OsWaitOptions, onCancel?: () => void): Promise<T> {
    const signal = options?.signal;
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise<T>((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const cleanup = () => {
        if (timer !== undefined) clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
      };
      const cancel = (error: unknown) => {
        const at = this.#list.indexOf(waiter);
        if (at < 0) return;
        this.#list.splice(at, 1);
        cleanup();
        reject(error);
        onCancel?.();
      };
      const onAbort = () => cancel(signal!.reason);
      const waiter: Waiter<T, K> = {
        key,
        resolve: (value) => {
          cleanup();
          resolve(value);
        },
        reject: (error) => {
          cleanup();
          reject(error);
        },
      };
      this.#list.push(waiter);
      signal?.addEventListener("abort", onAbort, { once: true });
      const ms = options?.timeoutMs;
      if (ms !== undefined) {
        timer = setTimeout(
          () => cancel(new IpcError("Empty", `${this.#what} within ${ms} ms`)),
          Math.max(0, Math.min(ms, 2 ** 31 - 1)),
        );
      }
    });
  }

  /** Settles the oldest waiter with `value`. */
  resolveFirst(value: T): void {
    this.#list.shift()?.resolve(value);
  }

  /** Rejects the oldest waiter. */
  rejectFirst(error: unknown): void {
    this.#list.shift()?.reject(error);
  }

  /** Rejects every waiter. */
  rejectAll(error: unknown): void {
    for (const waiter of this.#list.splice(0)) waiter.reject(error);
  }

  /** Resolves, in order, every waiter whose key passes `ready`. */
  resolveWhere(ready: (key: K) => boolean, value: T): void {
    const keep: Waiter<T, K>[] = [];
    const done: Waiter<T, K>[] = [];
    for (const waiter of this.#list) {
      (ready(waiter.key) ? done : keep).push(waiter);
    }
    this.#list = keep;
    for (const waiter of done) waiter.resolve(value);
  }
}
