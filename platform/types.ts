/**
 * The seam between the platform-free layers (`serde/`, `mod.ts`) and the OS
 * backends: an `OsChannel` moves bytes plus OS handles, and nothing else.
 *
 * @module
 */

/** What went wrong, as a stable string to branch on. */
export type IpcErrorKind =
  /** `tryRecv`/`tryRecvTimeout` found no message. */
  | "Empty"
  /** The other side is gone: every sender closed, or the receiver closed. */
  | "Disconnected"
  /** The operating system refused (EMFILE, a missing server, a bad frame…). */
  | "Io"
  /** A value could not be encoded, or received bytes could not be decoded. */
  | "Serialization"
  /** This endpoint was closed, or sent away inside a message, in this process. */
  | "Closed";

/**
 * The one error class of the module; branch on {@linkcode IpcError.kind}.
 *
 * @example Telling an empty channel from a closed one
 * ```ts
 * import { channel, IpcError } from "@ipc/channel";
 * const [tx, rx] = channel<number>();
 * try {
 *   rx.tryRecv();
 * } catch (e) {
 *   if (e instanceof IpcError && e.kind === "Empty") console.log("nothing yet");
 * }
 * tx.close();
 * rx.close();
 * ```
 */
export class IpcError extends Error {
  /** Which kind of failure this is. */
  readonly kind: IpcErrorKind;
  /** The OS error name (`"EMFILE"`, `"ENOENT"`…) when the OS reported one. */
  readonly code?: string;

  /**
   * Creates an error; the module throws these, user code rarely needs to.
   *
   * @example
   * ```ts
   * import { IpcError } from "@ipc/channel";
   * const error = new IpcError("Io", "no server", { code: "ENOENT" });
   * console.log(error.kind, error.code);
   * ```
   *
   * @param kind which kind of failure
   * @param message what happened, for a person
   * @param options the cause and the OS error name, if any
   */
  constructor(
    kind: IpcErrorKind,
    message: string,
    options?: { cause?: unknown; code?: string },
  ) {
    super(message, { cause: options?.cause });
    this.name = "IpcError";
    this.kind = kind;
    if (options?.code !== undefined) this.code = options.code;
  }
}

/** A received message: its bytes and the OS handles that came with it. */
export interface OsMessage {
  /**
   * The payload, owned by the caller. It may be a view into a larger buffer
   * that only other messages of the same packet share: decode it, or copy it
   * out with {@linkcode ownedBytes} before handing it to user code.
   */
  readonly data: Uint8Array;
  /** Handles in the order the sender listed them; the caller adopts or closes each. */
  readonly handles: OsIncomingHandle[];
}

/** An OS handle that arrived in a message and is not yet an endpoint. */
export interface OsIncomingHandle {
  /** Adopt it as the sending end of a channel. */
  intoSender(): OsSender;
  /** Adopt it as the receiving end of a channel. */
  intoReceiver(): OsReceiver;
  /** Adopt it as a shared memory region (mapped without copying). */
  intoSharedMemory(): OsSharedMemory;
  /** Release it unused. Safe to call after an `into*` call (does nothing). */
  close(): void;
}

/** Something that can ride inside a message. */
export type OsTransferable = OsSender | OsReceiver | OsSharedMemory;

/**
 * A region of memory shared with every process it is sent to. Sending keeps
 * it usable here (the receiving process gets its own handle on the memory).
 */
export interface OsSharedMemory {
  /** A live, zero-copy view of the mapping. Throws "Closed" once closed. */
  readonly bytes: Uint8Array;
  /** Size in bytes (still known after close). */
  readonly length: number;
  /** A copy of the contents; releases this handle. */
  take(): Uint8Array;
  /** Releases this handle; views already handed out stay readable. */
  close(): void;
  /** Why the handle is unusable, or undefined while it is usable. */
  readonly closedReason: string | undefined;
}

/** One result of a receiver-set selection. */
export type OsSelection =
  | { type: "message"; id: number; message: OsMessage }
  | { type: "closed"; id: number };

/** Waits on many receivers with one OS wait. */
export interface OsReceiverSet {
  /** Moves `receiver` into the set (the old handle becomes unusable). */
  add(receiver: OsReceiver): number;
  /** Removes a member and closes its receiver. */
  remove(id: number): void;
  /** Members in the set. */
  readonly size: number;
  /** Every waiting message and closed member now; [] if none. */
  trySelect(): OsSelection[];
  /** Waits until at least one result is available. */
  select(options?: OsWaitOptions): Promise<OsSelection[]>;
  /** Closes every member; pending selects reject with kind "Closed". */
  close(): void;
}

/** How a wait may end early. */
export interface OsWaitOptions {
  /** Reject with the signal's reason when it aborts. */
  signal?: AbortSignal;
  /** Reject with kind "Empty" after this many milliseconds. */
  timeoutMs?: number;
}

