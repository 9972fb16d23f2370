/**
 * One kqueue shared by every waiting endpoint of the macOS backend; the
 * counterpart of platform/epoll.ts. A Mach receive right or port set is
 * watched with `EVFILT_MACHPORT` and no `MACH_RCV_MSG` flag, so the kernel
 * only reports that a message waits and the owner receives it itself (with a
 * zero-timeout `mach_msg`). At most one `kevent64` is parked on Deno's
 * blocking pool at a time; an `EVFILT_USER` event wakes it when the last
 * watch goes. Right after traffic the loop polls for a bounded
 * {@linkcode SPIN_MS} before parking, as on Linux.
 *
 * @module
 */

import {
  EV_ADD,
  EV_CLEAR,
  EV_DELETE,
  EV_ENABLE,
  EVFILT_MACHPORT,
  EVFILT_USER,
  KEVENT64,
  KEVENT_FLAG_IMMEDIATE,
  libSystem,
  NOTE_TRIGGER,
} from "../ffi/libSystem.ts";
import { IpcError } from "./types.ts";

/** Called on the event loop when the watched port has a message. */
export type ReadyCallback = () => void;

/** How long the loop keeps polling after traffic before it parks. */
export const SPIN_MS = 0.05;
const RECENT_MS = 2;
const MAX_EVENTS = 128;
const WAKE_TOKEN = 0;
const WAKE_IDENT = 1n;

/** Writes one `kevent64_s` at `index` of `into`. */
export function writeKevent(
  into: Uint8Array,
  index: number,
  ident: bigint,
  filter: number,
  flags: number,
  fflags: number,
  udata: bigint,
): void {
  const view = new DataView(into.buffer, into.byteOffset, into.byteLength);
  const at = index * KEVENT64.size;
  into.fill(0, at, at + KEVENT64.size);
  view.setBigUint64(at + KEVENT64.ident, ident, true);
  view.setInt16(at + KEVENT64.filter, filter, true);
  view.setUint16(at + KEVENT64.flags, flags, true);
  view.setUint32(at + KEVENT64.fflags, fflags, true);
  view.setBigUint64(at + KEVENT64.udata, udata, true);
}

class Poller {
  #kq = -1;
  #watches = new Map<number, ReadyCallback>();
  #nextToken = 1;
  #running = false;
  #parked = false;
  #lastTraffic = -Infinity;
  #idle: Array<() => void> = [];
  readonly #change = new Uint8Array(KEVENT64.size);
  readonly #spinEvents = new Uint8Array(KEVENT64.size * MAX_EVENTS);
  readonly #parkEvents = new Uint8Array(KEVENT64.size * MAX_EVENTS);

  #open(): void {
    if (this.#kq >= 0) return;
    const kq = libSystem().kqueue();
    if (kq < 0) throw new IpcError("Io", "kqueue() failed");
    this.#kq = kq;
    this.#control(WAKE_IDENT, EVFILT_USER, EV_ADD | EV_CLEAR, 0, WAKE_TOKEN);
  }

  #control(
    ident: bigint,
    filter: number,
    flags: number,
    fflags: number,
    token: number,
  ): number {
    writeKevent(this.#change, 0, ident, filter, flags, fflags, BigInt(token));
    return libSystem().kevent64(
      this.#kq,
      this.#change,
      1,
      this.#change,
      0,
      KEVENT_FLAG_IMMEDIATE,
      null,
    );
  }

  /** Calls `onReady` while `port` (a receive right or port set) has messages. */
  watch(port: number, onReady: ReadyCallback): number {
    this.#open();
    const token = this.#nextToken++;
    if (this.#nextToken > 0xffff_fff0) this.#nextToken = 1;
    if (
      this.#control(
        BigInt(port),
        EVFILT_MACHPORT,
        EV_ADD | EV_ENABLE,
        0,
        token,
      ) <
        0
    ) {
      throw new IpcError("Io", `kevent64(EVFILT_MACHPORT) failed on ${port}`);
    }
    this.#watches.set(token, onReady);
    if (!this.#running) this.#start();
    return token;
  }

  /** Ends a watch. Must be called before the right is destroyed or moved. */
  unwatch(port: number, token: number): void {
    if (!this.#watches.delete(token)) return;
    this.#control(BigInt(port), EVFILT_MACHPORT, EV_DELETE, 0, token);
    if (this.#watches.size === 0 && this.#parked) {
      this.#control(WAKE_IDENT, EVFILT_USER, 0, NOTE_TRIGGER, WAKE_TOKEN);
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

  async #loop(): Promise<void> {
    const lib = libSystem();
    try {
      while (this.#watches.size > 0) {
        await null;
        if (this.#watches.size === 0) break;
        let count = 0;
        if (performance.now() - this.#lastTraffic < RECENT_MS) {
          const start = performance.now();
          do {
            count = lib.kevent64(
              this.#kq,
              this.#spinEvents,
              0,
              this.#spinEvents,
              MAX_EVENTS,
              KEVENT_FLAG_IMMEDIATE,
              null,
            );
          } while (count === 0 && performance.now() - start < SPIN_MS);
          if (count > 0) {
            this.#dispatch(this.#spinEvents, count);
            continue;
          }
        }
        this.#parked = true;
        count = await lib.kevent64_parked(
          this.#kq,
          this.#parkEvents,
          0,
          this.#parkEvents,
          MAX_EVENTS,
          0,
          null,
        );
        this.#parked = false;
        if (count < 0) continue; // EINTR
        this.#dispatch(this.#parkEvents, count);
      }
    } finally {
      this.#running = false;
      this.#parked = false;
      for (const resolve of this.#idle.splice(0)) resolve();
    }
  }

  #dispatch(events: Uint8Array, count: number): void {
    const view = new DataView(events.buffer);
    for (let i = 0; i < count; i++) {
      const at = i * KEVENT64.size;
      const token = Number(view.getBigUint64(at + KEVENT64.udata, true));
      if (token === WAKE_TOKEN) continue;
      this.#watches.get(token)?.();
    }
  }
}

/** The process's poller. */
export const poller: Poller = new Poller();
