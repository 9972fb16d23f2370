/**
 * A simulated Mach kernel behind the libSystem calls of the macOS backend
 * (`MachLibrary` in platform/macos.ts), so that the backend's own code runs
 * on any OS. One {@linkcode FakeWorld} holds ports, their queues and the
 * bootstrap server; each {@linkcode FakeTask} is one process's IPC space and
 * the `MachHost` a backend instance runs over.
 *
 * The model follows XNU (osfmk/ipc/ipc_right.c, ipc_kmsg.c, ipc_port.c), not
 * the backend's ledger, and reads messages with its own decoder rather than
 * platform/macos_msg.ts's, so that a mistake there shows up as a mismatch:
 * - One name per port per space; send rights merge into it as user
 *   references; send-once rights get a name each.
 * - A port has senders while any space holds a send right to it, a queued
 *   message carries one, or the bootstrap server holds one; when the last
 *   goes, an armed no-senders request queues its notification.
 * - Destroying a receive right destroys the port: its queue is destroyed
 *   with every right and region in it (receive rights recursively), send
 *   rights to it become dead names, and an armed send-possible request turns
 *   into a dead-name notification whose user reference is added to the
 *   requester's dead name (ipc_right_check: "Add the reference that the
 *   notification carries").
 * - A send to a full queue with a zero timeout fails with
 *   MACH_SEND_TIMED_OUT and pseudo-receives the message back into the
 *   sender's buffer (ipc_kmsg_copyout_pseudo).
 * - Deallocating a send-once right sends a send-once notification.
 *
 * Return codes come from mach/kern_return.h, mach/message.h and
 * servers/bootstrap_defs.h, written out here rather than imported.
 *
 * @module
 */

import type { MachHost, MachLibrary, MachPoller } from "../platform/macos.ts";

// mach/kern_return.h
const KERN_SUCCESS = 0;
const KERN_INVALID_ADDRESS = 1;
const KERN_INVALID_ARGUMENT = 4;
const KERN_INVALID_NAME = 15;
const KERN_INVALID_TASK = 16;
const KERN_INVALID_RIGHT = 17;
const KERN_INVALID_VALUE = 18;
const KERN_NOT_IN_SET = 12;
// mach/message.h
const MACH_SEND_MSG = 0x1;
const MACH_RCV_MSG = 0x2;
const MACH_RCV_LARGE = 0x4;
const MACH_SEND_TIMEOUT = 0x10;
const MACH_RCV_TIMEOUT = 0x100;
const MACH_SEND_INVALID_DEST = 0x1000_0003;
const MACH_SEND_TIMED_OUT = 0x1000_0004;
const MACH_SEND_INVALID_RIGHT = 0x1000_000a;
const MACH_SEND_TOO_LARGE = 0x1000_000e;
const MACH_RCV_INVALID_NAME = 0x1000_4002;
const MACH_RCV_TIMED_OUT = 0x1000_4003;
const MACH_RCV_TOO_LARGE = 0x1000_4004;
const MSGH_BITS_COMPLEX = 0x8000_0000;
const MOVE_RECEIVE = 16;
const MOVE_SEND = 17;
const PORT_SEND_ONCE = 18;
const COPY_SEND = 19;
const MAKE_SEND = 20;
const MAKE_SEND_ONCE = 21;
const PORT_DESCRIPTOR = 0;
const OOL_DESCRIPTOR = 1;
const MACH_PORT_DEAD = 0xffff_ffff;
// mach/port.h
const RIGHT_SEND = 0;
const RIGHT_RECEIVE = 1;
const RIGHT_PORT_SET = 3;
const RIGHT_DEAD_NAME = 4;
const LIMITS_INFO = 1;
const QLIMIT_DEFAULT = 5;
const QLIMIT_MAX = 1024;
// mach/notify.h
const NOTIFY_SEND_POSSIBLE = 0o102;
const NOTIFY_NO_SENDERS = 0o106;
const NOTIFY_SEND_ONCE = 0o107;
const NOTIFY_DEAD_NAME = 0o110;
// mach/task_special_ports.h, servers/bootstrap_defs.h
const TASK_BOOTSTRAP_PORT = 4;
const BOOTSTRAP_NAME_IN_USE = 1101;
const BOOTSTRAP_UNKNOWN_SERVICE = 1102;
// mach/memory_object_types.h
const MAP_MEM_NAMED_CREATE = 0x020000;
/** `mach_task_self()` in every fake task; no space entry stands for it. */
const TASK_SELF = 0x103;

