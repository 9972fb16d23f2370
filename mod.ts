/**
 * Typed channels between processes, after Rust's
 * [servo/ipc-channel](https://github.com/servo/ipc-channel): `send`/`recv`
 * across process boundaries, with channels themselves sendable inside
 * messages. Built on the OS's own IPC through `Deno.dlopen`; needs only
 * `--allow-ffi`.
 *
 * @example A reply channel inside a message
 * ```ts
 * import { channel, type IpcSender } from "@ipc/channel";
 *
 * type Request = { n: number; reply: IpcSender<number> };
 * const [tx, rx] = channel<Request>();
 * const [replyTx, replyRx] = channel<number>();
 * tx.send({ n: 20, reply: replyTx });
 * const request = await rx.recv();
 * request.reply.send(request.n + 1);
 * console.log(await replyRx.recv()); // 21
 * for (const end of [tx, rx, replyTx, replyRx, request.reply]) end.close();
 * ```
 *
 * @module
 */

import { platform } from "./platform/mod.ts";
import {
  intrinsicGetter,
  IpcError,
  type OsIncomingHandle,
  type OsMessage,
  type OsReceiver,
  type OsReceiverSet,
  type OsSender,
  type OsServer,
  type OsSharedMemory,
  type OsTransferable,
  ownedBytes,
  type PeerCredentials,
  typedArrayPrototype,
  typedArrayTag,
} from "./platform/types.ts";
import { Waiters } from "./platform/waiters.ts";
import { Codec } from "./serde/codec.ts";

export {
  IpcError,
  type IpcErrorKind,
  type PeerCredentials,
} from "./platform/types.ts";

/** Options for a wait that can be cancelled. */
export interface RecvOptions {
  /** Rejects the wait with the signal's reason when it aborts. */
  signal?: AbortSignal;
}

let wrapSender: <T>(os: OsSender) => IpcSender<T>;
let wrapReceiver: <T>(os: OsReceiver) => IpcReceiver<T>;
let wrapBytesSender: (os: OsSender) => IpcBytesSender;
let wrapBytesReceiver: (os: OsReceiver) => IpcBytesReceiver;
let wrapOpaqueSender: (os: OsSender) => OpaqueIpcSender;
let wrapOpaqueReceiver: (os: OsReceiver) => OpaqueIpcReceiver;
let senderOs: (endpoint: IpcSender<unknown>) => OsSender;
let receiverOs: (endpoint: IpcReceiver<unknown>) => OsReceiver;
let bytesSenderOs: (endpoint: IpcBytesSender) => OsSender;
let bytesReceiverOs: (endpoint: IpcBytesReceiver) => OsReceiver;
let opaqueSenderOs: (endpoint: OpaqueIpcSender) => OsSender;
let opaqueReceiverOs: (endpoint: OpaqueIpcReceiver) => OsReceiver;
let takeReceiverOs: (endpoint: IpcReceiver<unknown>, to: string) => OsReceiver;
let takeBytesReceiverOs: (endpoint: IpcBytesReceiver, to: string) => OsReceiver;
let takeOpaqueReceiverOs: (
  endpoint: OpaqueIpcReceiver,
  to: string,
) => OsReceiver;

/** Holds an OS endpoint until it is closed or moved into another wrapper. */
class Slot<Os extends { close(): void; readonly closedReason?: string }> {
  #os: Os | undefined;
  #movedTo = "";

  constructor(os: Os) {
    this.#os = os;
  }

  get(what: string): Os {
    if (this.#os === undefined) {
      throw new IpcError("Closed", `this ${what} was ${this.#movedTo}`);
    }
    const reason = this.#os.closedReason;
    if (reason !== undefined) {
      throw new IpcError("Closed", `this ${what} is ${reason}`);
    }
    return this.#os;
  }

  take(what: string, movedTo: string): Os {
    const os = this.get(what);
    this.#os = undefined;
    this.#movedTo = movedTo;
    return os;
  }

  close(): void {
    this.#os?.close();
    this.#os = undefined;
    this.#movedTo ||= "closed";
  }
}

function decode<T>(message: OsMessage): T {
  return codec().decode(message.data, message.handles) as T;
}

/**
 * For `recvSync(LEND)` and `tryRecv(LEND)`: the message may be a view into
 * the platform's receive buffer, so it must be decoded before anything else
 * receives. The codec copies every byte array it returns, so the decoded
 * value never aliases it; the saving is a copy of each body.
 */
const LEND = true;

function bytesOf(message: OsMessage): Uint8Array {
  for (const handle of message.handles) handle.close();
  return ownedBytes(message.data);
}

// Bytes from a caller are its objects: a subclass or a Proxy could override
// `set`, `length` or `subarray` and be handed the lent view (see LEND), throw
// once a message is taken, or make the platform hand the kernel a length past
// the buffer. So they are read only through %TypedArray%.prototype's own
// getters and `set`, captured before any caller runs.
const lengthOf = intrinsicGetter(typedArrayPrototype, "length") as (
  this: Uint8Array,
) => number;
const byteOffsetOf = intrinsicGetter(typedArrayPrototype, "byteOffset") as (
  this: Uint8Array,
) => number;
const bufferOf = intrinsicGetter(typedArrayPrototype, "buffer") as (
  this: Uint8Array,
) => ArrayBufferLike;
const setBytes = typedArrayPrototype.set as (
  this: Uint8Array,
  source: Uint8Array,
) => void;
const NO_BYTES = new Uint8Array(0);

/**
 * A plain view of the memory of `bytes`, which `who` (the API call, for the
 * message) took from a caller. Throws `refuse(message)` unless `bytes` really
 * is a Uint8Array (of any realm) and usable: not a view of a detached
 * (transferred) buffer, nor one that a resizable buffer's shrinking left out
 * of bounds.
 */
function callerBytes(
  bytes: Uint8Array,
  who: string,
  refuse: (message: string) => Error,
): Uint8Array {
  if (typedArrayTag.call(bytes) !== "Uint8Array") {
    throw refuse(`${who} takes a Uint8Array`);
  }
  try {
    setBytes.call(bytes, NO_BYTES);
  } catch {
    throw refuse(`${who}: the Uint8Array is detached or out of bounds`);
  }
  return new Uint8Array(
    bufferOf.call(bytes),
    byteOffsetOf.call(bytes),
    lengthOf.call(bytes),
  );
}

const typeError = (message: string) => new TypeError(message);
const unsendable = (message: string) => new IpcError("Serialization", message);

/**
 * `message`'s body in `buffer` (a plain view from callerBytes) when it fits,
 * else in a buffer of its own: `message` may be lent (see LEND), so it is
 * never returned as is.
 */
function bytesInto(message: OsMessage, buffer: Uint8Array): Uint8Array {
  for (const handle of message.handles) handle.close();
  const data = message.data;
  if (data.length > buffer.length) return ownedBytes(data);
  buffer.set(data);
  return buffer.subarray(0, data.length);
}

/**
 * `name` for `connect`, checked to be a string: the Windows backend sizes the
 * UTF-16 copy it hands the kernel from `length`, so an object posing as one
 * could leave it unterminated.
 */
function serverName(name: string, endpoint: string): string {
  if (typeof name !== "string") {
    throw new TypeError(`${endpoint}.connect takes a server name string`);
  }
  return name;
}

function empty(): IpcError {
  return new IpcError("Empty", "no message is waiting");
}

async function* iterate<T>(
  next: () => Promise<T>,
): AsyncGenerator<T, void, undefined> {
  for (;;) {
    try {
      yield await next();
    } catch (error) {
      if (error instanceof IpcError && error.kind === "Disconnected") return;
      throw error;
    }
  }
}

/**
 * The sending end of a typed channel. Cloneable, and sendable inside
 * messages (it stays usable here: the receiving process gets its own handle).
 *
 * `send` never blocks: what the OS cannot take yet waits in this process and
 * is flushed as the reader drains (see {@linkcode IpcSender.bufferedAmount}).
 *
 * @example
 * ```ts
 * import { channel } from "@ipc/channel";
 * const [tx, rx] = channel<{ id: number; tags: Set<string> }>();
 * tx.send({ id: 1, tags: new Set(["a"]) });
 * console.log((await rx.recv()).id); // 1
 * tx.close();
 * rx.close();
 * ```
 */
export class IpcSender<T> {
  readonly #slot: Slot<OsSender>;

  private constructor(os: OsSender) {
    this.#slot = new Slot(os);
  }

  static {
    wrapSender = <T>(os: OsSender) => new IpcSender<T>(os);
    senderOs = (endpoint) => endpoint.#slot.get("sender");
  }

