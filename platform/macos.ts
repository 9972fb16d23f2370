/**
 * macOS backend: Mach ports through libSystem. Implemented to the same
 * {@linkcode OsPlatform} contract as the Linux backend; NOT YET RUN ON A MAC
 * (the byte layouts and the rights bookkeeping are unit-tested on Linux, see
 * platform/macos_msg.ts and platform/macos_rights.ts, and this file's code
 * runs on Linux over a simulated kernel through {@linkcode createMacBackend},
 * see tests/macos_backend_test.ts).
 *
 * - **Channel.** A port with its receive right and one send right under the
 *   same name, its queue limit raised to `MACH_PORT_QLIMIT_LARGE` (1024), and
 *   a `MACH_NOTIFY_NO_SENDERS` request on itself: that notification, queued
 *   behind every message, is the end of the stream ("Disconnected").
 * - **Send never blocks.** `mach_msg(MACH_SEND_TIMEOUT, 0)`; on
 *   `MACH_SEND_TIMED_OUT` (queue full) the message waits in user space and a
 *   `MACH_NOTIFY_SEND_POSSIBLE` request on the destination tells us when to
 *   flush (receives in this process flush too). A timed-out send is
 *   pseudo-received by the kernel: its rights and out-of-line memory come back
 *   into the buffer, and are put back where they were before queueing.
 * - **Handles.** Senders and shared memory travel as `COPY_SEND` (they stay
 *   usable, as on Linux), receivers as `MOVE_RECEIVE`. Queued messages own
 *   their rights (a reference per sender) and move them (`MOVE_SEND`).
 * - **Large bodies** go out of line (`VIRTUAL_COPY`) past 60 KiB, or when the
 *   kernel says `MACH_SEND_TOO_LARGE`; small ones stay inline (#199: OOL
 *   costs small messages about 60%). The receiver copies the region out and
 *   `vm_deallocate`s it.
 * - **Servers.** A listening port registered with `bootstrap_register2` under
 *   `org.deno.ipc-channel.<pid>.<random>`. `connect(name)` looks it up, makes
 *   a fresh channel and moves that channel's receive right to the listener in
 *   a connect message; `accept` receives it with an audit trailer, which gives
 *   the client's pid, uid and gid. So each client gets its own channel, as on
 *   Linux, although every client reaches the same bootstrap port (#378).
 * - **Shared memory** is live: a named memory entry
 *   (`mach_make_memory_entry_64(MAP_MEM_NAMED_CREATE)`) mapped shared with
 *   `mach_vm_map(copy=FALSE)` in every process, not the Rust crate's
 *   copy-on-write snapshot. Its length travels in our frame; the kernel
 *   refuses to map more than the entry holds.
 * - **Waiting.** One kqueue (platform/kqueue.ts) with `EVFILT_MACHPORT`, as
 *   epoll on Linux. Receiver sets are port sets.
 *
 * @module
 */

import { MappedRegion } from "./shared_memory.ts";
import {
  BOOTSTRAP_NAME_IN_USE,
  BOOTSTRAP_UNKNOWN_SERVICE,
  cString,
  KERN_INVALID_RIGHT,
  KERN_SUCCESS,
  libSystem,
  MACH_PORT_LIMITS_INFO,
  MACH_PORT_LIMITS_INFO_COUNT,
  MACH_PORT_QLIMIT_LARGE,
  MACH_PORT_RIGHT_DEAD_NAME,
  MACH_PORT_RIGHT_PORT_SET,
  MACH_PORT_RIGHT_RECEIVE,
  MACH_PORT_RIGHT_SEND,
  machErrorString,
  MAP_ANON,
  MAP_FIXED,
  MAP_MEM_NAMED_CREATE,
  MAP_NORESERVE,
  MAP_PRIVATE,
  PROT_READ,
  PROT_WRITE,
  takeEnv,
  TASK_BOOTSTRAP_PORT,
  taskSelf,
  VM_FLAGS_ANYWHERE,
  VM_INHERIT_NONE,
  VM_PROT_READ,
  VM_PROT_WRITE,
} from "../ffi/libSystem.ts";
import { poller as kqueuePoller } from "./kqueue.ts";
import {
  buildMessage,
  decodeFrame,
  HANDLE_RECEIVER,
  HANDLE_SENDER,
  HANDLE_SHARED_MEMORY,
  type HandleKind,
  type IncomingPort,
  MACH_MSG_TYPE_COPY_SEND,
  MACH_MSG_TYPE_MAKE_SEND,
  MACH_MSG_TYPE_MAKE_SEND_ONCE,
  MACH_MSG_TYPE_MOVE_RECEIVE,
  MACH_MSG_TYPE_MOVE_SEND,
  MACH_MSG_TYPE_PORT_RECEIVE,
  MACH_NOTIFY_NO_SENDERS,
  MACH_NOTIFY_SEND_POSSIBLE,
  MACH_RCV_INTERRUPTED,
  MACH_RCV_TIMED_OUT,
  MACH_RCV_TOO_LARGE,
  MACH_SEND_INTERRUPTED,
  MACH_SEND_INVALID_DEST,
  MACH_SEND_MSG,
  MACH_SEND_TIMED_OUT,
  MACH_SEND_TIMEOUT,
  MACH_SEND_TOO_LARGE,
  MalformedMessage,
  messageSize,
  MSG_ID_CONNECT,
  MSG_ID_DATA,
  type OutgoingPort,
  parseAuditTrailer,
  type ParsedMessage,
  parseMessage,
  parseNotification,
  receiveOptions,
  resourcesOf,
  sizeNeeded,
  viaSendOnce,
  wasPseudoReceived,
} from "./macos_msg.ts";
import {
  MachRights,
  type NameRights,
  type PortKernel,
  type ReceivedResources,
} from "./macos_rights.ts";
import {
  IpcError,
  type OsAccepted,
  type OsIncomingHandle,
  type OsMessage,
  type OsPlatform,
  type OsReceiver,
  type OsReceiverSet,
  type OsSelection,
  type OsSender,
  type OsServer,
  type OsSharedMemory,
  type OsTransferable,
  type OsWaitOptions,
  type PeerCredentials,
} from "./types.ts";
import { Waiters } from "./waiters.ts";