/** A port, a port set or a memory entry: a kernel object. */
class Port {
  readonly id: number;
  readonly kind: "port" | "set" | "memory" | "bootstrap";
  /** The task holding the receive right; undefined while in flight or dead. */
  holder: FakeTask | undefined;
  dead = false;
  queue: KMessage[] = [];
  qlimit = QLIMIT_DEFAULT;
  mscount = 0;
  noSendersArmed = false;
  sendPossible: { task: FakeTask; name: number; notify: Port }[] = [];
  memberOf: Port | undefined;
  readonly members = new Set<Port>();
  memory: Uint8Array | undefined;

  constructor(id: number, kind: Port["kind"]) {
    this.id = id;
    this.kind = kind;
  }

  get full(): boolean {
    return this.queue.length >= this.qlimit;
  }
}

type Item =
  | { type: "port"; port: Port; right: "send" | "receive" }
  | { type: "ool"; data: Uint8Array; copy: number };

/** A message inside the kernel: its rights as objects, not names. */
interface KMessage {
  /** The right the sender used on the destination, as the receiver sees it. */
  localType: number;
  id: number;
  complex: boolean;
  items: Item[];
  /** Everything after the descriptors (our frame, or a notification body). */
  tail: Uint8Array;
  sender: FakeTask | undefined;
}

/** One name in one space. */
export interface FakeEntry {
  port: Port;
  receive: boolean;
  portSet: boolean;
  send: number;
  sendOnce: number;
  dead: number;
}

/** NDR_record_t as MIG writes it (mig_vers 0 … int_rep 1 …). */
const NDR = [0, 0, 0, 0, 1, 0, 0, 0];

function bytesOf(buffer: AllowSharedBufferSource | null): Uint8Array {
  if (buffer === null) throw new Error("fake mach: a NULL buffer");
  return ArrayBuffer.isView(buffer)
    ? new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength)
    : new Uint8Array(buffer);
}

function u32(buffer: AllowSharedBufferSource | null, value: number): void {
  const b = bytesOf(buffer);
  new DataView(b.buffer, b.byteOffset, b.byteLength).setUint32(0, value, true);
}

function cString(buffer: AllowSharedBufferSource | null): string {
  const b = bytesOf(buffer);
  const end = b.indexOf(0);
  return new TextDecoder().decode(b.subarray(0, end < 0 ? b.length : end));
}

function addressOf(bytes: Uint8Array): bigint {
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes)));
}

/** The kernel: every port, and the bootstrap server's registrations. */
export class FakeWorld {
  readonly ports = new Set<Port>();
  readonly tasks: FakeTask[] = [];
  readonly registry = new Map<string, Port>();
  /** Memory the backend may still point at: kept for the test process's life. */
  readonly retained: Uint8Array[] = [];
  readonly bootstrap: Port;
  /** Inline messages above this fail with MACH_SEND_TOO_LARGE. */
  maxInline = 64 * 1024 * 1024;
  /** Caps the queue limit a task may set (tests lower it to fill queues). */
  maxQueueLimit = QLIMIT_MAX;
  /** How often each modelled event happened, so tests can show a path ran. */
  readonly events = new Map<string, number>();
  #nextId = 1;
  #nextPid = 4000;

  /** Counts an event. */
  saw(event: string): void {
    this.events.set(event, (this.events.get(event) ?? 0) + 1);
  }

  constructor() {
    this.bootstrap = this.newPort("bootstrap");
  }