  /**
   * Connects to a server by the name it published
   * ({@linkcode IpcOneShotServer.name}). Throws kind "Io" when no server
   * listens there.
   *
   * @example
   * ```ts
   * import { IpcOneShotServer, IpcSender } from "@ipc/channel";
   * using server = new IpcOneShotServer<string>();
   * using tx = IpcSender.connect<string>(server.name);
   * tx.send("hello");
   * const [rx, first] = await server.accept();
   * console.log(first); // "hello"
   * rx.close();
   * ```
   */
  static connect<T>(name: string): IpcSender<T> {
    return new IpcSender<T>(platform().connect(serverName(name, "IpcSender")));
  }

  /**
   * Encodes `value` and sends it. Throws kind "Serialization" (and sends
   * nothing) for a value that cannot travel, "Disconnected" once the
   * receiver is gone, "Closed" after {@linkcode IpcSender.close}.
   *
   * @example
   * ```ts
   * import { channel } from "@ipc/channel";
   * const [tx, rx] = channel<number[]>();
   * tx.send([1, 2, 3]);
   * tx.close();
   * rx.close();
   * ```
   */
  send(value: T): void {
    const os = this.#slot.get("sender");
    const { bytes, handles } = codec().encode(value);
    os.send(bytes, handles);
  }

  /**
   * Bytes sent but not yet taken by the OS, like `WebSocket.bufferedAmount`.
   *
   * @example
   * ```ts
   * import { channel } from "@ipc/channel";
   * const [tx, rx] = channel<string>();
   * tx.send("x");
   * console.log(tx.bufferedAmount); // 0: the socket took it
   * tx.close();
   * rx.close();
   * ```
   */
  get bufferedAmount(): number {
    return this.#slot.get("sender").bufferedAmount;
  }

