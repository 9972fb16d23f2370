/**
 * One epoll instance shared by every waiting endpoint in the process.
 *
 * At most one `epoll_wait` is parked on Deno's blocking pool at a time, so a
 * thousand pending `recv()` calls cost one thread, and the parked call is what
 * keeps the process alive while something waits. Right after traffic the loop
 * polls with a zero timeout for a bounded {@linkcode SPIN_MS} before parking:
 * the thread hop of a parked call costs about 14 µs, more than a message.
 *
 * @module
 */

import {
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  EPOLL_CLOEXEC,
  EPOLL_CTL_ADD,
  EPOLL_CTL_DEL,
  EPOLL_CTL_MOD,
  EPOLL_EVENT,
  EPOLLIN,
  errno,
  libc,
} from "../ffi/libc.ts";
import { osError } from "./linux_errors.ts";
import type { OsWaitOptions } from "./types.ts";
import { Waiters } from "./waiters.ts";

/** Called on the event loop when the watched fd is ready. */
export type ReadyCallback = (events: number) => void;

/** How long the loop keeps polling after traffic before it parks. */
export const SPIN_MS = 0.05;
/** Traffic this recent counts as "right after traffic". */
const RECENT_MS = 2;
const MAX_EVENTS = 128;
const WAKE_TOKEN = 0;

interface Watch {
  fd: number;
  onReady: ReadyCallback;
  /** False once released: still registered with epoll until the next park. */
  active: boolean;
}

class Poller {
  #epfd = -1;
  #wakeFd = -1;
  #watches = new Map<number, Watch>();
  #active = 0;
  #nextToken = 1;
  #running = false;
  #parked = false;
  #lastTraffic = -Infinity;
  #idle: Array<() => void> = [];
  readonly #ctlEvent = new Uint8Array(EPOLL_EVENT.size);
  readonly #spinEvents = new Uint8Array(EPOLL_EVENT.size * MAX_EVENTS);
  readonly #parkEvents = new Uint8Array(EPOLL_EVENT.size * MAX_EVENTS);

