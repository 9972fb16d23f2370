/**
 * Windows receiver sets. While a `select` waits, every member has one
 * zero-byte overlapped read pending (see `windows.ts`), all watched by the
 * process's one event poller; a selection drains members with non-blocking
 * receives. No thread per set or member (one parked wait per 63 members).
 *
 * @module
 */

import {
  IpcError,
  type OsMessage,
  type OsReceiver,
  type OsReceiverSet,
  type OsSelection,
  type OsWaitOptions,
} from "./types.ts";
import { Waiters } from "./waiters.ts";

/** A receiver owned by a set. */
export interface WindowsSetMember {
  /** A message if one waits; throws "Disconnected" at the end. */
  tryRecv(): OsMessage | undefined;
  /** Calls `onReady` once when a message or the end may be waiting. */
  watchReadable(onReady: () => void): void;
  /** Forgets the watch. */
  unwatchReadable(): void;
  /** Releases it. */
  close(): void;
}

/** See the module doc. */
export class WindowsReceiverSet implements OsReceiverSet {
  readonly #adopt: (receiver: OsReceiver) => WindowsSetMember;
  readonly #members = new Map<number, WindowsSetMember>();
  readonly #ready = new Set<number>();
  #nextId = 0;
  #watching = false;
  #waiters = new Waiters<OsSelection[]>("no message");
  #closed = false;
  #deferred: unknown;

  /** @param adopt moves a receiver out of its handle into the set */
  constructor(adopt: (receiver: OsReceiver) => WindowsSetMember) {
    this.#adopt = adopt;
  }

  get size(): number {
    return this.#members.size;
  }

  #check(): void {
    if (this.#closed) {
      throw new IpcError("Closed", "this receiver set was closed");
    }
  }

  add(receiver: OsReceiver): number {
    this.#check();
    if (this.#nextId >= 0xffff_ffff) {
      throw new IpcError("Io", "this receiver set ran out of ids");
    }
    const member = this.#adopt(receiver);
    const id = this.#nextId++;
    this.#members.set(id, member);
    this.#ready.add(id);
    if (this.#watching) this.#watch(id, member);
    return id;
  }

  remove(id: number): void {
    this.#check();
    const member = this.#members.get(id);
    if (member === undefined) {
      throw new IpcError("Io", `no receiver with id ${id} in this set`);
    }
    this.#drop(id, member);
  }

  #drop(id: number, member: WindowsSetMember): void {
    this.#members.delete(id);
    this.#ready.delete(id);
    member.unwatchReadable();
    member.close();
  }

  trySelect(): OsSelection[] {
    this.#check();
    if (this.#deferred !== undefined) {
      const error = this.#deferred;
      this.#deferred = undefined;
      throw error;
    }
    const results: OsSelection[] = [];
    // Members that signalled, plus new ones, are checked first; the rest
    // only when nothing is being watched (a plain trySelect()).
    const ids = this.#watching ? [...this.#ready] : [...this.#members.keys()];
    for (const id of ids) {
      this.#ready.delete(id);
      const member = this.#members.get(id);
      if (member === undefined) continue;
      try {
        for (;;) {
          const message = member.tryRecv();
          if (message === undefined) break;
          results.push({ type: "message", id, message });
        }
      } catch (error) {
        if (error instanceof IpcError && error.kind === "Disconnected") {
          this.#drop(id, member);
          results.push({ type: "closed", id });
          continue;
        }
        if (results.length === 0) throw error;
        this.#deferred = error;
        break;
      }
      if (this.#watching) this.#watch(id, member);
    }
    return results;
  }

  select(options?: OsWaitOptions): Promise<OsSelection[]> {
    // An aborted signal wins even over a waiting message, as in fetch().
    if (options?.signal?.aborted) return Promise.reject(options.signal.reason);
    try {
      this.#check();
      if (this.#waiters.size === 0) {
        const results = this.trySelect();
        if (results.length > 0) return Promise.resolve(results);
      }
      if (this.#members.size === 0) {
        throw new IpcError(
          "Empty",
          "the receiver set is empty: nothing could ever arrive",
        );
      }
    } catch (error) {
      return Promise.reject(error);
    }
    const promise = this.#waiters.add(undefined, options, () => {
      if (this.#waiters.size === 0) this.#stopWatching();
    });
    if (!this.#watching) {
      this.#watching = true;
      for (const [id, member] of this.#members) this.#watch(id, member);
    }
    return promise;
  }

  #watch(id: number, member: WindowsSetMember): void {
    member.watchReadable(() => {
      this.#ready.add(id);
      queueMicrotask(() => this.#onReady());
    });
  }

  #onReady(): void {
    while (this.#waiters.size > 0 && this.#ready.size > 0) {
      let results: OsSelection[];
      try {
        results = this.trySelect();
      } catch (error) {
        this.#waiters.rejectFirst(error);
        continue;
      }
      if (results.length === 0) break;
      this.#waiters.resolveFirst(results);
    }
    if (this.#waiters.size === 0) this.#stopWatching();
  }

  #stopWatching(): void {
    if (!this.#watching) return;
    this.#watching = false;
    for (const [id, member] of this.#members) {
      member.unwatchReadable();
      // A member that may have data must be looked at by the next select.
      this.#ready.add(id);
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#stopWatching();
    for (const member of this.#members.values()) member.close();
    this.#members.clear();
    this.#ready.clear();
    this.#waiters.rejectAll(
      new IpcError("Closed", "this receiver set was closed"),
    );
  }
}