/** Endpoints one message may carry (the Linux backend's cap, for parity). */
export const MAX_HANDLES = 252;
/** Bodies above this go out of line. */
const INLINE_LIMIT = 60 * 1024;
/** mach_msg_size_t caps an out-of-line region. */
const MAX_BODY = 0xffff_ffff;
/** Receive buffer to start with: our largest inline message fits. */
const RECEIVE_BUFFER = 64 * 1024 + 4096;
/** Page size to round shared memory to (arm64's 16 KiB covers x86_64's 4). */
const PAGE = 16384;
const MAX_SHARED_MEMORY = 2 ** 40;
/** A bootstrap name prefix, after the crate's "org.rust-lang.ipc-channel.". */
export const BOOTSTRAP_PREFIX = "org.deno.ipc-channel.";

// ---------------------------------------------------------------------------
// Errors.

const KERN_NAMES: Record<number, string> = {
  1: "KERN_INVALID_ADDRESS",
  3: "KERN_NO_SPACE",
  4: "KERN_INVALID_ARGUMENT",
  5: "KERN_FAILURE",
  6: "KERN_RESOURCE_SHORTAGE",
  15: "KERN_INVALID_NAME",
  17: "KERN_INVALID_RIGHT",
  18: "KERN_INVALID_VALUE",
  19: "KERN_UREFS_OVERFLOW",
  1100: "BOOTSTRAP_NOT_PRIVILEGED",
  1101: "BOOTSTRAP_NAME_IN_USE",
  1102: "BOOTSTRAP_UNKNOWN_SERVICE",
  0x10000003: "MACH_SEND_INVALID_DEST",
  0x10000004: "MACH_SEND_TIMED_OUT",
  0x1000000a: "MACH_SEND_INVALID_RIGHT",
  0x1000000d: "MACH_SEND_NO_BUFFER",
  0x1000000e: "MACH_SEND_TOO_LARGE",
};

function malformed(what: string, cause?: unknown): IpcError {
  return new IpcError("Io", `malformed message from peer: ${what}`, {
    code: "EPROTO",
    cause,
  });
}

function disconnectedSender(): IpcError {
  return new IpcError("Disconnected", "the receiver is gone");
}

function disconnectedReceiver(): IpcError {
  return new IpcError("Disconnected", "every sender is gone");
}

// ---------------------------------------------------------------------------
// The seam: what a backend instance runs over.

/**
 * The libSystem calls the backend makes, with ffi/libSystem.ts's names and
 * signatures. On a Mac it is libSystem itself; tests on any OS pass a
 * simulated kernel (tests/fake_mach.ts), so that the rights checks see the
 * backend's own calls rather than a replay of them written by hand.
 */
export type MachLibrary = Pick<
  ReturnType<typeof libSystem>,
  | "mach_msg"
  | "mach_port_allocate"
  | "mach_port_insert_right"
  | "mach_port_deallocate"
  | "mach_port_mod_refs"
  | "mach_port_request_notification"
  | "mach_port_set_attributes"
  | "mach_port_insert_member"
  | "mach_port_extract_member"
  | "task_get_special_port"
  | "bootstrap_register2"
  | "bootstrap_look_up"
  | "mach_make_memory_entry_64"
  | "mach_vm_map"
  | "mach_vm_deallocate"
  | "mmap"
  | "getpid"
  | "getuid"
>;

/** Tells the backend when a port or port set has messages (platform/kqueue.ts). */
export interface MachPoller {
  /** Calls `onReady` while `port` has messages; returns a token for `unwatch`. */
  watch(port: number, onReady: () => void): number;
  /** Ends a watch, before the right is destroyed or moved. */
  unwatch(port: number, token: number): void;
  /** A message just moved (the kqueue poller spins a little after one). */
  traffic(): void;
  /** Resolves once nothing is watched. */
  idle(): Promise<void>;
}

/** What one backend instance runs over: one task's view of a Mach kernel. */
export interface MachHost {
  /** The library; called at each use, so that opening libSystem stays lazy. */
  lib(): MachLibrary;
  /** `mach_task_self()`. */
  task(): number;
  /** `mach_error_string(kr)`, for error messages. */
  errorString(kr: number): string;
  /** The waiter for readable ports. */
  poller: MachPoller;
}

/** One backend instance: its platform object and its own bookkeeping. */
export interface MacBackend {
  /** The {@linkcode OsPlatform} over this instance's host. */
  platform: OsPlatform;
  /** Every right this instance holds, through the calls it made. */
  rights: MachRights;
  /** Resolves once this instance's poller is idle. */
  settled(): Promise<void>;
}

/**
 * A backend over `host`. The process's backend ({@linkcode macos}) is the
 * one over libSystem and the kqueue poller; each instance has its own
 * buffers, queues and ledger, as a separate process would.
 */