  newPort(kind: Port["kind"]): Port {
    const port = new Port(this.#nextId++, kind);
    this.ports.add(port);
    return port;
  }

  /** A new process; `uid` defaults to ours. */
  task(uid = 501): FakeTask {
    const task = new FakeTask(this, this.#nextPid++, uid);
    this.tasks.push(task);
    return task;
  }

  /** Whether anything holds or carries a send right to `port`. */
  hasSenders(port: Port): boolean {
    for (const task of this.tasks) {
      for (const e of task.entries.values()) {
        if (e.port === port && e.send > 0) return true;
      }
    }
    for (const p of this.ports) {
      for (const m of p.queue) {
        for (const item of m.items) {
          if (item.type === "port" && item.port === port) {
            if (item.right === "send") return true;
          }
        }
      }
    }
    for (const registered of this.registry.values()) {
      if (registered === port) return true;
    }
    return false;
  }

  /** Queues a kernel notification on `port` through a send-once right. */
  notify(port: Port, id: number, field?: number): void {
    if (port.dead) return;
    this.saw(`notify ${id.toString(8)}`);
    const tail = new Uint8Array(field === undefined ? 0 : 12);
    if (field !== undefined) {
      tail.set(NDR);
      new DataView(tail.buffer).setUint32(8, field, true);
    }
    port.queue.push({
      localType: PORT_SEND_ONCE,
      id,
      complex: false,
      items: [],
      tail,
      sender: undefined,
    });
  }

  /** Fires what the last call made due: no-senders, memory entries freed. */
  settle(): void {
    for (const port of this.ports) {
      if (port.dead) continue;
      if (port.noSendersArmed && !this.hasSenders(port)) {
        port.noSendersArmed = false;
        this.notify(port, NOTIFY_NO_SENDERS, port.mscount);
      }
      if (port.kind === "memory" && !this.hasSenders(port)) {
        port.dead = true;
        this.ports.delete(port);
      }
    }
  }

  /** A queue drained below its limit: fires its send-possible requests. */
  roomIn(port: Port): void {
    if (port.full || port.sendPossible.length === 0) return;
    for (const request of port.sendPossible.splice(0)) {
      this.notify(request.notify, NOTIFY_SEND_POSSIBLE, request.name);
    }
  }

  /** The port dies with everything queued on it. */
  destroy(port: Port): void {
    if (port.dead) return;
    port.dead = true;
    port.holder = undefined;
    port.noSendersArmed = false;
    port.memberOf?.members.delete(port);
    port.memberOf = undefined;
    for (const [name, registered] of this.registry) {
      if (registered === port) this.registry.delete(name);
    }
    const requests = port.sendPossible.splice(0);
    for (const task of this.tasks) {
      for (const [name, e] of task.entries) {
        if (e.port !== port) continue;
        e.dead += e.send + e.sendOnce;
        e.send = 0;
        e.sendOnce = 0;
        if (requests.some((r) => r.task === task && r.name === name)) e.dead++;
      }
    }
    for (const request of requests) {
      this.notify(request.notify, NOTIFY_DEAD_NAME, request.name);
    }
    const queue = port.queue;
    port.queue = [];
    for (const message of queue) this.destroyMessage(message);
    this.ports.delete(port);
  }

  /** `mach_msg_destroy` in the kernel: rights released, receive rights destroyed. */
  destroyMessage(message: KMessage): void {
    this.saw("message destroyed");
    for (const item of message.items) {
      if (item.type === "port" && item.right === "receive") {
        this.destroy(item.port);
      }
    }
  }

  /** Every message still queued anywhere. */
  queued(): number {
    let n = 0;
    for (const port of this.ports) n += port.queue.length;
    return n;
  }
}

/** Tracks readiness of a task's ports for the backend's poller. */
class FakePoller implements MachPoller {
  readonly #task: FakeTask;
  readonly #watches = new Map<number, { port: number; onReady(): void }>();
  #nextToken = 1;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #idle: (() => void)[] = [];

  constructor(task: FakeTask) {
    this.#task = task;
  }

  get watching(): number {
    return this.#watches.size;
  }

  watch(port: number, onReady: () => void): number {
    const token = this.#nextToken++;
    this.#watches.set(token, { port, onReady });
    this.#schedule();
    return token;
  }

  unwatch(_port: number, token: number): void {
    this.#watches.delete(token);
  }

  traffic(): void {}

  idle(): Promise<void> {
    if (this.#timer === undefined) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  #schedule(): void {
    if (this.#timer !== undefined) return;
    this.#timer = setTimeout(() => this.#tick(), 0);
  }

  #tick(): void {
    this.#timer = undefined;
    for (const [token, watch] of [...this.#watches]) {
      // Level-triggered, as EVFILT_MACHPORT without EV_CLEAR.
      if (this.#watches.has(token) && this.#task.readable(watch.port)) {
        watch.onReady();
      }
    }
    if (this.#watches.size > 0) this.#schedule();
    else for (const resolve of this.#idle.splice(0)) resolve();
  }
}

/** One process: its IPC space, its regions, and the host a backend runs over. */
export class FakeTask {
  readonly world: FakeWorld;
  readonly pid: number;
  readonly uid: number;
  readonly entries = new Map<number, FakeEntry>();
  /** Out-of-line regions the kernel mapped here, by address. */
  readonly regions = new Map<bigint, Uint8Array>();
  /** Calls made, by symbol. */
  readonly calls = new Map<string, number>();
  readonly poller: FakePoller;
  #nextName = 0x1103;
  readonly lib: MachLibrary;

  constructor(world: FakeWorld, pid: number, uid: number) {
    this.world = world;
    this.pid = pid;
    this.uid = uid;
    this.poller = new FakePoller(this);
    this.lib = this.#library();
  }

  /** The host to give `createMacBackend`. */
  host(): MachHost {
    return {
      lib: () => this.lib,
      task: () => TASK_SELF,
      errorString: (kr) => `fake kern_return_t 0x${(kr >>> 0).toString(16)}`,
      poller: this.poller,
    };
  }

  /** The name this space uses for `port`, if any. */
  nameOf(port: Port): number | undefined {
    for (const [name, e] of this.entries) {
      if (e.port === port && (e.receive || e.send > 0 || e.dead > 0)) {
        return name;
      }
    }
    return undefined;
  }

  /** The port behind `name`, for tests that act as the kernel or a peer. */
  portOf(name: number): Port | undefined {
    return this.entries.get(name)?.port;
  }

  /** Whether a receive on `name` (a receive right or port set) would get a message. */
  readable(name: number): boolean {
    return this.#source(name) !== undefined;
  }

  #source(name: number): Port | undefined {
    const e = this.entries.get(name);
    if (e === undefined) return undefined;
    if (e.portSet) {
      for (const member of e.port.members) {
        if (member.queue.length > 0) return member;
      }
      return undefined;
    }
    return e.receive && e.port.queue.length > 0 ? e.port : undefined;
  }

  #newName(): number {
    const name = this.#nextName;
    this.#nextName += 0x100;
    return name;
  }

  /** Puts a right to `port` in this space, as a copyout does. */
  insert(port: Port, right: "receive" | "send" | "send-once"): number {
    if (port.dead && right !== "receive") {
      throw new Error("fake mach: a right to a dead port arrived (unmodelled)");
    }
    let name = right === "send-once" ? undefined : this.nameOf(port);
    if (name === undefined) {
      name = this.#newName();
      this.entries.set(name, {
        port,
        receive: false,
        portSet: false,
        send: 0,
        sendOnce: 0,
        dead: 0,
      });
    }
    const e = this.entries.get(name)!;
    if (right === "receive") {
      e.receive = true;
      port.holder = this;
    } else if (right === "send") e.send++;
    else e.sendOnce++;
    return name;
  }

  #settle(name: number): void {
    const e = this.entries.get(name);
    if (
      e !== undefined && !e.receive && !e.portSet &&
      e.send + e.sendOnce + e.dead === 0
    ) {
      this.entries.delete(name);
    }
  }

  #count(symbol: string): void {
    this.calls.set(symbol, (this.calls.get(symbol) ?? 0) + 1);
  }

  #task(task: number): void {
    if (task !== TASK_SELF) throw new Error(`fake mach: task ${task}`);
  }

  /** The calls, each checking its arguments as the kernel would. */
  #library(): MachLibrary {
    const world = this.world;
    const call = <A extends unknown[], R>(
      symbol: string,
      fn: (...args: A) => R,
    ) =>
    (...args: A): R => {
      this.#count(symbol);
      const result = fn(...args);
      world.settle();
      return result;
    };
    return {
      mach_msg: call("mach_msg", (buf, option, sendSize, rcvSize, rcvName) => {
        const bytes = bytesOf(buf);
        if (option & MACH_SEND_MSG) {
          const kr = this.#send(bytes, sendSize, option);
          if (kr !== KERN_SUCCESS) return kr;
        }
        if (option & MACH_RCV_MSG) {
          return this.#receive(bytes, rcvSize, rcvName, option);
        }
        return KERN_SUCCESS;
      }),
      mach_port_allocate: call("mach_port_allocate", (task, right, out) => {
        this.#task(task);
        if (right !== RIGHT_RECEIVE && right !== RIGHT_PORT_SET) {
          return KERN_INVALID_VALUE;
        }
        const port = world.newPort(right === RIGHT_RECEIVE ? "port" : "set");
        const name = this.#newName();
        this.entries.set(name, {
          port,
          receive: right === RIGHT_RECEIVE,
          portSet: right === RIGHT_PORT_SET,
          send: 0,
          sendOnce: 0,
          dead: 0,
        });
        if (right === RIGHT_RECEIVE) port.holder = this;
        u32(out, name);
        return KERN_SUCCESS;
      }),
      mach_port_insert_right: call(
        "mach_port_insert_right",
        (task, name, poly, polyPoly) => {
          this.#task(task);
          const e = this.entries.get(name);
          if (e === undefined) return KERN_INVALID_NAME;
          if (name !== poly || polyPoly !== MAKE_SEND || !e.receive) {
            return KERN_INVALID_RIGHT;
          }
          e.send++;
          e.port.mscount++;
          return KERN_SUCCESS;
        },
      ),
      mach_port_deallocate: call("mach_port_deallocate", (task, name) => {
        this.#task(task);
        const e = this.entries.get(name);
        if (e === undefined) return KERN_INVALID_NAME;
        if (e.send > 0) e.send--;
        else if (e.dead > 0) e.dead--;
        else if (e.sendOnce > 0) {
          e.sendOnce--;
          world.notify(e.port, NOTIFY_SEND_ONCE);
        } else return KERN_INVALID_RIGHT;
        this.#settle(name);
        return KERN_SUCCESS;
      }),
      mach_port_mod_refs: call(
        "mach_port_mod_refs",
        (task, name, right, delta) => {
          this.#task(task);
          const e = this.entries.get(name);
          if (e === undefined) return KERN_INVALID_NAME;
          if (right === RIGHT_RECEIVE) {
            if (!e.receive || delta !== -1) return KERN_INVALID_RIGHT;
            e.receive = false;
            world.destroy(e.port);
          } else if (right === RIGHT_PORT_SET) {
            if (!e.portSet || delta !== -1) return KERN_INVALID_RIGHT;
            e.portSet = false;
            for (const member of e.port.members) member.memberOf = undefined;
            e.port.members.clear();
            world.ports.delete(e.port);
          } else if (right === RIGHT_SEND) {
            if (e.send === 0 || e.send + delta < 0) return KERN_INVALID_RIGHT;
            e.send += delta;
          } else if (right === RIGHT_DEAD_NAME) {
            if (e.dead === 0 || e.dead + delta < 0) return KERN_INVALID_RIGHT;
            e.dead += delta;
          } else return KERN_INVALID_VALUE;
          this.#settle(name);
          return KERN_SUCCESS;
        },
      ),
      mach_port_request_notification: call(
        "mach_port_request_notification",
        (task, name, variant, sync, notify, notifyPoly, previous) => {
          this.#task(task);
          const e = this.entries.get(name);
          const n = this.entries.get(notify);
          if (e === undefined || n === undefined) return KERN_INVALID_NAME;
          if (notifyPoly !== MAKE_SEND_ONCE || !n.receive) {
            return KERN_INVALID_RIGHT;
          }
          if (variant === NOTIFY_NO_SENDERS) {
            if (!e.receive) return KERN_INVALID_RIGHT;
            if (notify !== name) {
              throw new Error("fake mach: no-senders elsewhere (unmodelled)");
            }
            const had = e.port.noSendersArmed;
            e.port.noSendersArmed = true;
            u32(previous, had ? this.insert(e.port, "send-once") : 0);
            if (e.port.mscount >= sync && !world.hasSenders(e.port)) {
              e.port.noSendersArmed = false;
              world.notify(e.port, NOTIFY_NO_SENDERS, e.port.mscount);
            }
            return KERN_SUCCESS;
          }
          if (variant === NOTIFY_SEND_POSSIBLE) {
            if (e.send === 0) return KERN_INVALID_RIGHT;
            const port = e.port;
            const old = port.sendPossible.findIndex((r) =>
              r.task === this && r.name === name
            );
            let prior = 0;
            if (old >= 0) {
              prior = this.insert(port.sendPossible[old].notify, "send-once");
              port.sendPossible.splice(old, 1);
            }
            u32(previous, prior);
            if (sync !== 0 && !port.full) {
              world.notify(n.port, NOTIFY_SEND_POSSIBLE, name);
            } else {
              port.sendPossible.push({ task: this, name, notify: n.port });
            }
            return KERN_SUCCESS;
          }
          return KERN_INVALID_VALUE;
        },
      ),
      mach_port_set_attributes: call(
        "mach_port_set_attributes",
        (task, name, flavor, info, count) => {
          this.#task(task);
          const e = this.entries.get(name);
          if (e === undefined) return KERN_INVALID_NAME;
          if (!e.receive) return KERN_INVALID_RIGHT;
          if (flavor !== LIMITS_INFO || count !== 1) return KERN_INVALID_VALUE;
          const b = bytesOf(info);
          const limit = new DataView(b.buffer, b.byteOffset).getUint32(0, true);
          if (limit > QLIMIT_MAX) return KERN_INVALID_VALUE;
          e.port.qlimit = Math.min(limit, world.maxQueueLimit);
          return KERN_SUCCESS;
        },
      ),
      mach_port_insert_member: call(
        "mach_port_insert_member",
        (task, name, set) => {
          this.#task(task);
          const e = this.entries.get(name);
          const s = this.entries.get(set);
          if (e === undefined || s === undefined) return KERN_INVALID_NAME;
          if (!e.receive || !s.portSet) return KERN_INVALID_RIGHT;
          if (e.port.memberOf !== undefined) return KERN_INVALID_ARGUMENT;
          e.port.memberOf = s.port;
          s.port.members.add(e.port);
          return KERN_SUCCESS;
        },
      ),
      mach_port_extract_member: call(
        "mach_port_extract_member",
        (task, name, set) => {
          this.#task(task);
          const e = this.entries.get(name);
          const s = this.entries.get(set);
          if (e === undefined || s === undefined) return KERN_INVALID_NAME;
          if (e.port.memberOf !== s.port) return KERN_NOT_IN_SET;
          e.port.memberOf = undefined;
          s.port.members.delete(e.port);
          return KERN_SUCCESS;
        },
      ),
      task_get_special_port: call(
        "task_get_special_port",
        (task, which, out) => {
          this.#task(task);
          if (which !== TASK_BOOTSTRAP_PORT) return KERN_INVALID_ARGUMENT;
          u32(out, this.insert(world.bootstrap, "send"));
          return KERN_SUCCESS;
        },
      ),
      bootstrap_register2: call(
        "bootstrap_register2",
        (bp, serviceName, port, flags) => {
          if (this.entries.get(bp)?.port !== world.bootstrap) {
            return KERN_INVALID_TASK;
          }
          if (BigInt(flags) !== 0n) return KERN_INVALID_ARGUMENT;
          const name = cString(serviceName);
          const e = this.entries.get(port);
          if (e === undefined || e.send === 0) return KERN_INVALID_RIGHT;
          const existing = world.registry.get(name);
          if (existing !== undefined && !existing.dead) {
            return BOOTSTRAP_NAME_IN_USE;
          }
          world.registry.set(name, e.port);
          return KERN_SUCCESS;
        },
      ),
      bootstrap_look_up: call(
        "bootstrap_look_up",
        (bp, serviceName, out) => {
          if (this.entries.get(bp)?.port !== world.bootstrap) {
            return KERN_INVALID_TASK;
          }
          const port = world.registry.get(cString(serviceName));
          if (port === undefined || port.dead) return BOOTSTRAP_UNKNOWN_SERVICE;
          u32(out, this.insert(port, "send"));
          return KERN_SUCCESS;
        },
      ),
      mach_make_memory_entry_64: call(
        "mach_make_memory_entry_64",
        (task, size, _offset, permission, handle, parent) => {
          this.#task(task);
          if (!(permission & MAP_MEM_NAMED_CREATE) || parent !== 0) {
            return KERN_INVALID_ARGUMENT;
          }
          const s = bytesOf(size);
          const length = new DataView(s.buffer, s.byteOffset).getBigUint64(
            0,
            true,
          );
          const port = world.newPort("memory");
          port.memory = new Uint8Array(Number(length));
          world.retained.push(port.memory);
          u32(handle, this.insert(port, "send"));
          return KERN_SUCCESS;
        },
      ),
      mach_vm_map: call(
        "mach_vm_map",
        (task, address, size, _mask, _flags, object, _offset, copy) => {
          this.#task(task);
          const e = this.entries.get(object);
          if (e === undefined || e.send === 0 || e.port.kind !== "memory") {
            return KERN_INVALID_RIGHT;
          }
          if (copy !== 0 || BigInt(size) > BigInt(e.port.memory!.length)) {
            return KERN_INVALID_ARGUMENT;
          }
          const a = bytesOf(address);
          new DataView(a.buffer, a.byteOffset).setBigUint64(
            0,
            addressOf(e.port.memory!),
            true,
          );
          return KERN_SUCCESS;
        },
      ),
      mach_vm_deallocate: call("mach_vm_deallocate", (task, address, size) => {
        this.#task(task);
        const region = this.regions.get(BigInt(address));
        if (region === undefined || region.length !== Number(size)) {
          return KERN_INVALID_ADDRESS;
        }
        this.regions.delete(BigInt(address));
        return KERN_SUCCESS;
      }),
      // The backend replaces collected mappings in place; nothing to do here.
      mmap: call("mmap", (address) => address),
      getpid: call("getpid", () => this.pid),
      getuid: call("getuid", () => this.uid),
    };
  }