/** The sending end of an OS channel. */
export interface OsSender {
  /**
   * Sends `data` with `handles` without ever blocking: what the kernel cannot
   * take yet is queued and flushed as the reader drains. Receivers in
   * `handles` are moved into the message; senders stay usable.
   */
  send(data: Uint8Array, handles: readonly OsTransferable[]): void;
  /** Bytes accepted by `send` that the kernel has not taken yet. */
  readonly bufferedAmount: number;
  /** Resolves once `bufferedAmount` is at most `threshold`. */
  drained(threshold?: number, options?: OsWaitOptions): Promise<void>;
  /** A new, independent handle on the same channel. */
  clone(): OsSender;
  /** Releases the handle (queued messages are still delivered). */
  close(): void;
  /** Why the handle is unusable, or undefined while it is usable. */
  readonly closedReason: string | undefined;
}

/** The receiving end of an OS channel. */
export interface OsReceiver {
  /**
   * A message if one is waiting, else undefined. Throws "Disconnected".
   *
   * With `borrow`, the message's `data` may instead be a view into the
   * platform's receive buffer, valid only until the next receive in this
   * process: for a caller that decodes it at once into values that copy
   * what they keep, which saves copying the body out. A platform may ignore
   * the flag (owned data is always allowed).
   */
  tryRecv(borrow?: boolean): OsMessage | undefined;
  /** Blocks the thread until a message arrives; `borrow` as for `tryRecv`. */
  recvSync(borrow?: boolean): OsMessage;
  /** Waits without blocking the event loop or holding a thread per call. */
  recv(options?: OsWaitOptions): Promise<OsMessage>;
  /** Releases the handle; pending `recv` calls reject with kind "Closed". */
  close(): void;
  /** Why the handle is unusable, or undefined while it is usable. */
  readonly closedReason: string | undefined;
}

/** Credentials of a connected peer, as the kernel reports them. */
export interface PeerCredentials {
  /** Process id of the peer when it connected. */
  readonly pid: number;
  /**
   * User id of the peer. Windows has no uid: there it is always -1, as is
   * `processUid()`, and only the pipe's default security (other users may
   * not write to it) keeps other users out.
   */
  readonly uid: number;
  /** Group id of the peer (-1 on Windows). */
  readonly gid: number;
}

/** A connection accepted by an {@linkcode OsServer}. */
export interface OsAccepted {
  /** Receives what the client sends. */
  readonly receiver: OsReceiver;
  /** Who the client is. */
  readonly peer: PeerCredentials;
}

/** A listening endpoint that clients reach with `connect(name)`. */
export interface OsServer {
  /** What clients pass to `connect`. */
  readonly name: string;
  /** Waits for the next client. */
  accept(options?: OsWaitOptions): Promise<OsAccepted>;
  /** Stops listening and removes the name. */
  close(): void;
}

/** One operating system's implementation of channels. */
export interface OsPlatform {
  /** A connected pair. */
  channel(): [OsSender, OsReceiver];
  /** The sending end of a new connection to a server. */
  connect(name: string): OsSender;
  /** A server at a fresh, private name. */
  listen(): OsServer;
  /** The user id this process runs as (-1 on Windows, which has none). */
  processUid(): number;
  /**
   * Reads and removes an environment variable (how `spawn` hands a child its
   * bootstrap name), without needing Deno's env permission.
   */
  takeEnv(name: string): string | undefined;
  /** A new shared memory region of `length` zero bytes. */
  sharedMemory(length: number): OsSharedMemory;
  /** An empty receiver set. */
  receiverSet(): OsReceiverSet;
}

/**
 * `bytes` as a buffer of its own (offset 0, exact length): a copy if needed
 * (through the constructor, which unlike `slice()` does not zero it first).
 */
export function ownedBytes(bytes: Uint8Array): Uint8Array {
  return bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength
    ? bytes
    : new Uint8Array(bytes);
}

/**
 * The getter `name` of `prototype`, captured at load. Reading a caller's
 * object through it, not through the object's own properties, ignores
 * overrides (own properties, subclasses) and sees through imitations.
 */
export function intrinsicGetter(
  prototype: object,
  name: PropertyKey,
): (this: unknown) => unknown {
  return Object.getOwnPropertyDescriptor(prototype, name)!.get!;
}

/** %TypedArray%.prototype, which every typed array kind inherits. */
export const typedArrayPrototype = Object.getPrototypeOf(Uint8Array.prototype);

/**
 * The kind's name ("Uint8Array"…) for a real typed array of any realm, and
 * undefined for anything else, a Proxy of one included.
 */
export const typedArrayTag = intrinsicGetter(
  typedArrayPrototype,
  Symbol.toStringTag,
) as (this: unknown) => string | undefined;
