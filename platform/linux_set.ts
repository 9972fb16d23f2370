/**
 * Linux receiver sets: an epoll descriptor of their own holding every member
 * (the token is the member's id), itself watched by the shared poller only
 * while a `select` waits. A selection asks the set's epoll which members are
 * ready (`epoll_wait` with a zero timeout) and drains each of them with
 * non-blocking receives, so its cost follows the ready members, not the size
 * of the set. No thread per set, no polling loop.
 *
 * @module
 */

import {
  EINTR,
  EPOLL_CLOEXEC,
  EPOLL_CTL_ADD,
  EPOLL_CTL_DEL,
  EPOLL_EVENT,
  EPOLLIN,
  errno,
  libc,
} from "../ffi/libc.ts";
import { ReadyWaiters } from "./epoll.ts";
import { osError } from "./linux_errors.ts";
import {
  IpcError,
  type OsMessage,
  type OsReceiver,
  type OsReceiverSet,
  type OsSelection,
  type OsWaitOptions,
} from "./types.ts";

/** A receiver owned by a set. */
export interface SetMember {
  /** Its descriptor. */
  descriptorForSend(): number;
  /** A message if one waits; throws "Disconnected" at the end. */
  tryRecv(): OsMessage | undefined;
  /** Releases it. */
  close(): void;
  /** Set by the set: called when the member moves to another descriptor. */
  onDescriptorChange?: (previous: number, next: number) => void;
}

const MIN_EVENTS = 16;

/** Closes the epoll descriptor of a set dropped without close(). */
const epollRegistry = new FinalizationRegistry<number>((fd) => {
  libc().close(fd);
});
const MAX_EVENTS = 1024;

/** See the module doc. */
export class LinuxReceiverSet implements OsReceiverSet {
  readonly #adopt: (receiver: OsReceiver) => SetMember;
  readonly #members = new Map<number, SetMember>();
  #epfd = -1;
  #nextId = 0;
  #events = new Uint8Array(EPOLL_EVENT.size * MIN_EVENTS);
  readonly #ready = new ReadyWaiters<OsSelection[]>("no message", () => {
    const results = this.trySelect();
    return results.length > 0 ? results : undefined;
  });
  #closed = false;
  /** An error met after results were gathered; thrown by the next call. */
  #deferred: unknown;

  /** @param adopt moves a receiver out of its handle into the set */
  constructor(adopt: (receiver: OsReceiver) => SetMember) {
    this.#adopt = adopt;
    const epfd = libc().epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) throw osError("epoll_create1", errno());
    this.#epfd = epfd;
    epollRegistry.register(this, epfd, this);
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
    const event = new Uint8Array(EPOLL_EVENT.size);
    const view = new DataView(event.buffer);
    view.setUint32(0, EPOLLIN, true);
    view.setUint32(EPOLL_EVENT.data, id, true);
    const fd = member.descriptorForSend();
    if (libc().epoll_ctl(this.#epfd, EPOLL_CTL_ADD, fd, event) < 0) {
      const code = errno();
      member.close();
      throw osError("epoll_ctl", code);
    }
    this.#members.set(id, member);
    // A member that follows a spilled backlog to a new descriptor keeps its
    // place (and id) in the set.
    member.onDescriptorChange = (previous, next) => {
      libc().epoll_ctl(this.#epfd, EPOLL_CTL_DEL, previous, event);
      if (libc().epoll_ctl(this.#epfd, EPOLL_CTL_ADD, next, event) < 0) {
        throw osError("epoll_ctl", errno());
      }
    };
    const wanted = Math.min(MAX_EVENTS, this.#members.size);
    if (wanted * EPOLL_EVENT.size > this.#events.length) {
      this.#events = new Uint8Array(EPOLL_EVENT.size * wanted);
    }
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

  #drop(id: number, member: SetMember): void {
    this.#members.delete(id);
    libc().epoll_ctl(
      this.#epfd,
      EPOLL_CTL_DEL,
      member.descriptorForSend(),
      this.#events,
    );
    member.close();
  }

  trySelect(): OsSelection[] {
    this.#check();
    if (this.#deferred !== undefined) {
      const error = this.#deferred;
      this.#deferred = undefined;
      throw error;
    }
    const lc = libc();
    let count: number;
    for (;;) {
      count = lc.epoll_wait(
        this.#epfd,
        this.#events,
        this.#events.length / EPOLL_EVENT.size,
        0,
      );
      if (count >= 0) break;
      const code = errno();
      if (code !== EINTR) throw osError("epoll_wait", code);
    }
    const results: OsSelection[] = [];
    if (count === 0) return results;
    const view = new DataView(this.#events.buffer);
    const ready: number[] = [];
    for (let i = 0; i < count; i++) {
      ready.push(view.getUint32(i * EPOLL_EVENT.size + EPOLL_EVENT.data, true));
    }
    for (const id of ready) {
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
    }
    return results;
  }

  select(options?: OsWaitOptions): Promise<OsSelection[]> {
    // An aborted signal wins even over a waiting message, as in fetch().
    if (options?.signal?.aborted) return Promise.reject(options.signal.reason);
    try {
      this.#check();
      if (this.#members.size === 0) {
        if (this.#ready.size === 0) {
          const results = this.trySelect();
          if (results.length > 0) return Promise.resolve(results);
        }
        throw new IpcError(
          "Empty",
          "the receiver set is empty: nothing could ever arrive",
        );
      }
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#ready.wait(this.#epfd, options);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#ready.stop(this.#epfd);
    for (const member of this.#members.values()) member.close();
    this.#members.clear();
    epollRegistry.unregister(this);
    libc().close(this.#epfd);
    this.#epfd = -1;
    this.#ready.rejectAll(
      new IpcError("Closed", "this receiver set was closed"),
    );
  }
}