  /** Copy-in, then queue (or pseudo-receive on a full queue). */
  #send(bytes: Uint8Array, sendSize: number, option: number): number {
    const view = new DataView(bytes.buffer, bytes.byteOffset);
    const bits = view.getUint32(0, true);
    const size = view.getUint32(4, true);
    if (size !== sendSize || size % 4 !== 0 || size < 24) {
      throw new Error(`fake mach: send_size ${sendSize}, msgh_size ${size}`);
    }
    if ((bits & 0x1f00) !== 0 || view.getUint32(12, true) !== 0) {
      throw new Error("fake mach: a reply port (unmodelled)");
    }
    if ((bits & 0x1f) !== COPY_SEND) {
      throw new Error(`fake mach: remote disposition ${bits & 0x1f}`);
    }
    const destName = view.getUint32(8, true);
    const dest = this.entries.get(destName);
    if (dest === undefined || dest.send === 0 || dest.port.dead) {
      return MACH_SEND_INVALID_DEST;
    }
    const complex = (bits & MSGH_BITS_COMPLEX) !== 0;
    // Descriptors, checked before any right moves.
    const wanted: (
      | { type: "port"; name: number; disposition: number }
      | { type: "ool"; address: bigint; length: number; copy: number }
    )[] = [];
    let at = 24;
    if (complex) {
      const count = view.getUint32(at, true);
      at += 4;
      for (let i = 0; i < count; i++) {
        const type = view.getUint8(at + 11);
        if (type === PORT_DESCRIPTOR) {
          wanted.push({
            type: "port",
            name: view.getUint32(at, true),
            disposition: view.getUint8(at + 10),
          });
          at += 12;
        } else if (type === OOL_DESCRIPTOR) {
          if (view.getUint8(at + 8) !== 0) {
            throw new Error("fake mach: deallocate on send (unmodelled)");
          }
          wanted.push({
            type: "ool",
            address: view.getBigUint64(at, true),
            copy: view.getUint8(at + 9),
            length: view.getUint32(at + 12, true),
          });
          at += 16;
        } else throw new Error(`fake mach: descriptor type ${type}`);
      }
    }
    if (!wanted.some((w) => w.type === "ool") && size > this.world.maxInline) {
      this.world.saw("too large");
      return MACH_SEND_TOO_LARGE;
    }
    const moved = new Map<number, number>();
    for (const w of wanted) {
      if (w.type !== "port") continue;
      const e = this.entries.get(w.name);
      const taken = moved.get(w.name) ?? 0;
      const ok = e !== undefined && (
        w.disposition === MOVE_RECEIVE
          ? e.receive
          : w.disposition === MOVE_SEND
          ? e.send > taken
          : w.disposition === COPY_SEND && e.send > 0
      );
      if (!ok) return MACH_SEND_INVALID_RIGHT;
      if (w.disposition === MOVE_SEND) moved.set(w.name, taken + 1);
    }
    const items: Item[] = wanted.map((w) => {
      if (w.type === "ool") {
        const data = new Uint8Array(w.length);
        if (w.length > 0) {
          const pointer = Deno.UnsafePointer.create(w.address);
          new Deno.UnsafePointerView(pointer!).copyInto(data);
        }
        return { type: "ool", data, copy: w.copy };
      }
      const e = this.entries.get(w.name)!;
      const port = e.port;
      if (w.disposition === MOVE_RECEIVE) {
        e.receive = false;
        port.holder = undefined;
        port.memberOf?.members.delete(port);
        port.memberOf = undefined;
        this.#settle(w.name);
        return { type: "port", port, right: "receive" };
      }
      if (w.disposition === MOVE_SEND) {
        e.send--;
        this.#settle(w.name);
      }
      return { type: "port", port, right: "send" };
    });
    const message: KMessage = {
      localType: MOVE_SEND, // PORT_SEND: what COPY_SEND of the destination became
      id: view.getInt32(20, true),
      complex,
      items,
      tail: bytes.slice(at, size),
      sender: this,
    };
    const port = dest.port;
    if (port.full) {
      if (!(option & MACH_SEND_TIMEOUT)) {
        throw new Error("fake mach: a blocking send to a full queue");
      }
      // ipc_kmsg_copyout_pseudo: the rights and the destination's copied
      // send right come back; remote keeps the destination.
      this.#copyOut(bytes, message, destName, true);
      this.world.saw("pseudo-receive");
      return MACH_SEND_TIMED_OUT;
    }
    port.queue.push(message);
    return KERN_SUCCESS;
  }

  #receive(
    bytes: Uint8Array,
    rcvSize: number,
    rcvName: number,
    option: number,
  ): number {
    const e = this.entries.get(rcvName);
    if (e === undefined || (!e.receive && !e.portSet)) {
      return MACH_RCV_INVALID_NAME;
    }
    const port = this.#source(rcvName);
    if (port === undefined) {
      if (option & MACH_RCV_TIMEOUT) return MACH_RCV_TIMED_OUT;
      throw new Error("fake mach: a receive that would block forever");
    }
    const message = port.queue[0];
    const trailer = ((option >>> 24) & 0xf) >= 3 ? 52 : 8;
    const size = sizeOf(message);
    if (size + trailer > rcvSize || size + trailer > bytes.length) {
      if (!(option & MACH_RCV_LARGE)) {
        throw new Error("fake mach: a too-large receive without LARGE");
      }
      new DataView(bytes.buffer, bytes.byteOffset).setUint32(4, size, true);
      return MACH_RCV_TOO_LARGE;
    }
    port.queue.shift();
    this.world.roomIn(port);
    const local = this.nameOf(port)!;
    this.#copyOut(bytes, message, local, false);
    // The trailer: type, size, seqno, security token (uid, gid), audit token.
    const view = new DataView(bytes.buffer, bytes.byteOffset);
    const at = round4(size);
    bytes.fill(0, at, at + trailer);
    view.setUint32(at + 4, trailer, true);
    const uid = message.sender?.uid ?? 0;
    const pid = message.sender?.pid ?? 0;
    if (trailer >= 20) {
      view.setUint32(at + 12, uid, true);
      view.setUint32(at + 16, 20, true);
    }
    if (trailer === 52) {
      view.setUint32(at + 20 + 4 * 1, uid, true);
      view.setUint32(at + 20 + 4 * 2, 20, true);
      view.setInt32(at + 20 + 4 * 5, pid, true);
    }
    return KERN_SUCCESS;
  }

  /** Writes `message` into `bytes` with its rights and regions now in this space. */
  #copyOut(
    bytes: Uint8Array,
    message: KMessage,
    header: number,
    pseudo: boolean,
  ): void {
    const view = new DataView(bytes.buffer, bytes.byteOffset);
    const size = sizeOf(message);
    let bits = message.complex ? MSGH_BITS_COMPLEX : 0;
    if (pseudo) {
      // The send right the COPY_SEND made comes back (+1 reference).
      this.entries.get(header)!.send++;
      bits |= MOVE_SEND;
      view.setUint32(8, header, true);
      view.setUint32(12, 0, true);
    } else {
      bits |= message.localType << 8;
      view.setUint32(8, 0, true);
      view.setUint32(12, header, true);
    }
    view.setUint32(0, bits >>> 0, true);
    view.setUint32(4, size, true);
    view.setUint32(16, 0, true);
    view.setInt32(20, message.id, true);
    let at = 24;
    if (message.complex) {
      view.setUint32(at, message.items.length, true);
      at += 4;
      for (const item of message.items) {
        if (item.type === "port") {
          const name = item.port.dead && item.right === "send"
            ? MACH_PORT_DEAD
            : this.insert(item.port, item.right);
          if (name === MACH_PORT_DEAD) {
            throw new Error("fake mach: a dead send right copied out");
          }
          view.setUint32(at, name, true);
          view.setUint32(at + 4, 0, true);
          view.setUint16(at + 8, 0, true);
          view.setUint8(at + 10, item.right === "receive" ? 16 : 17);
          view.setUint8(at + 11, PORT_DESCRIPTOR);
          at += 12;
        } else {
          let address = 0n;
          if (item.data.length > 0) {
            const region = item.data.slice();
            address = addressOf(region);
            this.regions.set(address, region);
          }
          view.setBigUint64(at, address, true);
          view.setUint8(at + 8, 0);
          view.setUint8(at + 9, item.copy);
          view.setUint8(at + 10, 0);
          view.setUint8(at + 11, OOL_DESCRIPTOR);
          view.setUint32(at + 12, item.data.length, true);
          at += 16;
        }
      }
    }
    bytes.set(message.tail, at);
  }
}

function round4(n: number): number {
  return (n + 3) & ~3;
}

function sizeOf(message: KMessage): number {
  let size = 24;
  if (message.complex) {
    size += 4;
    for (const item of message.items) size += item.type === "port" ? 12 : 16;
  }
  return size + message.tail.length;
}