  #open(): void {
    if (this.#epfd >= 0) return;
    const lc = libc();
    const epfd = lc.epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) throw osError("epoll_create1", errno());
    const wakeFd = lc.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wakeFd < 0) {
      const code = errno();
      lc.close(epfd);
      throw osError("eventfd", code);
    }
    this.#epfd = epfd;
    this.#wakeFd = wakeFd;
    this.#control(EPOLL_CTL_ADD, wakeFd, EPOLLIN, WAKE_TOKEN);
  }

  #control(op: number, fd: number, events: number, token: number): void {
    const view = new DataView(this.#ctlEvent.buffer);
    view.setUint32(0, events, true);
    view.setUint32(EPOLL_EVENT.data, token, true);
    view.setUint32(EPOLL_EVENT.data + 4, 0, true);
    if (libc().epoll_ctl(this.#epfd, op, fd, this.#ctlEvent) < 0) {
      throw osError("epoll_ctl", errno());
    }
  }

  /** Calls `onReady` whenever `fd` has any of `events`, until released. */
  watch(fd: number, events: number, onReady: ReadyCallback): number {
    this.#open();
    const token = this.#nextToken++;
    if (this.#nextToken > 0xffff_fff0) this.#nextToken = 1;
    this.#control(EPOLL_CTL_ADD, fd, events, token);
    this.#watches.set(token, { fd, onReady, active: true });
    this.#active++;
    if (!this.#running) this.#start();
    return token;
  }

  /** Changes the events of a watch made by {@linkcode watch}. */
  rewatch(fd: number, token: number, events: number): void {
    this.#control(EPOLL_CTL_MOD, fd, events, token);
  }

  /**
   * Stops calling back but leaves the fd registered until the loop parks,
   * so that a receiver waiting message after message costs no epoll_ctl.
   */
  release(token: number): void {
    const watch = this.#watches.get(token);
    if (watch === undefined || !watch.active) return;
    watch.active = false;
    this.#active--;
    if (this.#active === 0 && this.#parked) this.#wake();
  }

  /** Makes a released watch active again; false if it is gone. */
  revive(token: number): boolean {
    const watch = this.#watches.get(token);
    if (watch === undefined) return false;
    if (!watch.active) {
      watch.active = true;
      this.#active++;
      if (!this.#running) this.#start();
    }
    return true;
  }

  /** Ends a watch at once. Must be called before the fd is closed. */
  unwatch(fd: number, token: number): void {
    const watch = this.#watches.get(token);
    if (watch === undefined) return;
    this.#remove(token, watch);
    if (this.#active === 0 && this.#parked) this.#wake();
    void fd;
  }

  #remove(token: number, watch: Watch): void {
    this.#watches.delete(token);
    if (watch.active) this.#active--;
    libc().epoll_ctl(this.#epfd, EPOLL_CTL_DEL, watch.fd, this.#ctlEvent);
  }

  #dropReleased(): void {
    for (const [token, watch] of this.#watches) {
      if (!watch.active) this.#remove(token, watch);
    }
  }

  /** Notes that a message just moved, so the next wait spins before parking. */
  traffic(): void {
    this.#lastTraffic = performance.now();
  }

  /** True right after traffic: a short spin is likely to find the answer. */
  recentTraffic(): boolean {
    return performance.now() - this.#lastTraffic < RECENT_MS;
  }

  /** Resolves once nothing is watched and no wait is parked (for tests). */
  idle(): Promise<void> {
    if (!this.#running) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  #wake(): void {
    const one = new BigUint64Array([1n]);
    libc().write(this.#wakeFd, new Uint8Array(one.buffer), 8n);
  }

  #start(): void {
    this.#running = true;
    this.#loop().catch((error) => {
      // A broken epoll is unrecoverable for the waiters; surface it loudly.
      queueMicrotask(() => {
        throw error;
      });
    });
  }

  async #loop(): Promise<void> {
    const lc = libc();
    try {
      while (this.#active > 0) {
        // Let the code woken by the last dispatch run (and send) first.
        await null;
        if (this.#active === 0) break;
        let count = 0;
        if (this.recentTraffic()) {
          const start = performance.now();
          do {
            count = lc.epoll_wait(this.#epfd, this.#spinEvents, MAX_EVENTS, 0);
            if (count === 0) lc.sched_yield();
          } while (count === 0 && performance.now() - start < SPIN_MS);
          if (count > 0) {
            this.#dispatch(this.#spinEvents, count);
            continue;
          }
        }
        this.#dropReleased();
        if (this.#active === 0) break;
        this.#parked = true;
        count = await lc.epoll_wait_parked(
          this.#epfd,
          this.#parkEvents,
          MAX_EVENTS,
          -1,
        );
        this.#parked = false;
        if (count < 0) {
          // errno belongs to the pool thread; EINTR is the only expected case.
          continue;
        }
        this.#dispatch(this.#parkEvents, count);
      }
    } finally {
      this.#dropReleased();
      this.#running = false;
      this.#parked = false;
      for (const resolve of this.#idle.splice(0)) resolve();
    }
  }

  #dispatch(events: Uint8Array, count: number): void {
    const view = new DataView(events.buffer);
    for (let i = 0; i < count; i++) {
      const at = i * EPOLL_EVENT.size;
      const token = view.getUint32(at + EPOLL_EVENT.data, true);
      if (token === WAKE_TOKEN) {
        libc().read(this.#wakeFd, new Uint8Array(8), 8n);
        continue;
      }
      const watch = this.#watches.get(token);
      if (watch === undefined) continue;
      // A released fd that is ready would keep the spin busy: drop it now.
      if (!watch.active) this.#remove(token, watch);
      else watch.onReady(view.getUint32(at, true));
    }
  }
}

/** The process's poller. */
export const poller: Poller = new Poller();

/**
 * Waits served in arrival order whenever one fd is readable: the shape of a
 * receiver's `recv()` and a server's `accept()`. `attempt` returns a value,
 * or undefined when nothing is ready yet; an error it throws rejects the
 * oldest wait, or every wait when `fatal()` says the fd is finished.
 */
export class ReadyWaiters<T> {
  readonly #waiters: Waiters<T>;
  readonly #attempt: () => T | undefined;
  readonly #fatal: () => boolean;
  #watch = 0;

  /**
   * @param what what a timeout says was not found, e.g. "no message"
   * @param attempt takes a ready value without blocking
   * @param fatal after `attempt` threw: whether every wait must fail
   */
  constructor(
    what: string,
    attempt: () => T | undefined,
    fatal: () => boolean = () => false,
  ) {
    this.#waiters = new Waiters<T>(what);
    this.#attempt = attempt;
    this.#fatal = fatal;
  }

  /** How many waits are pending. */
  get size(): number {
    return this.#waiters.size;
  }

  /** A value as soon as `fd` yields one; waits queue behind earlier ones. */
  wait(fd: number, options?: OsWaitOptions): Promise<T> {
    // An aborted signal wins even over a ready value, as in fetch().
    if (options?.signal?.aborted) return Promise.reject(options.signal.reason);
    try {
      if (this.#waiters.size === 0) {
        const value = this.#attempt();
        if (value !== undefined) return Promise.resolve(value);
      }
    } catch (error) {
      return Promise.reject(error);
    }
    const promise = this.#waiters.add(undefined, options, () => {
      if (this.#waiters.size === 0) poller.release(this.#watch);
    });
    if (this.#watch === 0 || !poller.revive(this.#watch)) {
      this.#watch = poller.watch(fd, EPOLLIN, () => this.#onReadable());
    }
    return promise;
  }

  #onReadable(): void {
    while (this.#waiters.size > 0) {
      let value: T | undefined;
      try {
        value = this.#attempt();
      } catch (error) {
        if (this.#fatal()) this.#waiters.rejectAll(error);
        else this.#waiters.rejectFirst(error);
        continue;
      }
      if (value === undefined) break;
      this.#waiters.resolveFirst(value);
    }
    if (this.#waiters.size === 0) poller.release(this.#watch);
  }

  /** Ends the watch at once: before `fd` is closed or replaced. */
  stop(fd: number): void {
    if (this.#watch === 0) return;
    poller.unwatch(fd, this.#watch);
    this.#watch = 0;
  }

  /** After `stop`, watches `fd` instead if waits are pending. */
  follow(fd: number): void {
    if (this.#waiters.size > 0 && this.#watch === 0) {
      this.#watch = poller.watch(fd, EPOLLIN, () => this.#onReadable());
    }
  }

  /** Rejects every pending wait. */
  rejectAll(error: unknown): void {
    this.#waiters.rejectAll(error);
  }
}