  /**
   * Resolves once {@linkcode IpcSender.bufferedAmount} is at most
   * `threshold`: the way for a fast producer to bound its memory.
   *
   * @example
   * ```ts
   * import { channel } from "@ipc/channel";
   * const [tx, rx] = channel<Uint8Array>();
   * tx.send(new Uint8Array(1024));
   * await tx.drained(0);
   * tx.close();
   * rx.close();
   * ```
   */
  drained(threshold = 0, options?: RecvOptions): Promise<void> {
    try {
      return this.#slot.get("sender").drained(threshold, options);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * Another sender on the same channel, closed independently.
   *
   * @example
   * ```ts
   * import { channel } from "@ipc/channel";
   * const [tx, rx] = channel<string>();
   * using second = tx.clone();
   * second.send("from the clone");
   * tx.close();
   * console.log(await rx.recv()); // "from the clone"
   * rx.close();
   * ```
   */
  clone(): IpcSender<T> {
    return new IpcSender<T>(this.#slot.get("sender").clone());
  }

  /**
   * The type-erased sender; this one becomes unusable.
   *
   * @example
   * ```ts
   * import { channel } from "@ipc/channel";
   * const [tx, rx] = channel<number>();
   * using typed = tx.toOpaque().to<number>();
   * typed.send(7);
   * rx.close();
   * ```
   */
  toOpaque(): OpaqueIpcSender {
    return wrapOpaqueSender(this.#slot.take("sender", "made opaque"));
  }

  /**
   * Releases the OS handle. Messages still queued are delivered first.
   *
   * @example
   * ```ts
   * import { channel } from "@ipc/channel";
   * const [tx, rx] = channel<number>();
   * tx.close();
   * rx.close();
   * ```
   */
  close(): void {
    this.#slot.close();
  }

  /** Same as {@linkcode IpcSender.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * The receiving end of a typed channel. Sendable inside messages: once sent,
 * it is unusable here (kind "Closed") and lives on in the other process.
 *
 * @example Iterating until every sender is gone
 * ```ts
 * import { channel } from "@ipc/channel";
 * const [tx, rx] = channel<number>();
 * tx.send(1);
 * tx.send(2);
 * tx.close();
 * for await (const n of rx) console.log(n); // 1, 2
 * rx.close();
 * ```
 */
export class IpcReceiver<T> {
  readonly #slot: Slot<OsReceiver>;

  private constructor(os: OsReceiver) {
    this.#slot = new Slot(os);
  }

  static {
    wrapReceiver = <T>(os: OsReceiver) => new IpcReceiver<T>(os);
    receiverOs = (endpoint) => endpoint.#slot.get("receiver");
    takeReceiverOs = (endpoint, to) => endpoint.#slot.take("receiver", to);
  }

  /**
   * Waits for the next message without blocking the event loop. Rejects
   * kind "Disconnected" once every sender is gone and the queue is empty.
   *
   * @example
   * ```ts
   * import { channel } from "@ipc/channel";
   * const [tx, rx] = channel<string>();
   * tx.send("hi");
   * console.log(await rx.recv({ signal: AbortSignal.timeout(1000) }));
   * tx.close();
   * rx.close();
   * ```
   */
  recv(options?: RecvOptions): Promise<T> {
    // then() rather than async/await: one microtask hop, not three, which
    // is a fifth of the cost of a small message taken from a batch.
    try {
      return this.#slot.get("receiver").recv(options).then(decode<T>);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * Blocks the whole thread until a message arrives. For scripts and
   * workers that have nothing else to do; prefer {@linkcode IpcReceiver.recv}.
   *
   * @example
   * ```ts
   * import { channel } from "@ipc/channel";
   * const [tx, rx] = channel<number>();
   * tx.send(5);
   * console.log(rx.recvSync()); // 5
   * tx.close();
   * rx.close();
   * ```
   */
  recvSync(): T {
    return decode<T>(this.#slot.get("receiver").recvSync(LEND));
  }

  /**
   * The next message if one is waiting; throws kind "Empty" if none is.
   *
   * @example
   * ```ts
   * import { channel, IpcError } from "@ipc/channel";
   * const [tx, rx] = channel<number>();
   * try {
   *   rx.tryRecv();
   * } catch (e) {
   *   console.log(e instanceof IpcError && e.kind); // "Empty"
   * }
   * tx.close();
   * rx.close();
   * ```
   */
  tryRecv(): T {
    const message = this.#slot.get("receiver").tryRecv(LEND);
    if (message === undefined) throw empty();
    return decode<T>(message);
  }

  /**
   * Waits at most `ms` milliseconds; rejects kind "Empty" after that.
   *
   * @example
   * ```ts
   * import { channel } from "@ipc/channel";
   * const [tx, rx] = channel<number>();
   * await rx.tryRecvTimeout(10).catch((e) => console.log(e.kind)); // "Empty"
   * tx.close();
   * rx.close();
   * ```
   */
  async tryRecvTimeout(ms: number, options?: RecvOptions): Promise<T> {
    const os = this.#slot.get("receiver");
    return decode<T>(await os.recv({ ...options, timeoutMs: ms }));
  }

  /**
   * Yields messages until every sender is gone.
   *
   * @example
   * ```ts
   * import { channel } from "@ipc/channel";
   * const [tx, rx] = channel<string>();
   * tx.send("only");
   * tx.close();
   * for await (const text of rx) console.log(text);
   * rx.close();
   * ```
   */
  [Symbol.asyncIterator](): AsyncGenerator<T, void, undefined> {
    return iterate(() => this.recv());
  }

  /**
   * The type-erased receiver; this one becomes unusable.
   *
   * @example
   * ```ts
   * import { channel } from "@ipc/channel";
   * const [tx, rx] = channel<number>();
   * using typed = rx.toOpaque().to<number>();
   * tx.send(3);
   * console.log(await typed.recv()); // 3
   * tx.close();
   * ```
   */
  toOpaque(): OpaqueIpcReceiver {
    return wrapOpaqueReceiver(this.#slot.take("receiver", "made opaque"));
  }

  /**
   * Releases the OS handle; pending waits reject with kind "Closed".
   *
   * @example
   * ```ts
   * import { channel } from "@ipc/channel";
   * const [tx, rx] = channel<number>();
   * rx.close();
   * tx.close();
   * ```
   */
  close(): void {
    this.#slot.close();
  }

  /** Same as {@linkcode IpcReceiver.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * The sending end of a raw bytes channel: no codec, no endpoints inside.
 *
 * @example
 * ```ts
 * import { bytesChannel } from "@ipc/channel";
 * const [tx, rx] = bytesChannel();
 * tx.send(new Uint8Array([1, 2, 3]));
 * console.log(await rx.recv()); // Uint8Array(3) [1, 2, 3]
 * tx.close();
 * rx.close();
 * ```
 */
export class IpcBytesSender {
  readonly #slot: Slot<OsSender>;

  private constructor(os: OsSender) {
    this.#slot = new Slot(os);
  }

  static {
    wrapBytesSender = (os) => new IpcBytesSender(os);
    bytesSenderOs = (endpoint) => endpoint.#slot.get("sender");
  }

  /**
   * Connects to a server by its name, as {@linkcode IpcSender.connect} does;
   * the bytes arrive undecoded, so the server must expect them.
   *
   * @example
   * ```ts
   * import { IpcBytesSender, IpcOneShotServer } from "@ipc/channel";
   * using server = new IpcOneShotServer<Uint8Array>();
   * using tx = IpcBytesSender.connect(server.name);
   * tx.send(new Uint8Array([0xc0])); // MessagePack for null
   * const [rx, first] = await server.accept();
   * console.log(first); // null
   * rx.close();
   * ```
   */
  static connect(name: string): IpcBytesSender {
    return new IpcBytesSender(
      platform().connect(serverName(name, "IpcBytesSender")),
    );
  }

  /**
   * Sends a copy of `bytes`; the caller may reuse the buffer at once.
   * Throws kind "Serialization" if `bytes` is not a Uint8Array or its
   * buffer was transferred; kind "Disconnected" if the receiver is gone.
   *
   * @example
   * ```ts
   * import { bytesChannel } from "@ipc/channel";
   * const [tx, rx] = bytesChannel();
   * tx.send(new TextEncoder().encode("hi"));
   * tx.close();
   * rx.close();
   * ```
   */
  send(bytes: Uint8Array): void {
    this.#slot.get("sender").send(
      callerBytes(bytes, "IpcBytesSender.send", unsendable),
      [],
    );
  }

  /**
   * Bytes sent but not yet taken by the OS.
   *
   * @example
   * ```ts
   * import { bytesChannel } from "@ipc/channel";
   * const [tx, rx] = bytesChannel();
   * console.log(tx.bufferedAmount); // 0
   * tx.close();
   * rx.close();
   * ```
   */
  get bufferedAmount(): number {
    return this.#slot.get("sender").bufferedAmount;
  }

  /**
   * Resolves once at most `threshold` bytes are queued.
   *
   * @example
   * ```ts
   * import { bytesChannel } from "@ipc/channel";
   * const [tx, rx] = bytesChannel();
   * await tx.drained();
   * tx.close();
   * rx.close();
   * ```
   */
  drained(threshold = 0, options?: RecvOptions): Promise<void> {
    try {
      return this.#slot.get("sender").drained(threshold, options);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * Another sender on the same channel.
   *
   * @example
   * ```ts
   * import { bytesChannel } from "@ipc/channel";
   * const [tx, rx] = bytesChannel();
   * using copy = tx.clone();
   * tx.close();
   * rx.close();
   * ```
   */
  clone(): IpcBytesSender {
    return new IpcBytesSender(this.#slot.get("sender").clone());
  }

  /**
   * The type-erased sender; this one becomes unusable.
   *
   * @example
   * ```ts
   * import { bytesChannel } from "@ipc/channel";
   * const [tx, rx] = bytesChannel();
   * using again = tx.toOpaque().toBytes();
   * again.send(new Uint8Array(2));
   * console.log(rx.recvSync().length); // 2
   * rx.close();
   * ```
   */
  toOpaque(): OpaqueIpcSender {
    return wrapOpaqueSender(this.#slot.take("sender", "made opaque"));
  }

  /**
   * Releases the OS handle after queued messages are delivered.
   *
   * @example
   * ```ts
   * import { bytesChannel } from "@ipc/channel";
   * const [tx, rx] = bytesChannel();
   * tx.close();
   * rx.close();
   * ```
   */
  close(): void {
    this.#slot.close();
  }

  /** Same as {@linkcode IpcBytesSender.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * The receiving end of a raw bytes channel.
 *
 * @example
 * ```ts
 * import { bytesChannel } from "@ipc/channel";
 * const [tx, rx] = bytesChannel();
 * tx.send(new Uint8Array(4));
 * console.log(rx.recvSync().length); // 4
 * tx.close();
 * rx.close();
 * ```
 */
export class IpcBytesReceiver {
  readonly #slot: Slot<OsReceiver>;

  private constructor(os: OsReceiver) {
    this.#slot = new Slot(os);
  }

  static {
    wrapBytesReceiver = (os) => new IpcBytesReceiver(os);
    takeBytesReceiverOs = (endpoint, to) => endpoint.#slot.take("receiver", to);
    bytesReceiverOs = (endpoint) => endpoint.#slot.get("receiver");
  }

  /**
   * Waits for the next message; see {@linkcode IpcReceiver.recv}.
   *
   * @example
   * ```ts
   * import { bytesChannel } from "@ipc/channel";
   * const [tx, rx] = bytesChannel();
   * tx.send(new Uint8Array([9]));
   * console.log((await rx.recv())[0]); // 9
   * tx.close();
   * rx.close();
   * ```
   */
  async recv(options?: RecvOptions): Promise<Uint8Array> {
    return bytesOf(await this.#slot.get("receiver").recv(options));
  }

  /**
   * Blocks the thread until a message arrives.
   *
   * @example
   * ```ts
   * import { bytesChannel } from "@ipc/channel";
   * const [tx, rx] = bytesChannel();
   * tx.send(new Uint8Array(2));
   * console.log(rx.recvSync().length); // 2
   * tx.close();
   * rx.close();
   * ```
   */
  recvSync(): Uint8Array {
    return bytesOf(this.#slot.get("receiver").recvSync());
  }

  /**
   * Like {@linkcode IpcBytesReceiver.recvSync}, but the message lands in
   * `buffer`, which a loop can reuse for every message: on Linux a message
   * that fits one socket packet (about 208 KiB) is copied straight from the
   * receive buffer, with no allocation, so a stream of 64 KiB messages
   * arrives about twice as fast (see the README's figures); a larger one is
   * read into memory of its own first. Returns a view of `buffer`'s memory
   * that holds the message. A message longer than `buffer` is not lost or
   * cut: it comes in a new Uint8Array of its own instead, so check
   * `result.buffer` if you want to grow yours. The view's bytes are
   * overwritten by the next receive into the same buffer, so copy what you
   * keep.
   *
   * Throws a TypeError, and takes no message, if `buffer` is not a
   * Uint8Array or is detached or out of bounds.
   *
   * @example A stream received into one buffer
   * ```ts
   * import { bytesChannel } from "@ipc/channel";
   * const [tx, rx] = bytesChannel();
   * tx.send(new Uint8Array([1, 2, 3]));
   * const buffer = new Uint8Array(64 * 1024);
   * const message = rx.recvSyncInto(buffer);
   * console.log(message.length, message.buffer === buffer.buffer); // 3 true
   * tx.close();
   * rx.close();
   * ```
   */
  recvSyncInto(buffer: Uint8Array): Uint8Array {
    // Checked before the message is taken, so that a bad buffer loses none.
    const into = callerBytes(
      buffer,
      "IpcBytesReceiver.recvSyncInto",
      typeError,
    );
    return bytesInto(this.#slot.get("receiver").recvSync(LEND), into);
  }

  /**
   * {@linkcode IpcBytesReceiver.tryRecv} into `buffer`, as
   * {@linkcode IpcBytesReceiver.recvSyncInto} does; throws kind "Empty"
   * when no message is waiting.
   *
   * @example
   * ```ts
   * import { bytesChannel } from "@ipc/channel";
   * const [tx, rx] = bytesChannel();
   * const buffer = new Uint8Array(16);
   * tx.send(new Uint8Array(2));
   * console.log(rx.tryRecvInto(buffer).length); // 2
   * tx.close();
   * rx.close();
   * ```
   */
  tryRecvInto(buffer: Uint8Array): Uint8Array {
    const into = callerBytes(buffer, "IpcBytesReceiver.tryRecvInto", typeError);
    const message = this.#slot.get("receiver").tryRecv(LEND);
    if (message === undefined) throw empty();
    return bytesInto(message, into);
  }

  /**
   * The next message if one is waiting; throws kind "Empty" if none is.
   *
   * @example
   * ```ts
   * import { bytesChannel } from "@ipc/channel";
   * const [tx, rx] = bytesChannel();
   * tx.send(new Uint8Array(1));
   * console.log(rx.tryRecv().length); // 1
   * tx.close();
   * rx.close();
   * ```
   */
  tryRecv(): Uint8Array {
    const message = this.#slot.get("receiver").tryRecv();
    if (message === undefined) throw empty();
    return bytesOf(message);
  }

  /**
   * Waits at most `ms` milliseconds; rejects kind "Empty" after that.
   *
   * @example
   * ```ts
   * import { bytesChannel } from "@ipc/channel";
   * const [tx, rx] = bytesChannel();
   * await rx.tryRecvTimeout(5).catch((e) => console.log(e.kind)); // "Empty"
   * tx.close();
   * rx.close();
   * ```
   */
  async tryRecvTimeout(
    ms: number,
    options?: RecvOptions,
  ): Promise<Uint8Array> {
    const os = this.#slot.get("receiver");
    return bytesOf(await os.recv({ ...options, timeoutMs: ms }));
  }

  /**
   * Yields messages until every sender is gone.
   *
   * @example
   * ```ts
   * import { bytesChannel } from "@ipc/channel";
   * const [tx, rx] = bytesChannel();
   * tx.send(new Uint8Array(1));
   * tx.close();
   * for await (const bytes of rx) console.log(bytes.length);
   * rx.close();
   * ```
   */
  [Symbol.asyncIterator](): AsyncGenerator<Uint8Array, void, undefined> {
    return iterate(() => this.recv());
  }

  /**
   * The type-erased receiver; this one becomes unusable.
   *
   * @example
   * ```ts
   * import { bytesChannel } from "@ipc/channel";
   * const [tx, rx] = bytesChannel();
   * using again = rx.toOpaque().toBytes();
   * tx.send(new Uint8Array(3));
   * console.log(again.recvSync().length); // 3
   * tx.close();
   * ```
   */
  toOpaque(): OpaqueIpcReceiver {
    return wrapOpaqueReceiver(this.#slot.take("receiver", "made opaque"));
  }

  /**
   * Releases the OS handle; pending waits reject with kind "Closed".
   *
   * @example
   * ```ts
   * import { bytesChannel } from "@ipc/channel";
   * const [tx, rx] = bytesChannel();
   * rx.close();
   * tx.close();
   * ```
   */
  close(): void {
    this.#slot.close();
  }

  /** Same as {@linkcode IpcBytesReceiver.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * A sender whose message type is not known here (Rust's `OpaqueIpcSender`).
 * Sendable inside messages; {@linkcode OpaqueIpcSender.to} gives it a type.
 *
 * @example
 * ```ts
 * import { channel, type OpaqueIpcSender } from "@ipc/channel";
 * const [tx, rx] = channel<number>();
 * const opaque: OpaqueIpcSender = tx.toOpaque();
 * using typed = opaque.to<number>();
 * rx.close();
 * ```
 */
export class OpaqueIpcSender {
  readonly #slot: Slot<OsSender>;

  private constructor(os: OsSender) {
    this.#slot = new Slot(os);
  }

  static {
    wrapOpaqueSender = (os) => new OpaqueIpcSender(os);
    opaqueSenderOs = (endpoint) => endpoint.#slot.get("opaque sender");
  }

  /**
   * The typed sender; this opaque one becomes unusable. The type is not
   * checked: it is the caller's promise.
   *
   * @example
   * ```ts
   * import { channel } from "@ipc/channel";
   * const [tx, rx] = channel<string>();
   * using typed = tx.toOpaque().to<string>();
   * rx.close();
   * ```
   */
  to<T>(): IpcSender<T> {
    return wrapSender<T>(this.#slot.take("opaque sender", "made typed"));
  }

  /**
   * The bytes sender; this opaque one becomes unusable.
   *
   * @example
   * ```ts
   * import { bytesChannel } from "@ipc/channel";
   * const [tx, rx] = bytesChannel();
   * using bytes = tx.toOpaque().toBytes();
   * rx.close();
   * ```
   */
  toBytes(): IpcBytesSender {
    return wrapBytesSender(this.#slot.take("opaque sender", "made bytes"));
  }

  /**
   * Releases the OS handle.
   *
   * @example
   * ```ts
   * import { channel } from "@ipc/channel";
   * const [tx, rx] = channel<string>();
   * tx.toOpaque().close();
   * rx.close();
   * ```
   */
  close(): void {
    this.#slot.close();
  }

  /** Same as {@linkcode OpaqueIpcSender.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * A receiver whose message type is not known here.
 *
 * @example
 * ```ts
 * import { channel } from "@ipc/channel";
 * const [tx, rx] = channel<number>();
 * using typed = rx.toOpaque().to<number>();
 * tx.close();
 * ```
 */
export class OpaqueIpcReceiver {
  readonly #slot: Slot<OsReceiver>;

  private constructor(os: OsReceiver) {
    this.#slot = new Slot(os);
  }

  static {
    wrapOpaqueReceiver = (os) => new OpaqueIpcReceiver(os);
    opaqueReceiverOs = (endpoint) => endpoint.#slot.get("opaque receiver");
    takeOpaqueReceiverOs = (endpoint, to) =>
      endpoint.#slot.take("opaque receiver", to);
  }

  /**
   * The typed receiver; this opaque one becomes unusable.
   *
   * @example
   * ```ts
   * import { channel } from "@ipc/channel";
   * const [tx, rx] = channel<number>();
   * using typed = rx.toOpaque().to<number>();
   * tx.close();
   * ```
   */
  to<T>(): IpcReceiver<T> {
    return wrapReceiver<T>(this.#slot.take("opaque receiver", "made typed"));
  }

  /**
   * The bytes receiver; this opaque one becomes unusable.
   *
   * @example
   * ```ts
   * import { bytesChannel } from "@ipc/channel";
   * const [tx, rx] = bytesChannel();
   * using bytes = rx.toOpaque().toBytes();
   * tx.close();
   * ```
   */
  toBytes(): IpcBytesReceiver {
    return wrapBytesReceiver(
      this.#slot.take("opaque receiver", "made bytes"),
    );
  }

  /**
   * Releases the OS handle.
   *
   * @example
   * ```ts
   * import { channel } from "@ipc/channel";
   * const [tx, rx] = channel<number>();
   * rx.toOpaque().close();
   * tx.close();
   * ```
   */
  close(): void {
    this.#slot.close();
  }

  /** Same as {@linkcode OpaqueIpcReceiver.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

let codecInstance: Codec<OsTransferable, OsIncomingHandle> | undefined;

/** The process's codec, made on first use (its extensions are global). */
function codec(): Codec<OsTransferable, OsIncomingHandle> {
  codecInstance ??= new Codec<OsTransferable, OsIncomingHandle>([
    {
      Class: IpcSender,
      toHandle: senderOs,
      fromHandle: (h) => wrapSender(h.intoSender()),
    },
    {
      Class: IpcReceiver,
      toHandle: receiverOs,
      fromHandle: (h) => wrapReceiver(h.intoReceiver()),
    },
    {
      Class: IpcBytesSender,
      toHandle: bytesSenderOs,
      fromHandle: (h) => wrapBytesSender(h.intoSender()),
    },
    {
      Class: IpcBytesReceiver,
      toHandle: bytesReceiverOs,
      fromHandle: (h) => wrapBytesReceiver(h.intoReceiver()),
    },
    {
      Class: OpaqueIpcSender,
      toHandle: opaqueSenderOs,
      fromHandle: (h) => wrapOpaqueSender(h.intoSender()),
    },
    {
      Class: OpaqueIpcReceiver,
      toHandle: opaqueReceiverOs,
      fromHandle: (h) => wrapOpaqueReceiver(h.intoReceiver()),
    },
    {
      Class: IpcSharedMemory,
      toHandle: sharedMemoryOs,
      fromHandle: (h) => wrapSharedMemory(h.intoSharedMemory()),
    },
  ]);
  return codecInstance;
}

/**
 * A new typed channel (Rust's `ipc::channel()`).
 *
 * @example
 * ```ts
 * import { channel } from "@ipc/channel";
 * const [tx, rx] = channel<{ x: number }>();
 * tx.send({ x: 1 });
 * console.log(rx.recvSync().x); // 1
 * tx.close();
 * rx.close();
 * ```
 */
export function channel<T>(): [IpcSender<T>, IpcReceiver<T>] {
  const [sender, receiver] = platform().channel();
  return [wrapSender<T>(sender), wrapReceiver<T>(receiver)];
}

/**
 * A new raw bytes channel (Rust's `ipc::bytes_channel()`).
 *
 * @example
 * ```ts
 * import { bytesChannel } from "@ipc/channel";
 * const [tx, rx] = bytesChannel();
 * tx.send(new Uint8Array([1]));
 * console.log(rx.recvSync()[0]); // 1
 * tx.close();
 * rx.close();
 * ```
 */
export function bytesChannel(): [IpcBytesSender, IpcBytesReceiver] {
  const [sender, receiver] = platform().channel();
  return [wrapBytesSender(sender), wrapBytesReceiver(receiver)];
}

/** A client accepted by an {@linkcode IpcServer}. */
export interface IpcConnection<T> {
  /** Receives what this client sends. */
  receiver: IpcReceiver<T>;
  /** The client's first message. */
  first: T;
  /** Who the client is, as the kernel reports it (not the client's word). */
  peer: PeerCredentials;
}

/** Options for {@linkcode IpcServer}. */
export interface IpcServerOptions {
  /**
   * Accept clients running as another user. Off by default: only the
   * server's own user can even reach the name, and a client of another uid
   * (root, say) is refused unless this is set.
   */
  allowOtherUsers?: boolean;
}

/**
 * A server that accepts any number of clients, each on its own channel (the
 * Rust crate's missing multi-client listener). Clients connect with
 * {@linkcode IpcSender.connect}; a client is accepted once its first message
 * arrives, so a client that connects and dies, or sends garbage, never
 * disturbs the others.
 *
 * @example
 * ```ts
 * import { IpcSender, IpcServer } from "@ipc/channel";
 * using server = new IpcServer<string>();
 * using a = IpcSender.connect<string>(server.name);
 * using b = IpcSender.connect<string>(server.name);
 * a.send("from a");
 * b.send("from b");
 * for (let i = 0; i < 2; i++) {
 *   const { receiver, first, peer } = await server.accept();
 *   console.log(first, peer.pid === Deno.pid);
 *   receiver.close();
 * }
 * ```
 */
export class IpcServer<T> {
  /** What clients pass to {@linkcode IpcSender.connect}. */
  readonly name: string;
  readonly #os: OsServer;
  readonly #allowOtherUsers: boolean;
  readonly #ready: IpcConnection<T>[] = [];
  readonly #handshakes = new Set<IpcReceiver<T>>();
  readonly #waiters = new Waiters<IpcConnection<T>>("no client connected");
  #listening: AbortController | undefined;
  #closed = false;

  /** Listens at a fresh, unguessable name in a directory only this user can enter. */
  constructor(options: IpcServerOptions = {}) {
    this.#os = platform().listen();
    this.name = this.#os.name;
    this.#allowOtherUsers = options.allowOtherUsers ?? false;
  }

  /**
   * Waits for the next client whose first message has arrived.
   *
   * @example
   * ```ts
   * import { IpcSender, IpcServer } from "@ipc/channel";
   * using server = new IpcServer<number>();
   * using tx = IpcSender.connect<number>(server.name);
   * tx.send(1);
   * const { receiver, first } = await server.accept();
   * console.log(first); // 1
   * receiver.close();
   * ```
   */
  accept(options?: RecvOptions): Promise<IpcConnection<T>> {
    const ready = this.#ready.shift();
    if (ready !== undefined) return Promise.resolve(ready);
    if (this.#closed) {
      return Promise.reject(new IpcError("Closed", "the server is closed"));
    }
    const accepted = this.#waiters.add(undefined, options, () => {
      if (this.#waiters.size === 0) this.#listening?.abort();
    });
    this.#listen();
    return accepted;
  }

  /** Accepts connections while someone waits for one. */
  async #listen(): Promise<void> {
    if (this.#listening !== undefined) return;
    const uid = platform().processUid();
    while (!this.#closed && this.#waiters.size > 0) {
      this.#listening = new AbortController();
      let accepted;
      try {
        accepted = await this.#os.accept({ signal: this.#listening.signal });
      } catch (error) {
        if (this.#closed) break;
        // Aborted because nobody waited; someone may have come since.
        if (this.#listening.signal.aborted) continue;
        this.#listening = undefined;
        this.#waiters.rejectAll(error);
        return;
      }
      if (!this.#allowOtherUsers && accepted.peer.uid !== uid) {
        accepted.receiver.close();
        continue;
      }
      this.#handshake(wrapReceiver<T>(accepted.receiver), accepted.peer);
    }
    this.#listening = undefined;
  }

  #handshake(receiver: IpcReceiver<T>, peer: PeerCredentials): void {
    this.#handshakes.add(receiver);
    receiver.recv().then(
      (first) => {
        this.#handshakes.delete(receiver);
        const connection = { receiver, first, peer };
        if (this.#closed) receiver.close();
        else if (this.#waiters.size > 0) this.#waiters.resolveFirst(connection);
        else this.#ready.push(connection);
        // Nobody waits any more: stop listening, so an idle server keeps
        // neither the poller nor the process alive.
        if (this.#waiters.size === 0) this.#listening?.abort();
      },
      () => {
        // Died before its first message, or sent garbage: only it is dropped.
        this.#handshakes.delete(receiver);
        receiver.close();
      },
    );
  }

  /**
   * Yields clients until {@linkcode IpcServer.close}.
   *
   * @example
   * ```ts
   * import { IpcSender, IpcServer } from "@ipc/channel";
   * const server = new IpcServer<string>();
   * using tx = IpcSender.connect<string>(server.name);
   * tx.send("hi");
   * for await (const { receiver, first } of server) {
   *   console.log(first);
   *   receiver.close();
   *   server.close();
   * }
   * ```
   */
  async *[Symbol.asyncIterator](): AsyncGenerator<
    IpcConnection<T>,
    void,
    undefined
  > {
    for (;;) {
      try {
        yield await this.accept();
      } catch (error) {
        if (error instanceof IpcError && error.kind === "Closed") return;
        throw error;
      }
    }
  }

  /**
   * Stops listening, removes the name, and drops clients not yet accepted.
   *
   * @example
   * ```ts
   * import { IpcServer } from "@ipc/channel";
   * new IpcServer<string>().close();
   * ```
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#os.close();
    this.#listening?.abort();
    for (const receiver of this.#handshakes) receiver.close();
    this.#handshakes.clear();
    for (const { receiver } of this.#ready.splice(0)) receiver.close();
    this.#waiters.rejectAll(new IpcError("Closed", "the server was closed"));
  }

  /** Same as {@linkcode IpcServer.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Bootstraps a channel between two processes: publish
 * {@linkcode IpcOneShotServer.name} (e.g. in an environment variable), let
 * the other process {@linkcode IpcSender.connect} to it, then
 * {@linkcode IpcOneShotServer.accept}. Either side may go first. The name is
 * a socket in a fresh directory only this user can enter, removed on
 * `close()`, on accept, and at normal exit. For many clients, use
 * {@linkcode IpcServer}.
 *
 * @example
 * ```ts
 * import { IpcOneShotServer, IpcSender } from "@ipc/channel";
 * using server = new IpcOneShotServer<number>();
 * const tx = IpcSender.connect<number>(server.name);
 * tx.send(42);
 * const [rx, first] = await server.accept();
 * console.log(first); // 42
 * tx.close();
 * rx.close();
 * ```
 */
export class IpcOneShotServer<T> {
  /** What the client passes to {@linkcode IpcSender.connect}. */
  readonly name: string;
  readonly #server: IpcServer<T>;

  /** Listens at a fresh private name. */
  constructor() {
    this.#server = new IpcServer<T>();
    this.name = this.#server.name;
  }

  /**
   * Waits for the client and its first message. The server closes once a
   * client is accepted: one server, one client.
   *
   * @example
   * ```ts
   * import { IpcOneShotServer, IpcSender } from "@ipc/channel";
   * const server = new IpcOneShotServer<string>();
   * using tx = IpcSender.connect<string>(server.name);
   * tx.send("first");
   * const [rx, first] = await server.accept();
   * console.log(first);
   * rx.close();
   * ```
   */
  async accept(options?: RecvOptions): Promise<[IpcReceiver<T>, T]> {
    try {
      const { receiver, first } = await this.#server.accept(options);
      return [receiver, first];
    } finally {
      this.#server.close();
    }
  }

  /**
   * Stops listening and removes the name.
   *
   * @example
   * ```ts
   * import { IpcOneShotServer } from "@ipc/channel";
   * new IpcOneShotServer<string>().close();
   * ```
   */
  close(): void {
    this.#server.close();
  }

  /** Same as {@linkcode IpcOneShotServer.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** The environment variable that carries a spawned child's bootstrap name. */
const PARENT_ENV = "IPC_CHANNEL_PARENT";

/** What a child sends its parent first: the way back to it. */
interface Hello {
  toChild: IpcSender<unknown>;
}

/**
 * What the parent sends first on the way back, once it holds it. On Windows
 * the parent takes the hello's sender out of the child while reading the
 * hello, so a child that connected and exited at once would have its hello
 * dropped as from a dead process: connectToParent() waits for this.
 */
const SPAWN_ACK = "@ipc/channel: connected";

/** Options for {@linkcode spawn}. */
export interface SpawnOptions {
  /** Arguments after the module, in the child's `Deno.args`. */
  args?: string[];
  /**
   * Flags for `deno run`, e.g. `["--allow-read"]`. `--allow-ffi` is added
   * when neither it nor `-A` is present: the child needs it to connect.
   */
  denoArgs?: string[];
  /**
   * Extra environment variables for the child. `DENO_NO_UPDATE_CHECK=1` is
   * set unless given here: otherwise every worker would start its own
   * background check for a new Deno release (a DNS lookup and an HTTPS
   * fetch) and could print the upgrade notice on the shared stderr.
   */
  env?: Record<string, string>;
  /** The child's stdin/stdout/stderr; inherited by default. */
  stdin?: "inherit" | "piped" | "null";
  /** See {@linkcode SpawnOptions.stdin}. */
  stdout?: "inherit" | "piped" | "null";
  /** See {@linkcode SpawnOptions.stdin}. */
  stderr?: "inherit" | "piped" | "null";
  /** Gives up (and kills the child) if it has not connected when this aborts. */
  signal?: AbortSignal;
}

/** A child started by {@linkcode spawn}, with typed channels both ways. */
export interface SpawnedProcess<Send, Recv> extends AsyncDisposable {
  /** Sends to the child's `connectToParent().receiver`. */
  sender: IpcSender<Send>;
  /** Receives what the child's `connectToParent().sender` sends. */
  receiver: IpcReceiver<Recv>;
  /** The child's process id. */
  pid: number;
  /** Resolves when the child exits, with its code or signal. */
  status: Promise<Deno.CommandStatus>;
  /** The underlying process, for piped stdio. */
  process: Deno.ChildProcess;
  /** Sends the child a signal (default SIGTERM); does nothing once it has exited. */
  kill(signal?: Deno.Signal): void;
}

function describeExit(status: Deno.CommandStatus): string {
  return status.signal !== null
    ? `killed by ${status.signal}`
    : `exit code ${status.code}`;
}

/**
 * Starts a Deno module in a new process and connects to it: the child calls
 * {@linkcode connectToParent}. Resolves once the child has connected. The
 * bootstrap name travels in the child's environment (readable only by this
 * user), never on its command line, and only the spawned pid may use it.
 * Needs `--allow-run` (and `--allow-read` for `Deno.execPath()`).
 *
 * @example
 * ```ts ignore
 * import { spawn } from "@ipc/channel";
 * await using worker = await spawn<number, number>("./square.ts");
 * worker.sender.send(7);
 * console.log(await worker.receiver.recv()); // 49
 * ```
 */
export async function spawn<Send, Recv>(
  module: string | URL,
  options: SpawnOptions = {},
): Promise<SpawnedProcess<Send, Recv>> {
  using server = new IpcServer<Hello>();
  const denoArgs = [...(options.denoArgs ?? [])];
  if (
    !denoArgs.some((a) =>
      a === "-A" || a === "--allow-all" || a.startsWith("--allow-ffi")
    )
  ) {
    denoArgs.push("--allow-ffi");
  }
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", ...denoArgs, String(module), ...(options.args ?? [])],
    env: {
      DENO_NO_UPDATE_CHECK: "1",
      ...options.env,
      [PARENT_ENV]: server.name,
    },
    stdin: options.stdin ?? "inherit",
    stdout: options.stdout ?? "inherit",
    stderr: options.stderr ?? "inherit",
  }).spawn();
  let exited = false;
  const status = child.status.then((status) => {
    exited = true;
    return status;
  });
  const kill = (signal: Deno.Signal = "SIGTERM") => {
    if (exited) return;
    try {
      child.kill(signal);
    } catch {
      // It exited between the check and the call.
    }
  };
  let connection: IpcConnection<Hello>;
  try {
    const gaveUp = new AbortController();
    const onAbort = () => gaveUp.abort(options.signal?.reason);
    options.signal?.addEventListener("abort", onAbort, { once: true });
    status.then((s) =>
      gaveUp.abort(
        new IpcError(
          "Disconnected",
          `the child exited (${describeExit(s)}) before connecting`,
        ),
      )
    );
    try {
      for (;;) {
        connection = await server.accept({ signal: gaveUp.signal });
        if (
          connection.peer.pid === child.pid &&
          connection.first?.toChild instanceof IpcSender
        ) break;
        // Turned away: its connectToParent() must see Disconnected, not wait
        // for the ack, so nothing of it is kept.
        const stray = (connection.first as { toChild?: unknown } | undefined)
          ?.toChild;
        if (stray instanceof IpcSender) stray.close();
        connection.receiver.close();
      }
    } finally {
      options.signal?.removeEventListener("abort", onAbort);
    }
    try {
      connection.first.toChild.send(SPAWN_ACK);
    } catch (error) {
      // It died right after its hello.
      connection.first.toChild.close();
      connection.receiver.close();
      throw error;
    }
  } catch (error) {
    kill("SIGKILL");
    await status;
    throw error;
  }
  const sender = connection.first.toChild as IpcSender<Send>;
  const receiver = connection.receiver as unknown as IpcReceiver<Recv>;
  return {
    sender,
    receiver,
    pid: child.pid,
    status,
    process: child,
    kill,
    async [Symbol.asyncDispose]() {
      sender.close();
      receiver.close();
      kill();
      await status;
    },
  };
}

/**
 * In a process started by {@linkcode spawn}: the channels to the parent.
 * Resolves once the parent holds its end, so the process may send and exit
 * at once. Rejects kind "Io" in a process that `spawn` did not start;
 * "Disconnected" if spawn() turned this process away (it was not the child
 * spawned) or the parent died first; "Serialization" if the parent's first
 * message is not spawn()'s acknowledgement (another version of this module).
 * On Windows a parent that dies before reading the hello leaves this
 * waiting, since the hello's unread sender keeps the receiver open. Once the
 * parent dies, `receiver.recv()` rejects "Disconnected".
 *
 * @example
 * ```ts ignore
 * import { connectToParent } from "@ipc/channel";
 * const { sender, receiver } = await connectToParent<number, number>();
 * for await (const n of receiver) sender.send(n * n);
 * ```
 */
export function connectToParent<Send, Recv>(): Promise<
  { sender: IpcSender<Send>; receiver: IpcReceiver<Recv> }
> {
  try {
    const name = platform().takeEnv(PARENT_ENV);
    if (!name) {
      throw new IpcError(
        "Io",
        `connectToParent(): this process was not started by spawn() (${PARENT_ENV} is not set)`,
      );
    }
    const hello = IpcSender.connect<Hello>(name);
    const [toChild, receiver] = channel<Recv>();
    try {
      hello.send({ toChild: toChild as IpcSender<unknown> });
    } finally {
      // Only the parent holds the way in: its death ends our receiver.
      toChild.close();
    }
    const sender = hello.toOpaque().to<Send>();
    return (receiver as IpcReceiver<unknown>).recv().then(
      (ack) => {
        if (ack !== SPAWN_ACK) {
          throw new IpcError(
            "Serialization",
            "connectToParent(): the parent's first message is not spawn()'s",
          );
        }
        return { sender, receiver };
      },
    ).catch((error) => {
      sender.close();
      receiver.close();
      throw error;
    });
  } catch (error) {
    return Promise.reject(error);
  }
}

// ---------------------------------------------------------------------------
// Shared memory, opaque messages, receiver sets and the router.

let wrapSharedMemory: (os: OsSharedMemory) => IpcSharedMemory;
let sharedMemoryOs: (shm: IpcSharedMemory) => OsSharedMemory;

/**
 * A region of memory shared between processes (Rust's `IpcSharedMemory`): a
 * memfd mapped `MAP_SHARED`. It travels inside messages at any depth as a
 * descriptor, and the receiver maps the same pages without copying. Sending
 * it keeps it usable here.
 *
 * Unlike the Rust crate, which exposes it read-only, {@linkcode bytes} is a
 * live, writable view: a write on one side is seen by every process that
 * maps the region. Coordinate writers yourself (e.g. by passing the region
 * back and forth, as in a ping-pong).
 *
 * Views taken from {@linkcode bytes} stay safe to use after
 * {@linkcode close} or {@linkcode take}: the memory is released only once no
 * view can reach it, so a kept view never reads freed memory (it simply is
 * no longer the channel's business).
 *
 * @example Filling a region and sending it
 * ```ts
 * import { channel, IpcSharedMemory } from "@ipc/channel";
 * const [tx, rx] = channel<{ frame: IpcSharedMemory }>();
 * using shm = IpcSharedMemory.fromBytes(new Uint8Array([1, 2, 3]));
 * tx.send({ frame: shm });
 * using received = (await rx.recv()).frame;
 * received.bytes[0] = 9;
 * console.log(shm.bytes[0]); // 9: the same pages
 * tx.close();
 * rx.close();
 * ```
 */
export class IpcSharedMemory {
  #os: OsSharedMemory;

  private constructor(os: OsSharedMemory) {
    this.#os = os;
  }

  static {
    wrapSharedMemory = (os) => new IpcSharedMemory(os);
    sharedMemoryOs = (shm) => {
      shm.#os.bytes; // throws "Closed" for a closed region
      return shm.#os;
    };
  }

  /**
   * A new region holding a copy of `bytes`.
   *
   * @example
   * ```ts
   * import { IpcSharedMemory } from "@ipc/channel";
   * using shm = IpcSharedMemory.fromBytes(new TextEncoder().encode("hi"));
   * console.log(shm.length); // 2
   * ```
   */
  static fromBytes(bytes: Uint8Array): IpcSharedMemory {
    const view = callerBytes(bytes, "IpcSharedMemory.fromBytes", typeError);
    const os = platform().sharedMemory(view.length);
    if (view.length > 0) os.bytes.set(view);
    return new IpcSharedMemory(os);
  }

  /**
   * A new region of `length` bytes, each set to `byte`.
   *
   * @example
   * ```ts
   * import { IpcSharedMemory } from "@ipc/channel";
   * using shm = IpcSharedMemory.fromByte(0xff, 4096);
   * console.log(shm.bytes[4095]); // 255
   * ```
   */
  static fromByte(byte: number, length: number): IpcSharedMemory {
    if (!Number.isInteger(byte) || byte < 0 || byte > 255) {
      throw new RangeError(`a byte is an integer from 0 to 255, not ${byte}`);
    }
    const os = platform().sharedMemory(length);
    if (byte !== 0 && length > 0) os.bytes.fill(byte);
    return new IpcSharedMemory(os);
  }

  /**
   * A live, zero-copy view of the region; writes are seen by every process
   * that maps it. Throws kind "Closed" after {@linkcode close} or
   * {@linkcode take}.
   *
   * @example
   * ```ts
   * import { IpcSharedMemory } from "@ipc/channel";
   * using shm = IpcSharedMemory.fromByte(0, 8);
   * shm.bytes[0] = 1;
   * console.log(shm.bytes[0]); // 1
   * ```
   */
  get bytes(): Uint8Array {
    return this.#os.bytes;
  }

  /**
   * Size of the region in bytes.
   *
   * @example
   * ```ts
   * import { IpcSharedMemory } from "@ipc/channel";
   * using shm = IpcSharedMemory.fromByte(1, 100);
   * console.log(shm.length); // 100
   * ```
   */
  get length(): number {
    return this.#os.length;
  }

  /**
   * A copy of the contents, releasing the region (like Rust's `take()`).
   *
   * @example
   * ```ts
   * import { IpcSharedMemory } from "@ipc/channel";
   * const shm = IpcSharedMemory.fromBytes(new Uint8Array([4, 5]));
   * console.log(shm.take()); // Uint8Array(2) [4, 5]
   * ```
   */
  take(): Uint8Array {
    return this.#os.take();
  }

  /**
   * Releases this handle on the region. Other processes keep theirs; views
   * already taken stay safe to read.
   *
   * @example
   * ```ts
   * import { IpcSharedMemory } from "@ipc/channel";
   * const shm = IpcSharedMemory.fromByte(0, 16);
   * shm.close();
   * ```
   */
  close(): void {
    this.#os.close();
  }

  /** Same as {@linkcode IpcSharedMemory.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

const unreadMessages = new FinalizationRegistry<OsIncomingHandle[]>(
  (handles) => {
    for (const handle of handles) handle.close();
  },
);

let wrapMessage: (message: OsMessage, raw: boolean) => OpaqueIpcMessage;

/**
 * A message whose type is not known yet (Rust's `IpcMessage`), as a
 * {@linkcode IpcReceiverSet} returns it. {@linkcode OpaqueIpcMessage.to}
 * decodes it; endpoints and shared memory inside are adopted then. The
 * handles of a message never decoded are released by
 * {@linkcode OpaqueIpcMessage.close}, or when it is garbage-collected.
 *
 * @example
 * ```ts
 * import { channel, IpcReceiverSet } from "@ipc/channel";
 * const [tx, rx] = channel<string>();
 * using set = new IpcReceiverSet();
 * set.add(rx);
 * tx.send("hi");
 * for (const result of await set.select()) {
 *   if (result.type === "message") console.log(result.message.to<string>());
 * }
 * tx.close();
 * ```
 */
export class OpaqueIpcMessage {
  readonly #data: Uint8Array;
  readonly #raw: boolean;
  #handles: OsIncomingHandle[] | undefined;
  #adopted = false;

  private constructor(message: OsMessage, raw: boolean) {
    this.#data = message.data;
    this.#raw = raw;
    if (raw) {
      // A bytes channel carries no endpoints; anything else is a stray.
      for (const handle of message.handles) handle.close();
    } else if (message.handles.length > 0) {
      this.#handles = message.handles;
      unreadMessages.register(this, message.handles, this);
    }
  }

  static {
    wrapMessage = (message, raw) => new OpaqueIpcMessage(message, raw);
  }

  /**
   * The message's raw bytes (for a member added as an
   * {@linkcode IpcBytesReceiver}, the bytes that were sent).
   *
   * @example
   * ```ts
   * import { bytesChannel, IpcReceiverSet } from "@ipc/channel";
   * const [tx, rx] = bytesChannel();
   * using set = new IpcReceiverSet();
   * set.add(rx);
   * tx.send(new Uint8Array([7]));
   * const [result] = await set.select();
   * if (result.type === "message") console.log(result.message.bytes[0]); // 7
   * tx.close();
   * ```
   */
  get bytes(): Uint8Array {
    return ownedBytes(this.#data);
  }

  /**
   * Decodes the message as a `T` (not checked: the caller's promise). A
   * message that carries endpoints or shared memory can be decoded once;
   * later calls throw kind "Closed". A message without them can be decoded
   * again.
   *
   * @example
   * ```ts
   * import { channel, IpcReceiverSet } from "@ipc/channel";
   * const [tx, rx] = channel<number[]>();
   * using set = new IpcReceiverSet();
   * set.add(rx);
   * tx.send([1, 2]);
   * const [result] = await set.select();
   * if (result.type === "message") console.log(result.message.to<number[]>());
   * tx.close();
   * ```
   */
  to<T>(): T {
    if (this.#raw) return ownedBytes(this.#data) as T;
    const handles = this.#handles;
    if (handles !== undefined) {
      this.#handles = undefined;
      this.#adopted = true;
      unreadMessages.unregister(this);
      return codec().decode(this.#data, handles) as T;
    }
    if (this.#adopted) {
      throw new IpcError(
        "Closed",
        "this message's endpoints were adopted (or released) already",
      );
    }
    return codec().decode(this.#data, []) as T;
  }

  /**
   * Releases the endpoints and shared memory of a message not decoded.
   *
   * @example
   * ```ts
   * import { channel, IpcReceiverSet } from "@ipc/channel";
   * const [tx, rx] = channel<number>();
   * using set = new IpcReceiverSet();
   * set.add(rx);
   * tx.send(1);
   * for (const result of set.trySelect()) {
   *   if (result.type === "message") result.message.close();
   * }
   * tx.close();
   * ```
   */
  close(): void {
    const handles = this.#handles;
    if (handles === undefined) return;
    this.#handles = undefined;
    this.#adopted = true;
    unreadMessages.unregister(this);
    for (const handle of handles) handle.close();
  }

  /** Same as {@linkcode OpaqueIpcMessage.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** One result of {@linkcode IpcReceiverSet.select}. */
export type IpcSelectionResult =
  | {
    /** A message arrived on member `id`. */
    type: "message";
    /** The id {@linkcode IpcReceiverSet.add} returned. */
    id: number;
    /** The message, decoded with {@linkcode OpaqueIpcMessage.to}. */
    message: OpaqueIpcMessage;
  }
  | {
    /** Every sender of member `id` is gone; it has left the set. */
    type: "closed";
    /** The id {@linkcode IpcReceiverSet.add} returned. */
    id: number;
  };

function selection(
  results: ReturnType<OsReceiverSet["trySelect"]>,
  rawIds: ReadonlySet<number>,
): IpcSelectionResult[] {
  return results.map((result) =>
    result.type === "message"
      ? {
        type: "message",
        id: result.id,
        message: wrapMessage(result.message, rawIds.has(result.id)),
      }
      : result
  );
}

/**
 * Waits on many receivers at once (Rust's `IpcReceiverSet`), with one OS
 * wait for the whole set. A receiver added to the set moves into it: its old
 * handle throws kind "Closed". A closed channel is reported once, as a
 * `"closed"` result, and leaves the set.
 *
 * @example Serving several channels
 * ```ts
 * import { channel, IpcReceiverSet } from "@ipc/channel";
 * const [tx1, rx1] = channel<string>();
 * const [tx2, rx2] = channel<number>();
 * using set = new IpcReceiverSet();
 * const words = set.add(rx1);
 * set.add(rx2);
 * tx1.send("a");
 * tx2.send(1);
 * tx1.close();
 * for (const result of await set.select()) {
 *   if (result.type === "closed") continue;
 *   console.log(result.id === words ? result.message.to<string>() : result.message.to<number>());
 * }
 * tx2.close();
 * ```
 */
export class IpcReceiverSet {
  readonly #os: OsReceiverSet;
  /** Members added as bytes receivers: their messages are not decoded. */
  readonly #rawIds = new Set<number>();

  /** An empty set. */
  constructor() {
    this.#os = platform().receiverSet();
  }

  /**
   * Moves `receiver` into the set and returns its id.
   *
   * @example
   * ```ts
   * import { channel, IpcReceiverSet } from "@ipc/channel";
   * const [tx, rx] = channel<number>();
   * using set = new IpcReceiverSet();
   * console.log(typeof set.add(rx)); // "number"
   * tx.close();
   * ```
   */
  add<T>(receiver: IpcReceiver<T> | IpcBytesReceiver): number {
    const to = "added to a receiver set";
    if (receiver instanceof IpcBytesReceiver) {
      const id = this.#os.add(takeBytesReceiverOs(receiver, to));
      this.#rawIds.add(id);
      return id;
    }
    if (!(receiver instanceof IpcReceiver)) {
      throw new IpcError(
        "Io",
        "IpcReceiverSet.add() takes an IpcReceiver or an IpcBytesReceiver; use addOpaque() for an OpaqueIpcReceiver",
      );
    }
    return this.#os.add(
      takeReceiverOs(receiver as IpcReceiver<unknown>, to),
    );
  }

  /**
   * Moves a type-erased receiver into the set and returns its id.
   *
   * @example
   * ```ts
   * import { channel, IpcReceiverSet } from "@ipc/channel";
   * const [tx, rx] = channel<number>();
   * using set = new IpcReceiverSet();
   * set.addOpaque(rx.toOpaque());
   * tx.close();
   * ```
   */
  addOpaque(receiver: OpaqueIpcReceiver): number {
    return this.#os.add(
      takeOpaqueReceiverOs(receiver, "added to a receiver set"),
    );
  }

  /**
   * Removes member `id` and closes its receiver (the Rust crate has no
   * `remove`, servo/ipc-channel#399). Throws kind "Io" for an unknown id.
   *
   * @example
   * ```ts
   * import { channel, IpcReceiverSet } from "@ipc/channel";
   * const [tx, rx] = channel<number>();
   * using set = new IpcReceiverSet();
   * set.remove(set.add(rx));
   * console.log(set.size); // 0
   * tx.close();
   * ```
   */
  remove(id: number): void {
    this.#os.remove(id);
    this.#rawIds.delete(id);
  }

  /**
   * How many receivers are in the set.
   *
   * @example
   * ```ts
   * import { IpcReceiverSet } from "@ipc/channel";
   * using set = new IpcReceiverSet();
   * console.log(set.size); // 0
   * ```
   */
  get size(): number {
    return this.#os.size;
  }

  /**
   * Waits until something happens, then returns every waiting message (in
   * order per member) and every closed member. Rejects kind "Empty" on an
   * empty set, which could never wake.
   *
   * @example
   * ```ts
   * import { channel, IpcReceiverSet } from "@ipc/channel";
   * const [tx, rx] = channel<number>();
   * using set = new IpcReceiverSet();
   * set.add(rx);
   * tx.close();
   * console.log((await set.select())[0].type); // "closed"
   * ```
   */
  async select(options?: RecvOptions): Promise<IpcSelectionResult[]> {
    return selection(await this.#os.select(options), this.#rawIds);
  }

  /**
   * What {@linkcode IpcReceiverSet.select} would return now; throws kind
   * "Empty" if nothing is waiting.
   *
   * @example
   * ```ts
   * import { channel, IpcReceiverSet } from "@ipc/channel";
   * const [tx, rx] = channel<number>();
   * using set = new IpcReceiverSet();
   * set.add(rx);
   * try {
   *   set.trySelect();
   * } catch (e) {
   *   console.log((e as { kind: string }).kind); // "Empty"
   * }
   * tx.close();
   * ```
   */
  trySelect(): IpcSelectionResult[] {
    const results = this.#os.trySelect();
    if (results.length === 0) throw empty();
    return selection(results, this.#rawIds);
  }

  /**
   * Like {@linkcode IpcReceiverSet.select}, but rejects kind "Empty" after
   * `ms` milliseconds.
   *
   * @example
   * ```ts
   * import { channel, IpcReceiverSet } from "@ipc/channel";
   * const [tx, rx] = channel<number>();
   * using set = new IpcReceiverSet();
   * set.add(rx);
   * await set.trySelectTimeout(10).catch((e) => console.log(e.kind)); // "Empty"
   * tx.close();
   * ```
   */
  async trySelectTimeout(
    ms: number,
    options?: RecvOptions,
  ): Promise<IpcSelectionResult[]> {
    return selection(
      await this.#os.select({ ...options, timeoutMs: ms }),
      this.#rawIds,
    );
  }

  /**
   * Closes every receiver in the set; pending selects reject kind "Closed".
   *
   * @example
   * ```ts
   * import { IpcReceiverSet } from "@ipc/channel";
   * new IpcReceiverSet().close();
   * ```
   */
  close(): void {
    this.#os.close();
  }

  /** Same as {@linkcode IpcReceiverSet.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** Options for a {@linkcode RouterProxy}. */
export interface RouterOptions {
  /**
   * Called with what a route callback threw (or a message that could not be
   * decoded); the router keeps going. Defaults to `console.error`.
   */
  onError?: (error: unknown) => void;
}

/**
 * Routes receivers to callbacks (Rust's `RouterProxy`): one
 * {@linkcode IpcReceiverSet} and one wait serve every route. Callbacks run on
 * the event loop, in message order per receiver. A callback that throws does
 * not stop the router; a route ends when its channel disconnects. While no
 * route is left, the router waits on nothing, so it never keeps the process
 * alive by itself.
 *
 * @example
 * ```ts
 * import { channel, RouterProxy } from "@ipc/channel";
 * const router = new RouterProxy();
 * const [tx, rx] = channel<string>();
 * const { promise, resolve } = Promise.withResolvers<string>();
 * router.addTypedRoute(rx, resolve);
 * tx.send("routed");
 * console.log(await promise); // "routed"
 * tx.close();
 * router.shutdown();
 * ```
 */
export class RouterProxy {
  #set: IpcReceiverSet | undefined;
  readonly #routes = new Map<number, (message: OpaqueIpcMessage) => void>();
  readonly #onError: (error: unknown) => void;
  #running = false;
  #shutDown = false;

  /** A router of its own; most programs use {@linkcode ROUTER}. */
  constructor(options?: RouterOptions) {
    this.#onError = options?.onError ?? ((error) => console.error(error));
  }

  /**
   * Moves `receiver` into the router and calls `callback` with each message,
   * until every sender of the channel is gone. Throws kind "Closed" after
   * {@linkcode RouterProxy.shutdown}.
   *
   * @example
   * ```ts
   * import { channel, RouterProxy } from "@ipc/channel";
   * const router = new RouterProxy();
   * const [tx, rx] = channel<number>();
   * router.addTypedRoute(rx, (n) => console.log(n));
   * tx.close();
   * router.shutdown();
   * ```
   */
  addTypedRoute<T>(
    receiver: IpcReceiver<T>,
    callback: (value: T) => void,
  ): void {
    if (this.#shutDown) {
      throw new IpcError("Closed", "the router was shut down");
    }
    this.#set ??= new IpcReceiverSet();
    const id = this.#set.add(receiver);
    this.#routes.set(id, (message) => callback(message.to<T>()));
    if (!this.#running) this.#run();
  }

  /**
   * How many routes are live.
   *
   * @example
   * ```ts
   * import { RouterProxy } from "@ipc/channel";
   * console.log(new RouterProxy().size); // 0
   * ```
   */
  get size(): number {
    return this.#routes.size;
  }

  async #run(): Promise<void> {
    this.#running = true;
    let failures = 0;
    try {
      while (this.#routes.size > 0 && this.#set !== undefined) {
        let results: IpcSelectionResult[];
        try {
          results = await this.#set.select();
          failures = 0;
        } catch (error) {
          if (error instanceof IpcError && error.kind === "Closed") return;
          this.#onError(error);
          // Most failures belong to one message and the next select is
          // fine; one that repeats must not spin the event loop.
          if (++failures > 1) {
            await new Promise((resolve) =>
              setTimeout(resolve, Math.min(2 ** failures, 1000))
            );
          }
          continue;
        }
        for (const result of results) {
          if (result.type === "closed") {
            this.#routes.delete(result.id);
            continue;
          }
          const route = this.#routes.get(result.id);
          try {
            if (route === undefined) result.message.close();
            else route(result.message);
          } catch (error) {
            this.#onError(error);
          }
        }
      }
    } finally {
      this.#running = false;
    }
  }

  /**
   * Closes every routed receiver and stops the router; idempotent.
   *
   * @example
   * ```ts
   * import { RouterProxy } from "@ipc/channel";
   * const router = new RouterProxy();
   * router.shutdown();
   * router.shutdown();
   * ```
   */
  shutdown(): void {
    this.#shutDown = true;
    this.#routes.clear();
    this.#set?.close();
    this.#set = undefined;
  }
}

/**
 * The process's router (Rust's `ROUTER`).
 *
 * @example
 * ```ts
 * import { channel, ROUTER } from "@ipc/channel";
 * const [tx, rx] = channel<string>();
 * ROUTER.addTypedRoute(rx, (text) => console.log(text));
 * tx.send("hello");
 * tx.close();
 * ```
 */
export const ROUTER: RouterProxy = new RouterProxy();