export function createMacBackend(host: MachHost): MacBackend {
  const sys = (): MachLibrary => host.lib();
  const task = (): number => host.task();
  const poller = host.poller;

  /** An "Io" error for `call` returning `kr`. */
  function machError(call: string, kr: number): IpcError {
    const code = KERN_NAMES[kr] ?? `0x${(kr >>> 0).toString(16)}`;
    let advice = "";
    if (kr === 3 || kr === 6) {
      advice =
        " (out of Mach port names or kernel memory: close endpoints you no longer use)";
    }
    return new IpcError(
      "Io",
      `${call} failed: ${host.errorString(kr)} [${code}]${advice}`,
      { code },
    );
  }

  function check(call: string, kr: number): void {
    if (kr !== KERN_SUCCESS) throw machError(call, kr);
  }

  // ---------------------------------------------------------------------------
  // The kernel calls behind MachRights.

  const u32Out = new Uint32Array(1);
  const u32OutBytes = new Uint8Array(u32Out.buffer);

  const kernel: PortKernel = {
    allocate(right) {
      const kr = sys().mach_port_allocate(
        task(),
        right === "receive"
          ? MACH_PORT_RIGHT_RECEIVE
          : MACH_PORT_RIGHT_PORT_SET,
        u32OutBytes,
      );
      check("mach_port_allocate", kr);
      return u32Out[0];
    },
    makeSend(name) {
      check(
        "mach_port_insert_right",
        sys().mach_port_insert_right(
          task(),
          name,
          name,
          MACH_MSG_TYPE_MAKE_SEND,
        ),
      );
    },
    addReference(name) {
      const lib = sys();
      let kr = lib.mach_port_mod_refs(task(), name, MACH_PORT_RIGHT_SEND, 1);
      if (kr === KERN_INVALID_RIGHT) {
        // The port died: our references are a dead name now.
        kr = lib.mach_port_mod_refs(
          task(),
          name,
          MACH_PORT_RIGHT_DEAD_NAME,
          1,
        );
      }
      check("mach_port_mod_refs(+1)", kr);
    },
    deallocate(name) {
      check(
        "mach_port_deallocate",
        sys().mach_port_deallocate(task(), name),
      );
    },
    destroyReceive(name) {
      check(
        "mach_port_mod_refs(RECEIVE, -1)",
        sys().mach_port_mod_refs(
          task(),
          name,
          MACH_PORT_RIGHT_RECEIVE,
          -1,
        ),
      );
    },
    destroyPortSet(name) {
      check(
        "mach_port_mod_refs(PORT_SET, -1)",
        sys().mach_port_mod_refs(
          task(),
          name,
          MACH_PORT_RIGHT_PORT_SET,
          -1,
        ),
      );
    },
    insertMember(name, set) {
      check(
        "mach_port_insert_member",
        sys().mach_port_insert_member(task(), name, set),
      );
    },
    extractMember(name, set) {
      check(
        "mach_port_extract_member",
        sys().mach_port_extract_member(task(), name, set),
      );
    },
    requestNoSenders(name) {
      const kr = sys().mach_port_request_notification(
        task(),
        name,
        MACH_NOTIFY_NO_SENDERS,
        0,
        name,
        MACH_MSG_TYPE_MAKE_SEND_ONCE,
        u32OutBytes,
      );
      check("mach_port_request_notification(NO_SENDERS)", kr);
      return u32Out[0];
    },
    requestSendPossible(name, notify) {
      const kr = sys().mach_port_request_notification(
        task(),
        name,
        MACH_NOTIFY_SEND_POSSIBLE,
        1,
        notify,
        MACH_MSG_TYPE_MAKE_SEND_ONCE,
        u32OutBytes,
      );
      check("mach_port_request_notification(SEND_POSSIBLE)", kr);
      return u32Out[0];
    },
    vmDeallocate(address, length) {
      check(
        "mach_vm_deallocate",
        sys().mach_vm_deallocate(task(), address, BigInt(length)),
      );
    },
  };

  const rights = new MachRights(kernel);

  /**
   * Rights and out-of-line regions this process holds through the backend,
   * beyond the process-lifetime ones (bootstrap and notification ports).
   * After every endpoint is closed it should be empty: a test hook.
   */

  let bootstrap = 0;

  /** Our bootstrap port (a send right held for the life of the process). */
  function bootstrapPort(): number {
    if (bootstrap !== 0) return bootstrap;
    const kr = sys().task_get_special_port(
      task(),
      TASK_BOOTSTRAP_PORT,
      u32OutBytes,
    );
    check("task_get_special_port(BOOTSTRAP)", kr);
    bootstrap = u32Out[0];
    rights.ledger.received(bootstrap, 17);
    rights.ledger.pin(bootstrap);
    return bootstrap;
  }

  function setQueueLimit(name: number): void {
    const limits = new Uint32Array([MACH_PORT_QLIMIT_LARGE]);
    // Best effort: the default limit (5) only means more user-space queueing.
    sys().mach_port_set_attributes(
      task(),
      name,
      MACH_PORT_LIMITS_INFO,
      new Uint8Array(limits.buffer),
      MACH_PORT_LIMITS_INFO_COUNT,
    );
  }

  function newChannelPort(): number {
    const name = rights.newChannel();
    setQueueLimit(name);
    return name;
  }

  // ---------------------------------------------------------------------------
  // Receiving.

  let receiveBuffer = new Uint8Array(RECEIVE_BUFFER);

  /**
   * Receives one message from `port` (a receive right or port set) into the
   * shared buffer. `timeoutMs` undefined blocks. Returns the bytes, or
   * undefined when none arrived in time.
   */
  function receiveRaw(
    port: number,
    timeoutMs: number | undefined,
    audit = false,
  ): Uint8Array | undefined {
    const lib = sys();
    for (;;) {
      const kr = lib.mach_msg(
        receiveBuffer,
        receiveOptions(timeoutMs !== undefined, audit),
        0,
        receiveBuffer.length,
        port,
        timeoutMs ?? 0,
        0,
      );
      if (kr === KERN_SUCCESS) return receiveBuffer;
      if (kr === MACH_RCV_TIMED_OUT) return undefined;
      if (kr === MACH_RCV_INTERRUPTED) continue;
      if (kr === MACH_RCV_TOO_LARGE) {
        // MACH_RCV_LARGE left it queued; msgh_size says how much room it needs.
        receiveBuffer = new Uint8Array(sizeNeeded(receiveBuffer));
        continue;
      }
      throw machError("mach_msg(receive)", kr);
    }
  }

  /** Copies an out-of-line region into the JS heap and releases it. */
  function copyRegion(region: { address: bigint; length: number }): Uint8Array {
    const data = new Uint8Array(region.length);
    if (region.length > 0) {
      const pointer = Deno.UnsafePointer.create(region.address);
      new Deno.UnsafePointerView(pointer!).copyInto(data);
    }
    return data;
  }

  type Interpreted =
    | { type: "message"; message: OsMessage }
    | { type: "closed" }
    | { type: "skip" };

  /** Makes sense of one received message; every right in it is accounted for. */
  function interpret(bytes: Uint8Array, expectedId = MSG_ID_DATA): Interpreted {
    let parsed: ParsedMessage;
    try {
      parsed = parseMessage(bytes);
    } catch (error) {
      throw malformed("an unreadable Mach message", error);
    }
    const resources = resourcesOf(parsed);
    rights.received(resources);
    if (!parsed.complex && parsed.id !== expectedId && viaSendOnce(parsed)) {
      let notification;
      try {
        notification = parseNotification(bytes, parsed);
      } catch {
        notification = undefined;
      }
      if (notification !== undefined) {
        rights.discard(resources);
        return notification.type === "no-senders"
          ? { type: "closed" }
          : { type: "skip" };
      }
    }
    if (parsed.id !== expectedId) {
      rights.discard(resources);
      throw malformed(`an unexpected message id ${parsed.id}`);
    }
    let frame;
    try {
      frame = decodeFrame(bytes, parsed);
    } catch (error) {
      rights.discard(resources);
      throw error instanceof MalformedMessage
        ? malformed(error.message, error)
        : error;
    }
    // Anything beyond the frame's handles (a reply port, say) is dropped;
    // count per name, since one name may carry several references.
    const kept = new Map<number, number>();
    for (const h of frame.handles) {
      kept.set(h.name, (kept.get(h.name) ?? 0) + 1);
    }
    const extra: ReceivedResources = {
      rights: resources.rights.filter((r) => {
        const left = kept.get(r.name) ?? 0;
        if (left === 0) return true;
        kept.set(r.name, left - 1);
        return false;
      }),
      regions: [],
    };
    if (extra.rights.length > 0) rights.discard(extra);
    let data: Uint8Array;
    if (frame.outOfLine !== undefined) {
      try {
        data = copyRegion(frame.outOfLine);
      } finally {
        rights.releaseRegion(frame.outOfLine);
      }
    } else {
      data = frame.inline!.slice();
    }
    return {
      type: "message",
      message: { data, handles: frame.handles.map((h) => new MacIncoming(h)) },
    };
  }

  // ---------------------------------------------------------------------------
  // Sending.

  let sendBuffer = new Uint8Array(RECEIVE_BUFFER);
  let inlineLimit = INLINE_LIMIT;

  /** One `mach_msg` send with a zero timeout; the return code. */
  function transmit(
    dest: number,
    ports: readonly OutgoingPort[],
    data: Uint8Array,
    id = MSG_ID_DATA,
    blocking = false,
  ): number {
    if (data.length > MAX_BODY) {
      throw new IpcError(
        "Serialization",
        `a message body of ${data.length} bytes is over Mach's 4 GiB limit`,
      );
    }
    let outOfLine = data.length > inlineLimit;
    for (;;) {
      const message = {
        remotePort: dest,
        remoteDisposition: MACH_MSG_TYPE_COPY_SEND,
        id,
        ports,
        body: outOfLine
          ? {
            address: BigInt(
              Deno.UnsafePointer.value(Deno.UnsafePointer.of(data)),
            ),
            length: data.length,
          }
          : { inline: data },
      };
      const size = messageSize(message);
      if (sendBuffer.length < size) sendBuffer = new Uint8Array(size);
      buildMessage(sendBuffer, message);
      const kr = sys().mach_msg(
        sendBuffer,
        MACH_SEND_MSG | (blocking ? 0 : MACH_SEND_TIMEOUT),
        size,
        0,
        0,
        0,
        0,
      );
      if (kr === MACH_SEND_TOO_LARGE && !outOfLine) {
        // Nothing was copied in; learn the limit and go out of line.
        inlineLimit = Math.min(inlineLimit, Math.max(0, data.length - 1));
        outOfLine = true;
        continue;
      }
      if (kr === MACH_SEND_INTERRUPTED && !wasPseudoReceived(sendBuffer)) {
        continue;
      }
      return kr;
    }
  }

  /**
   * After a failed send that the kernel pseudo-received: the rights of the
   * message are ours again, under the names the buffer shows (in descriptor
   * order), and the body's out-of-line copy is a new region to release.
   * Returns the names, one per port of the message.
   */
  function reclaim(ports: readonly OutgoingPort[]): number[] {
    rights.sent(ports);
    const parsed = parseMessage(sendBuffer);
    const resources = resourcesOf(parsed);
    // The header's destination came back too, as the send right copy-in made
    // (resourcesOf lists it first, like a reply right): one extra reference.
    const headerRight = parsed.remotePort !== 0 &&
      (parsed.bits & 0x1f) !== 0;
    const header = headerRight ? resources.rights.shift() : undefined;
    rights.received(resources);
    if (header !== undefined) {
      rights.received({ rights: [header], regions: [] });
      rights.release(header.name);
    }
    for (const region of resources.regions) rights.releaseRegion(region);
    if (resources.rights.length !== ports.length) {
      throw new IpcError(
        "Io",
        `a failed send gave back ${resources.rights.length} rights for ${ports.length} handles`,
      );
    }
    return resources.rights.map((r) => r.name);
  }

  /** A send that did not go but may later: queue it. */
  function queueFull(kr: number): boolean {
    return kr === MACH_SEND_TIMED_OUT || kr === MACH_SEND_INTERRUPTED;
  }

  /** The handles of one message, checked before anything is sent. */
  class HandlePlan {
    readonly handles: (MacSender | MacReceiver | MacSharedMemory)[] = [];

    constructor(handles: readonly OsTransferable[]) {
      if (handles.length > MAX_HANDLES) {
        throw new IpcError(
          "Serialization",
          `a message can carry at most ${MAX_HANDLES} endpoints; this one has ${handles.length}`,
        );
      }
      const seen = new Set<MacReceiver>();
      for (const handle of handles) {
        if (handle instanceof MacReceiver) {
          if (seen.has(handle)) {
            throw new IpcError(
              "Serialization",
              "the same receiver appears twice in one message",
            );
          }
          seen.add(handle);
        } else if (
          !(handle instanceof MacSender) && !(handle instanceof MacSharedMemory)
        ) {
          throw new IpcError(
            "Serialization",
            "an endpoint from another platform backend",
          );
        }
        handle.nameForSend();
        this.handles.push(handle);
      }
    }

    /** Descriptors for an immediate send: copies of senders, moved receivers. */
    immediate(): OutgoingPort[] {
      return this.handles.map((h) => describe(h, false));
    }

    /** After a successful immediate send. */
    sent(): void {
      for (const h of this.handles) {
        if (h instanceof MacReceiver) h.detach();
      }
    }

    /** Puts receivers back under the names a pseudo-receive gave them. */
    restore(names: number[]): void {
      this.handles.forEach((h, i) => {
        if (h instanceof MacReceiver) h.rebind(names[i]);
        else rights.release(names[i]); // the copy's extra reference
      });
    }

    /** Descriptors a queued message owns: a reference per sender, receivers moved. */
    own(): OutgoingPort[] {
      const owned: OutgoingPort[] = [];
      try {
        for (const h of this.handles) {
          if (!(h instanceof MacReceiver)) rights.addReference(h.nameForSend());
          owned.push(describe(h, true));
        }
      } catch (error) {
        for (const port of owned) {
          if (port.disposition === MACH_MSG_TYPE_MOVE_SEND) {
            rights.release(port.name);
          }
        }
        throw error;
      }
      for (const h of this.handles) {
        if (h instanceof MacReceiver) h.detach();
      }
      return owned;
    }
  }

  function describe(
    h: MacSender | MacReceiver | MacSharedMemory,
    owned: boolean,
  ): OutgoingPort {
    if (h instanceof MacReceiver) {
      return {
        name: h.nameForSend(),
        disposition: MACH_MSG_TYPE_MOVE_RECEIVE,
        kind: HANDLE_RECEIVER,
        length: 0,
      };
    }
    return {
      name: h.nameForSend(),
      disposition: owned ? MACH_MSG_TYPE_MOVE_SEND : MACH_MSG_TYPE_COPY_SEND,
      kind: h instanceof MacSender ? HANDLE_SENDER : HANDLE_SHARED_MEMORY,
      length: h instanceof MacSharedMemory ? h.length : 0,
    };
  }

  /** Releases the rights a queued message owns. */
  function dropOwned(ports: readonly OutgoingPort[]): void {
    for (const port of ports) {
      if (port.disposition === MACH_MSG_TYPE_MOVE_RECEIVE) {
        rights.destroyReceive(port.name);
      } else rights.release(port.name);
    }
  }

  interface Queued {
    ports: OutgoingPort[];
    body: Uint8Array;
  }

  /** Senders with a queue, flushed on send-possible and after receives. */
  const pendingSenders = new Set<MacSender>();
  let notifyPort = 0;
  let notifyWatch = 0;

  function flushPendingSenders(): void {
    if (pendingSenders.size === 0) return;
    for (const sender of [...pendingSenders]) sender.flush();
  }

  /** The port send-possible notifications arrive on, watched while queues exist. */
  function watchNotifications(): number {
    if (notifyPort === 0) {
      notifyPort = rights.newReceivePort();
      rights.ledger.pin(notifyPort);
    }
    if (notifyWatch === 0) {
      notifyWatch = poller.watch(notifyPort, () => {
        // Drain every notification, then retry every queue.
        while (receiveRaw(notifyPort, 0) !== undefined) {
          let deadName: number | undefined;
          try {
            const parsed = parseMessage(receiveBuffer);
            const resources = resourcesOf(parsed);
            rights.received(resources);
            rights.discard(resources);
            if (!parsed.complex && viaSendOnce(parsed)) {
              const notification = parseNotification(receiveBuffer, parsed);
              if (notification?.type === "dead-name") {
                deadName = notification.name;
              }
            }
          } catch {
            // A malformed notification carries nothing we could free.
          }
          // A send-possible request outlived its port: the kernel sent this
          // instead, with a dead-name reference of its own on the name.
          if (deadName !== undefined) rights.deadNameNotified(deadName);
        }
        flushPendingSenders();
      });
    }
    return notifyPort;
  }

  function stopNotifications(): void {
    if (pendingSenders.size > 0 || notifyWatch === 0) return;
    poller.unwatch(notifyPort, notifyWatch);
    notifyWatch = 0;
  }

  const senderRegistry = new FinalizationRegistry<number>((name) => {
    rights.release(name);
  });

  class MacSender implements OsSender {
    #name: number;
    #closedReason: string | undefined;
    #broken: IpcError | undefined;
    #queue: Queued[] = [];
    #buffered = 0;
    #drainWaiters = new Waiters<void, number>("the queue did not drain");

    constructor(name: number) {
      this.#name = name;
      senderRegistry.register(this, name, this);
    }

    get bufferedAmount(): number {
      return this.#buffered;
    }

    get closedReason(): string | undefined {
      return this.#closedReason;
    }

    nameForSend(): number {
      if (this.#closedReason !== undefined) {
        throw new IpcError("Closed", `this sender is ${this.#closedReason}`);
      }
      return this.#name;
    }

    send(data: Uint8Array, handles: readonly OsTransferable[]): void {
      this.nameForSend();
      if (this.#broken) throw this.#broken;
      const plan = new HandlePlan(handles);
      if (this.#queue.length > 0) this.flush();
      if (this.#broken) throw this.#broken;
      if (this.#queue.length === 0) {
        const ports = plan.immediate();
        const kr = transmit(this.#name, ports, data);
        if (kr === KERN_SUCCESS) {
          rights.sent(ports);
          plan.sent();
          poller.traffic();
          return;
        }
        if (wasPseudoReceived(sendBuffer)) plan.restore(reclaim(ports));
        if (!queueFull(kr)) throw this.#failure(kr);
      }
      this.#enqueue(data, plan);
    }

    #enqueue(data: Uint8Array, plan: HandlePlan): void {
      const ports = plan.own();
      // The caller may reuse its buffer once send returns. A copy through
      // the constructor: it does not zero first, and a subclass's slice()
      // (Node's Buffer) may be a view.
      this.#queue.push({ ports, body: new Uint8Array(data) });
      this.#buffered += data.length;
      if (!pendingSenders.has(this)) {
        pendingSenders.add(this);
        this.#requestSendPossible();
      }
    }

    #requestSendPossible(): void {
      try {
        rights.requestSendPossible(this.#name, watchNotifications());
      } catch {
        // A dead destination refuses the request: the next flush finds out.
        queueMicrotask(() => this.flush());
      }
    }

    #failure(kr: number): IpcError {
      if (kr === MACH_SEND_INVALID_DEST) {
        rights.died(this.#name);
        this.#broken = disconnectedSender();
        return this.#broken;
      }
      return machError("mach_msg(send)", kr);
    }

    /** Sends what the kernel takes now. */
    flush(): void {
      while (this.#queue.length > 0) {
        const next = this.#queue[0];
        const kr = transmit(this.#name, next.ports, next.body);
        if (kr === KERN_SUCCESS) {
          rights.sent(next.ports);
          this.#queue.shift();
          this.#buffered -= next.body.length;
          continue;
        }
        if (wasPseudoReceived(sendBuffer)) {
          const names = reclaim(next.ports);
          next.ports = next.ports.map((p, i) => ({ ...p, name: names[i] }));
        }
        if (queueFull(kr)) {
          this.#requestSendPossible();
          break;
        }
        this.#drop(this.#failure(kr));
        return;
      }
      if (this.#queue.length === 0) this.#stopPending();
      this.#drainWaiters.resolveWhere(
        (threshold) => this.#buffered <= threshold,
        undefined,
      );
    }

    #drop(error: IpcError): void {
      this.#broken ??= error;
      for (const queued of this.#queue) dropOwned(queued.ports);
      this.#queue = [];
      this.#buffered = 0;
      this.#stopPending();
      this.#drainWaiters.rejectAll(error);
    }

    #stopPending(): void {
      if (!pendingSenders.delete(this)) return;
      stopNotifications();
      if (this.#closedReason !== undefined) this.#release();
    }

    drained(threshold = 0, options?: OsWaitOptions): Promise<void> {
      if (this.#broken) return Promise.reject(this.#broken);
      if (this.#buffered <= threshold) return Promise.resolve();
      return this.#drainWaiters.add(threshold, options);
    }

    clone(): OsSender {
      const name = this.nameForSend();
      rights.addReference(name);
      return new MacSender(name);
    }

    close(): void {
      if (this.#closedReason !== undefined) return;
      this.#closedReason = "closed";
      // A queue still owes messages: the right goes once it is flushed.
      if (!pendingSenders.has(this)) this.#release();
    }

    #release(): void {
      senderRegistry.unregister(this);
      rights.release(this.#name);
      this.#name = 0;
    }
  }

  const receiverRegistry = new FinalizationRegistry<number>((name) => {
    rights.destroyReceive(name);
  });

  class MacReceiver implements OsReceiver {
    #name: number;
    #closedReason: string | undefined;
    #ended = false;
    #watch = 0;
    #waiters = new Waiters<OsMessage>("no message");

    constructor(name: number) {
      this.#name = name;
      receiverRegistry.register(this, name, this);
    }

    get closedReason(): string | undefined {
      return this.#closedReason;
    }

    nameForSend(): number {
      this.#check();
      return this.#name;
    }

    #check(): void {
      if (this.#closedReason !== undefined) {
        throw new IpcError("Closed", `this receiver is ${this.#closedReason}`);
      }
    }

    /** One message, or undefined; `timeoutMs` undefined blocks. */
    #receive(timeoutMs: number | undefined): OsMessage | undefined {
      if (this.#ended) throw disconnectedReceiver();
      for (;;) {
        const bytes = receiveRaw(this.#name, timeoutMs);
        if (bytes === undefined) return undefined;
        const result = interpret(bytes);
        if (result.type === "skip") continue;
        if (result.type === "closed") {
          this.#ended = true;
          throw disconnectedReceiver();
        }
        poller.traffic();
        flushPendingSenders();
        return result.message;
      }
    }

    tryRecv(): OsMessage | undefined {
      this.#check();
      flushPendingSenders();
      return this.#receive(0);
    }

    recvSync(): OsMessage {
      this.#check();
      if (this.#waiters.size > 0) {
        throw new IpcError(
          "Io",
          "recvSync() called while a recv() on the same receiver is pending",
        );
      }
      for (;;) {
        flushPendingSenders();
        // Our own queued sends may be what the peer waits for: keep flushing
        // them (every millisecond) while we wait.
        const message = this.#receive(
          pendingSenders.size === 0 ? undefined : 1,
        );
        if (message !== undefined) return message;
      }
    }

    recv(options?: OsWaitOptions): Promise<OsMessage> {
      try {
        this.#check();
        if (this.#waiters.size === 0) {
          const message = this.#receive(0);
          if (message !== undefined) return Promise.resolve(message);
        }
      } catch (error) {
        return Promise.reject(error);
      }
      const promise = this.#waiters.add(undefined, options, () => {
        if (this.#waiters.size === 0) this.#stopWatching();
      });
      if (this.#watch === 0) {
        this.#watch = poller.watch(this.#name, () => this.#onReadable());
      }
      return promise;
    }

    #onReadable(): void {
      while (this.#waiters.size > 0) {
        let message: OsMessage | undefined;
        try {
          message = this.#receive(0);
        } catch (error) {
          if (this.#ended) this.#waiters.rejectAll(error);
          else this.#waiters.rejectFirst(error);
          continue;
        }
        if (message === undefined) break;
        this.#waiters.resolveFirst(message);
      }
      if (this.#waiters.size === 0) this.#stopWatching();
    }

    #stopWatching(): void {
      if (this.#watch === 0) return;
      poller.unwatch(this.#name, this.#watch);
      this.#watch = 0;
    }

    /** After a pseudo-received send: the receive right is back, maybe renamed. */
    rebind(name: number): void {
      if (name === this.#name) return;
      const waiting = this.#watch !== 0;
      this.#stopWatching();
      receiverRegistry.unregister(this);
      this.#name = name;
      receiverRegistry.register(this, name, this);
      if (waiting) {
        this.#watch = poller.watch(this.#name, () => this.#onReadable());
      }
    }

    /** Hands the receive right over; this handle becomes unusable. */
    detach(reason = "sent away inside a message"): number {
      const name = this.#name;
      this.#retire(reason);
      return name;
    }

    close(): void {
      if (this.#closedReason !== undefined) return;
      const name = this.#name;
      this.#retire("closed");
      rights.destroyReceive(name);
    }

    #retire(reason: string): void {
      this.#closedReason = reason;
      this.#stopWatching();
      receiverRegistry.unregister(this);
      this.#name = 0;
      this.#waiters.rejectAll(
        new IpcError("Closed", `this receiver was ${reason}`),
      );
    }
  }

  class MacIncoming implements OsIncomingHandle {
    #port: IncomingPort | undefined;

    constructor(port: IncomingPort) {
      this.#port = port;
    }

    #take(kind: HandleKind): IncomingPort {
      const port = this.#port;
      if (port === undefined) {
        throw new IpcError("Serialization", "a handle was used twice");
      }
      if (port.kind !== kind) {
        this.close();
        throw malformed(`a handle of kind ${port.kind} used as kind ${kind}`);
      }
      this.#port = undefined;
      return port;
    }

    intoSender(): OsSender {
      return new MacSender(this.#take(HANDLE_SENDER).name);
    }

    intoReceiver(): OsReceiver {
      return new MacReceiver(this.#take(HANDLE_RECEIVER).name);
    }

    intoSharedMemory(): OsSharedMemory {
      const port = this.#take(HANDLE_SHARED_MEMORY);
      return MacSharedMemory.adopt(port.name, port.length);
    }

    close(): void {
      const port = this.#port;
      if (port === undefined) return;
      this.#port = undefined;
      if (port.disposition === MACH_MSG_TYPE_PORT_RECEIVE) {
        rights.destroyReceive(port.name);
      } else rights.release(port.name);
    }
  }

  // ---------------------------------------------------------------------------
  // Shared memory: a named memory entry, mapped shared in every process.

  interface Mapping {
    address: bigint;
    length: number;
  }

  const mappingRegistry = new FinalizationRegistry<Mapping>((mapping) => {
    // Replace the pages in place rather than unmap: a transferred ArrayBuffer
    // may still point here (see platform/linux_shm.ts).
    sys().mmap(
      Deno.UnsafePointer.create(mapping.address),
      BigInt(mapping.length),
      PROT_READ | PROT_WRITE,
      MAP_PRIVATE | MAP_ANON | MAP_FIXED | MAP_NORESERVE,
      -1,
      0n,
    );
  });
  const entryRegistry = new FinalizationRegistry<number>((name) => {
    rights.release(name);
  });

  function pageRound(length: number): number {
    return Math.max(PAGE, Math.ceil(length / PAGE) * PAGE);
  }

  function mapEntry(entry: number, length: number): Uint8Array {
    if (length === 0) return new Uint8Array(0);
    const address = new BigUint64Array(1);
    const size = pageRound(length);
    const kr = sys().mach_vm_map(
      task(),
      new Uint8Array(address.buffer),
      BigInt(size),
      0n,
      VM_FLAGS_ANYWHERE,
      entry,
      0n,
      0, // copy = FALSE: share the pages, not a snapshot
      VM_PROT_READ | VM_PROT_WRITE,
      VM_PROT_READ | VM_PROT_WRITE,
      VM_INHERIT_NONE,
    );
    check("mach_vm_map", kr);
    const pointer = Deno.UnsafePointer.create(address[0]);
    const buffer = Deno.UnsafePointerView.getArrayBuffer(pointer!, length);
    mappingRegistry.register(buffer, { address: address[0], length: size });
    return new Uint8Array(buffer);
  }

  class MacSharedMemory extends MappedRegion {
    #entry: number;

    private constructor(entry: number, length: number) {
      super(length, () => mapEntry(entry, length), () => rights.release(entry));
      this.#entry = entry;
      entryRegistry.register(this, entry, this);
    }

    static create(length: number): MacSharedMemory {
      if (
        !Number.isSafeInteger(length) || length < 0 ||
        length > MAX_SHARED_MEMORY
      ) {
        throw new RangeError(
          `shared memory length must be an integer from 0 to ${MAX_SHARED_MEMORY}, not ${length}`,
        );
      }
      const size = new BigUint64Array([BigInt(pageRound(length))]);
      const handle = new Uint32Array(1);
      const kr = sys().mach_make_memory_entry_64(
        task(),
        new Uint8Array(size.buffer),
        0n,
        VM_PROT_READ | VM_PROT_WRITE | MAP_MEM_NAMED_CREATE,
        new Uint8Array(handle.buffer),
        0,
      );
      check("mach_make_memory_entry_64", kr);
      rights.ledger.received(handle[0], 17);
      return new MacSharedMemory(handle[0], length);
    }

    /** A received entry; mapping more than it holds fails in the kernel. */
    static adopt(entry: number, length: number): MacSharedMemory {
      if (length > MAX_SHARED_MEMORY) {
        rights.release(entry);
        throw malformed(`shared memory of ${length} bytes`);
      }
      try {
        return new MacSharedMemory(entry, length);
      } catch (error) {
        throw malformed("shared memory that cannot be mapped", error);
      }
    }

    nameForSend(): number {
      this.checkOpen();
      return this.#entry;
    }

    protected releaseHandle(): void {
      entryRegistry.unregister(this);
      rights.release(this.#entry);
      this.#entry = 0;
    }
  }

  // ---------------------------------------------------------------------------
  // Receiver sets: a port set.

  class MacReceiverSet implements OsReceiverSet {
    #set: number;
    readonly #members = new Map<number, number>(); // id → name
    readonly #ids = new Map<number, number>(); // name → id
    #nextId = 0;
    #watch = 0;
    #waiters = new Waiters<OsSelection[]>("no message");
    #closed = false;
    #deferred: unknown;

    constructor() {
      this.#set = rights.newPortSet();
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
      if (!(receiver instanceof MacReceiver)) {
        throw new IpcError("Io", "a receiver from another platform backend");
      }
      receiver.nameForSend();
      const name = receiver.detach("added to a receiver set");
      try {
        rights.insertMember(name, this.#set);
      } catch (error) {
        rights.destroyReceive(name);
        throw error;
      }
      const id = this.#nextId++;
      this.#members.set(id, name);
      this.#ids.set(name, id);
      return id;
    }

    remove(id: number): void {
      this.#check();
      const name = this.#members.get(id);
      if (name === undefined) {
        throw new IpcError("Io", `no receiver with id ${id} in this set`);
      }
      this.#drop(id, name);
    }

    #drop(id: number, name: number): void {
      this.#members.delete(id);
      this.#ids.delete(name);
      // Destroying the receive right takes it out of the set too.
      rights.destroyReceive(name);
    }

    trySelect(): OsSelection[] {
      this.#check();
      if (this.#deferred !== undefined) {
        const error = this.#deferred;
        this.#deferred = undefined;
        throw error;
      }
      const results: OsSelection[] = [];
      while (results.length < 1024) {
        let bytes: Uint8Array | undefined;
        let local: number;
        let result: Interpreted;
        try {
          bytes = receiveRaw(this.#set, 0);
          if (bytes === undefined) break;
          local = new DataView(bytes.buffer).getUint32(12, true);
          result = interpret(bytes);
        } catch (error) {
          if (results.length === 0) throw error;
          this.#deferred = error;
          break;
        }
        const id = this.#ids.get(local);
        if (result.type === "skip") continue;
        if (id === undefined) {
          if (result.type === "message") {
            for (const handle of result.message.handles) handle.close();
          }
          continue;
        }
        if (result.type === "closed") {
          this.#drop(id, local);
          results.push({ type: "closed", id });
        } else {
          results.push({ type: "message", id, message: result.message });
        }
      }
      if (results.length > 0) {
        poller.traffic();
        flushPendingSenders();
      }
      return results;
    }

    select(options?: OsWaitOptions): Promise<OsSelection[]> {
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
      if (this.#watch === 0) {
        this.#watch = poller.watch(this.#set, () => this.#onReady());
      }
      return promise;
    }

    #onReady(): void {
      while (this.#waiters.size > 0) {
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
      if (this.#watch === 0) return;
      poller.unwatch(this.#set, this.#watch);
      this.#watch = 0;
    }

    close(): void {
      if (this.#closed) return;
      this.#closed = true;
      this.#stopWatching();
      for (const name of this.#members.values()) rights.destroyReceive(name);
      this.#members.clear();
      this.#ids.clear();
      rights.destroyPortSet(this.#set);
      this.#set = 0;
      this.#waiters.rejectAll(
        new IpcError("Closed", "this receiver set was closed"),
      );
    }
  }

  // ---------------------------------------------------------------------------
  // Servers: a bootstrap name for a listening port; clients move a fresh
  // channel's receive right to it.

  function randomHex(bytes: number): string {
    const random = crypto.getRandomValues(new Uint8Array(bytes));
    return Array.from(random, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  class MacServer implements OsServer {
    readonly name: string;
    #port: number;
    #watch = 0;
    #waiters = new Waiters<OsAccepted>("no client connected");

    constructor() {
      const bp = bootstrapPort();
      const port = rights.newReceivePort();
      setQueueLimit(port);
      let name = "";
      try {
        rights.makeSend(port);
        try {
          for (;;) {
            name = `${BOOTSTRAP_PREFIX}${sys().getpid()}.${randomHex(16)}`;
            // bootstrap_register2 copies the send right; ours is released below.
            const kr = sys().bootstrap_register2(
              bp,
              cString(name),
              port,
              0n,
            );
            if (kr === KERN_SUCCESS) break;
            if (kr !== BOOTSTRAP_NAME_IN_USE) {
              throw machError(`bootstrap_register2(${name})`, kr);
            }
          }
        } finally {
          rights.release(port);
        }
      } catch (error) {
        rights.destroyReceive(port);
        throw error;
      }
      this.#port = port;
      this.name = name;
    }

    #acceptNow(): OsAccepted | undefined {
      for (;;) {
        const bytes = receiveRaw(this.#port, 0, true);
        if (bytes === undefined) return undefined;
        let result: Interpreted;
        try {
          result = interpret(bytes, MSG_ID_CONNECT);
        } catch {
          continue; // garbage on the listening port disturbs no one
        }
        if (result.type !== "message") continue;
        const handles = result.message.handles;
        let peer: PeerCredentials | undefined;
        try {
          peer = parseAuditTrailer(bytes, parseMessage(bytes));
        } catch {
          peer = undefined;
        }
        if (
          peer === undefined || handles.length !== 1 ||
          result.message.data.length !== 0
        ) {
          for (const handle of handles) handle.close();
          continue;
        }
        let receiver: OsReceiver;
        try {
          receiver = handles[0].intoReceiver();
        } catch {
          continue;
        }
        return { receiver, peer };
      }
    }

    accept(options?: OsWaitOptions): Promise<OsAccepted> {
      if (this.#port === 0) {
        return Promise.reject(new IpcError("Closed", "the server is closed"));
      }
      try {
        if (this.#waiters.size === 0) {
          const accepted = this.#acceptNow();
          if (accepted !== undefined) return Promise.resolve(accepted);
        }
      } catch (error) {
        return Promise.reject(error);
      }
      const promise = this.#waiters.add(undefined, options, () => {
        if (this.#waiters.size === 0) this.#stopWatching();
      });
      if (this.#watch === 0) {
        this.#watch = poller.watch(this.#port, () => this.#onReadable());
      }
      return promise;
    }

    #onReadable(): void {
      while (this.#waiters.size > 0) {
        let accepted: OsAccepted | undefined;
        try {
          accepted = this.#acceptNow();
        } catch (error) {
          this.#waiters.rejectFirst(error);
          continue;
        }
        if (accepted === undefined) break;
        this.#waiters.resolveFirst(accepted);
      }
      if (this.#waiters.size === 0) this.#stopWatching();
    }

    #stopWatching(): void {
      if (this.#watch === 0) return;
      poller.unwatch(this.#port, this.#watch);
      this.#watch = 0;
    }

    close(): void {
      if (this.#port === 0) return;
      this.#stopWatching();
      // The port dies: launchd sees a dead name and drops the registration;
      // connect messages still queued are destroyed with their rights.
      rights.destroyReceive(this.#port);
      this.#port = 0;
      this.#waiters.rejectAll(new IpcError("Closed", "the server was closed"));
    }
  }

  function connect(name: string): OsSender {
    const bytes = new TextEncoder().encode(name);
    if (!name.startsWith(BOOTSTRAP_PREFIX) || bytes.length >= 128) {
      throw new IpcError("Io", `not a server name of this module: ${name}`, {
        code: "ENOENT",
      });
    }
    const out = new Uint32Array(1);
    const kr = sys().bootstrap_look_up(
      bootstrapPort(),
      cString(name),
      new Uint8Array(out.buffer),
    );
    if (kr === BOOTSTRAP_UNKNOWN_SERVICE) {
      throw new IpcError(
        "Io",
        `connect to ${name} failed: no server is listening at that name`,
        { code: "ENOENT" },
      );
    }
    check(`bootstrap_look_up(${name})`, kr);
    const listener = out[0];
    rights.ledger.received(listener, 17);
    try {
      const channel = newChannelPort();
      const ports: OutgoingPort[] = [{
        name: channel,
        disposition: MACH_MSG_TYPE_MOVE_RECEIVE,
        kind: HANDLE_RECEIVER,
        length: 0,
      }];
      // Blocking, as connect(2) is when a listener's backlog is full.
      const sent = transmit(
        listener,
        ports,
        new Uint8Array(0),
        MSG_ID_CONNECT,
        true,
      );
      if (sent !== KERN_SUCCESS) {
        // A pseudo-receive puts the receive right back under the same name
        // (we still hold the channel's send right there).
        if (wasPseudoReceived(sendBuffer)) reclaim(ports);
        rights.destroyReceive(channel);
        rights.release(channel);
        if (sent === MACH_SEND_INVALID_DEST) {
          throw new IpcError(
            "Io",
            `connect to ${name} failed: the server closed`,
            { code: "ECONNREFUSED" },
          );
        }
        throw machError("mach_msg(connect)", sent);
      }
      rights.sent(ports);
      return new MacSender(channel);
    } finally {
      rights.release(listener);
    }
  }

  function channel(): [OsSender, OsReceiver] {
    const name = newChannelPort();
    return [new MacSender(name), new MacReceiver(name)];
  }

  const platform: OsPlatform = {
    channel,
    connect,
    listen: () => new MacServer(),
    processUid: () => sys().getuid(),
    takeEnv,
    sharedMemory: (length) => MacSharedMemory.create(length),
    receiverSet: () => new MacReceiverSet(),
  };
  return { platform, rights, settled: () => poller.idle() };
}

const backend = createMacBackend({
  lib: libSystem,
  task: taskSelf,
  errorString: machErrorString,
  poller: kqueuePoller,
});

/** The macOS implementation of {@linkcode OsPlatform}. */
export const macos: OsPlatform = backend.platform;

/**
 * Rights and out-of-line regions this process holds through the backend,
 * beyond the process-lifetime ones (bootstrap and notification ports).
 * After every endpoint is closed it should be empty: a test hook.
 */
export function machRightsOutstanding(): {
  names: Map<number, NameRights>;
  regions: Map<bigint, number>;
} {
  return backend.rights.ledger.outstanding();
}

/** Resolves once no wait is parked (tests use it before their op check). */
export function settled(): Promise<void> {
  return backend.settled();
}
