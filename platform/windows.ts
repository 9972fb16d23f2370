/**
 * Windows backend: message-mode named pipes through kernel32, handles passed
 * by the receiver duplicating them out of the sender, sections for shared
 * memory, and one event waiter (`windows_wait.ts`) for every pending call.
 *
 * Pipes. A channel is one pipe instance named
 * `\\.\pipe\ipc-channel-<128 random bits>`, created inbound-only with
 * `FILE_FLAG_FIRST_PIPE_INSTANCE` (nobody can have made it first) and
 * `PIPE_REJECT_REMOTE_CLIENTS`, in message mode: every `WriteFile` is one
 * message, read whole, so concurrent senders never interleave and a message
 * larger than the pipe buffer simply waits in the writer's pending write
 * until the reader takes it (no out-of-band body is needed). The server end
 * is the receiver; senders are client handles (`CreateFileW`, write-only,
 * with an identification-only security QoS so a server cannot impersonate
 * the client). Cloning a sender duplicates its handle.
 *
 * Frame (little-endian): bytes 0–1 magic `0x4950`, byte 2 version 1, byte 3
 * 0, bytes 4–7 handle count, bytes 8–11 the sender's process id, 12–15 zero;
 * then per handle 16 bytes: kind (1 sender, 2 receiver, 3 shared memory),
 * three zero bytes, the handle value in the sender's process (u32: Windows
 * handle values fit 32 bits), and the shared-memory size (u64); then the body.
 *
 * Handle transfer (the fix for the Rust crate's #310/#388). The sender does
 * not guess the receiving process: it puts handles that the message owns
 * into the frame, as values in its own process — a duplicate for a sender or
 * a section, the handle itself for a receiver — and the reader, whichever
 * process holds the receiver by then, duplicates each one out of the sender
 * with `DUPLICATE_CLOSE_SOURCE` (Python's multiprocessing "steal" scheme).
 * Who closes what:
 * - delivered and read: the reader's steal closes the sender's copy;
 * - the write failed (receiver gone before the message entered the pipe):
 *   the sender closes its copies at once;
 * - the receiver is closed with messages unread: `close()` first reads what
 *   is waiting and steals-and-closes every handle in it;
 * - the receiving process dies with messages unread: nobody can reach those
 *   copies any more; they stay open in the sending process until it exits
 *   (so a sender endpoint in such a message keeps its channel open that
 *   long, and a receiver endpoint in it keeps its senders from seeing
 *   Disconnected that long);
 * - the sending process exits before the message is read: its copies die
 *   with it, and the reader gets kind "Io" (the handles cannot be stolen).
 *   A process must outlive the reading of messages that carry its endpoints.
 *
 * Waiting. A pending `recv` is a zero-byte overlapped `ReadFile`: in message
 * mode it completes (`ERROR_MORE_DATA`, consuming nothing) when a message
 * arrives, or fails when every sender is gone. Writes that the pipe cannot
 * take at once stay pending (overlapped) while later sends queue in user
 * space, so `send` never blocks. All of these signal events that one poller
 * waits on. Nothing uses an I/O completion port (see `windows_wait.ts`).
 * The pipe calls are made through ntdll (`NtReadFile`, `NtWriteFile`,
 * `NtFsControlFile` for peek and listen), whose outcome is the status they
 * return: what kernel32 leaves in the thread's last error can be overwritten
 * before a second FFI call reads it, and a pending write read as a failed
 * one would drop every queued message (issue 6).
 *
 * Servers keep {@linkcode BACKLOG} listening instances of their pipe, and
 * make a fresh instance for every accepted client. Peer credentials: `pid`
 * comes from `GetNamedPipeClientProcessId`; Windows has no uid/gid, so
 * `uid` and `gid` are -1, and `processUid()` is -1 too. Only the same user
 * (and administrators and SYSTEM) can connect: the default security of a
 * named pipe gives everyone else read access only, and clients must write.
 *
 * @module
 */

import {
  DUPLICATE_CLOSE_SOURCE,
  DUPLICATE_SAME_ACCESS,
  ERROR_IO_INCOMPLETE,
  ERROR_IO_PENDING,
  ERROR_MORE_DATA,
  ERROR_NO_DATA,
  ERROR_PIPE_BUSY,
  ERROR_PIPE_CONNECTED,
  FILE_FLAG_FIRST_PIPE_INSTANCE,
  FILE_FLAG_OVERLAPPED,
  FILE_PIPE_PEEK_BUFFER,
  FILE_READ_ATTRIBUTES,
  FSCTL_PIPE_LISTEN,
  FSCTL_PIPE_PEEK,
  GENERIC_WRITE,
  handle,
  INFINITE,
  INVALID_HANDLE_VALUE,
  IO_STATUS_BLOCK_SIZE,
  kernel32,
  lastError,
  ntdll,
  ntStatusToError,
  OPEN_EXISTING,
  OVERLAPPED,
  pinned,
  PIPE_ACCESS_INBOUND,
  PIPE_READMODE_MESSAGE,
  PIPE_REJECT_REMOTE_CLIENTS,
  PIPE_TYPE_MESSAGE,
  PIPE_UNLIMITED_INSTANCES,
  PROCESS_DUP_HANDLE,
  SECURITY_IDENTIFICATION_ONLY,
  STATUS_BUFFER_OVERFLOW,
  STATUS_PENDING,
  takeEnv,
  WAIT_FAILED,
  wideString,
} from "../ffi/kernel32.ts";
import { poller } from "./windows_wait.ts";
import { isDisconnect, winError } from "./windows_errors.ts";
import { WindowsReceiverSet } from "./windows_set.ts";
import { WindowsSharedMemory } from "./windows_shm.ts";
import {
  IpcError,
  type OsAccepted,
  type OsIncomingHandle,
  type OsMessage,
  type OsPlatform,
  type OsReceiver,
  type OsSender,
  type OsServer,
  type OsTransferable,
  type OsWaitOptions,
  type PeerCredentials,
} from "./types.ts";
import { Waiters } from "./waiters.ts";

const MAGIC = 0x4950;
const VERSION = 1;
const HEADER = 16;
const ENTRY = 16;
const KIND_SENDER = 1;
const KIND_RECEIVER = 2;
const KIND_SHM = 3;
/** The pipe's inbound buffer; also the static receive buffer. */
const PIPE_BUFFER = 64 * 1024;
/** Handles one message may carry (as many as Linux allows). */
export const MAX_HANDLES = 252;
/** Listening instances a server keeps, like a listen(2) backlog. */
export const BACKLOG = 8;
/** How long `connect` waits for a free instance of a busy server. */
const CONNECT_WAIT_MS = 5000;
const CURRENT_PROCESS = -1n;
const PIPE_PREFIX = "\\\\.\\pipe\\";

const handleRegistry = new FinalizationRegistry<bigint>((h) => {
  kernel32().CloseHandle(h);
});

function closeHandle(h: bigint): void {
  if (h !== 0n && h !== INVALID_HANDLE_VALUE) kernel32().CloseHandle(h);
}

let ownPid = 0;
function selfPid(): number {
  return ownPid ||= kernel32().GetCurrentProcessId();
}

const scratch = new Uint8Array(new ArrayBuffer(8));
const scratchView = new DataView(scratch.buffer);

/** A duplicate of `h` in this process. */
function duplicateLocal(h: bigint): bigint {
  if (
    kernel32().DuplicateHandle(
      CURRENT_PROCESS,
      h,
      CURRENT_PROCESS,
      scratch,
      0,
      0,
      DUPLICATE_SAME_ACCESS,
    ) === 0
  ) {
    throw winError("DuplicateHandle", lastError());
  }
  return scratchView.getBigInt64(0, true);
}

function malformed(what: string): IpcError {
  return new IpcError("Io", `malformed message from peer: ${what}`, {
    code: "EPROTO",
  });
}

function disconnectedSender(): IpcError {
  return new IpcError("Disconnected", "the receiver is gone");
}

function disconnectedReceiver(): IpcError {
  return new IpcError("Disconnected", "every sender is gone");
}

/** An OVERLAPPED with its own manual-reset event, in pinned memory. */
class Overlapped {
  readonly bytes = pinned(OVERLAPPED.size);
  readonly pointer: Deno.PointerValue = Deno.UnsafePointer.of(this.bytes);
  /** Its Offset/OffsetHigh, the (zero) byte offset of a read or write. */
  readonly offset: Deno.PointerValue = Deno.UnsafePointer.offset(
    this.pointer!,
    OVERLAPPED.offset,
  );
  readonly view: DataView = new DataView(this.bytes.buffer);
  readonly event: bigint;

  constructor() {
    const event = handle(kernel32().CreateEventW(null, 1, 0, null));
    if (event === 0n) throw winError("CreateEventW", lastError());
    this.event = event;
    new DataView(this.bytes.buffer).setBigInt64(
      OVERLAPPED.hEvent,
      event,
      true,
    );
    handleRegistry.register(this, event);
  }
}

const transferred = new Uint32Array(1);
const transferredBytes = new Uint8Array(transferred.buffer);

/**
 * Waits for a call on `ov` to finish (or, without `wait`, returns
 * ERROR_IO_INCOMPLETE if it has not); 0 or the error, bytes in
 * `transferred`. The outcome is read from the OVERLAPPED itself (its
 * NTSTATUS and byte count), never from GetLastError: between two FFI calls
 * the runtime may run code on this thread that overwrites the last error,
 * and a lost ERROR_IO_INCOMPLETE read as success (or as a failure) would
 * treat a write still in flight as done (or drop the sender's queue).
 */
function finish(h: bigint, ov: Overlapped, wait: boolean): number {
  transferred[0] = 0;
  const view = ov.view;
  if (view.getUint32(OVERLAPPED.internal, true) === STATUS_PENDING) {
    if (!wait) return ERROR_IO_INCOMPLETE;
    kernel32().GetOverlappedResult(h, ov.pointer, transferredBytes, 1);
    if (view.getUint32(OVERLAPPED.internal, true) === STATUS_PENDING) {
      // Not finished after a waiting call: only the last error can say why.
      return lastError() || ERROR_IO_INCOMPLETE;
    }
  }
  transferred[0] = Number(view.getBigUint64(OVERLAPPED.internalHigh, true));
  return ntStatusToError(view.getUint32(OVERLAPPED.internal, true));
}

/** Cancels a pending call on `ov` and waits until the kernel lets go of it. */
function cancelAndWait(h: bigint, ov: Overlapped): number {
  kernel32().CancelIoEx(h, ov.pointer);
  return finish(h, ov, true);
}

/** Marks `ov` in flight, as kernelbase does before each overlapped call. */
function arm(ov: Overlapped): void {
  ov.view.setBigUint64(OVERLAPPED.internal, BigInt(STATUS_PENDING), true);
  ov.view.setBigUint64(OVERLAPPED.internalHigh, 0n, true);
}

/**
 * Starts an overlapped read (or write) of `length` bytes at `at` on `ov`:
 * 0 if it finished at once, ERROR_IO_PENDING while it runs, ERROR_MORE_DATA
 * for a longer message, or the error. Read from the NTSTATUS the call
 * returns: through ReadFile/WriteFile the outcome would be the last error,
 * which the runtime may overwrite before we read it, and a pending write
 * taken for a failed one dropped the sender's queue (issue 6).
 */
function startIo(
  h: bigint,
  ov: Overlapped,
  at: Deno.PointerValue,
  length: number,
  write: boolean,
): number {
  arm(ov);
  const nt = ntdll();
  const call = write ? nt.NtWriteFile : nt.NtReadFile;
  return ntStatusToError(
    call(h, ov.event, null, null, ov.pointer, at, length, ov.offset, null),
  );
}

/** Starts a ConnectNamedPipe on `ov`, with its outcome as in {@linkcode startIo}. */
function startListen(h: bigint, ov: Overlapped): number {
  arm(ov);
  return ntStatusToError(
    ntdll().NtFsControlFile(
      h,
      ov.event,
      null,
      null,
      ov.pointer,
      FSCTL_PIPE_LISTEN,
      null,
      0,
      null,
      0,
    ),
  );
}

// ---------------------------------------------------------------------------
// Receiving.

const END_OF_STREAM = Symbol("end of stream");
let receiveBuffer: Uint8Array<ArrayBuffer> | undefined;
let readOverlapped: Overlapped | undefined;
const peekStatus = pinned(IO_STATUS_BLOCK_SIZE);
const peekBuffer = pinned(FILE_PIPE_PEEK_BUFFER.size);
const peekView = new DataView(peekBuffer.buffer);
const peekAvailable = new Uint32Array(1);
const peekLeft = new Uint32Array(1);

/**
 * PeekNamedPipe without data, from its NTSTATUS (see {@linkcode startIo}):
 * 0 with the bytes waiting and the unread length of the next message in
 * `peekAvailable` and `peekLeft`, or the error.
 */
function peek(h: bigint): number {
  const status = ntdll().NtFsControlFile(
    h,
    0n,
    null,
    null,
    Deno.UnsafePointer.of(peekStatus),
    FSCTL_PIPE_PEEK,
    null,
    0,
    Deno.UnsafePointer.of(peekBuffer),
    FILE_PIPE_PEEK_BUFFER.size,
  );
  // A message waits that has no room in the buffer: PeekNamedPipe succeeds.
  if (status !== 0 && status !== STATUS_BUFFER_OVERFLOW) {
    return ntStatusToError(status);
  }
  peekAvailable[0] = peekView.getUint32(
    FILE_PIPE_PEEK_BUFFER.readDataAvailable,
    true,
  );
  peekLeft[0] = peekView.getUint32(FILE_PIPE_PEEK_BUFFER.messageLength, true);
  return 0;
}

/** The next message, undefined if none waits, END_OF_STREAM at the end. */
function receiveOne(h: bigint): OsMessage | undefined | typeof END_OF_STREAM {
  const peeked = peek(h);
  if (peeked !== 0) {
    if (isDisconnect(peeked)) return END_OF_STREAM;
    throw winError("PeekNamedPipe", peeked);
  }
  if (peekAvailable[0] === 0 && peekLeft[0] === 0) return undefined;
  receiveBuffer ??= pinned(PIPE_BUFFER);
  readOverlapped ??= new Overlapped();
  const wanted = Math.max(peekLeft[0], peekAvailable[0]);
  let buffer = wanted <= PIPE_BUFFER ? receiveBuffer : allocate(wanted);
  let got = 0;
  for (;;) {
    const at = Deno.UnsafePointer.offset(
      Deno.UnsafePointer.of(buffer)!,
      got,
    );
    let code = startIo(h, readOverlapped, at, buffer.length - got, false);
    if (code === 0 || code === ERROR_IO_PENDING || code === ERROR_MORE_DATA) {
      code = finish(h, readOverlapped, true);
      got += transferred[0];
    }
    if (code === 0) break;
    if (code === ERROR_MORE_DATA) {
      peek(h);
      const bigger = allocate(got + Math.max(peekLeft[0], 1));
      bigger.set(buffer.subarray(0, got));
      buffer = bigger;
      continue;
    }
    if (isDisconnect(code)) return END_OF_STREAM;
    throw winError("ReadFile", code);
  }
  return parseFrame(buffer, got);
}

function allocate(length: number): Uint8Array<ArrayBuffer> {
  try {
    return pinned(length);
  } catch (cause) {
    throw new IpcError("Io", `cannot allocate ${length} bytes for a message`, {
      cause,
      code: "ENOMEM",
    });
  }
}

interface Entry {
  kind: number;
  value: bigint;
  size: number;
}

function parseFrame(buffer: Uint8Array, length: number): OsMessage {
  const view = new DataView(buffer.buffer, buffer.byteOffset, length);
  if (length < HEADER) {
    throw malformed(`a ${length}-byte message, shorter than a frame header`);
  }
  if (view.getUint16(0, true) !== MAGIC || buffer[2] !== VERSION) {
    throw malformed("not a frame header");
  }
  const count = view.getUint32(4, true);
  const pid = view.getUint32(8, true);
  if (count > MAX_HANDLES || HEADER + count * ENTRY > length) {
    throw malformed(`a frame announcing ${count} handles`);
  }
  const entries: Entry[] = [];
  for (let i = 0; i < count; i++) {
    const at = HEADER + i * ENTRY;
    entries.push({
      kind: buffer[at],
      value: BigInt(view.getUint32(at + 4, true)),
      size: Number(view.getBigUint64(at + 8, true)),
    });
  }
  const handles = stealAll(pid, entries);
  const bodyStart = HEADER + count * ENTRY;
  return {
    data: buffer.slice(bodyStart, length),
    handles: handles.map((h, i) =>
      new WindowsIncoming(h, entries[i].kind, entries[i].size)
    ),
  };
}

/** Duplicates every entry out of process `pid`, closing the source. */
function stealAll(pid: number, entries: Entry[]): bigint[] {
  if (entries.length === 0) return [];
  const k = kernel32();
  const source = pid === selfPid()
    ? CURRENT_PROCESS
    : handle(k.OpenProcess(PROCESS_DUP_HANDLE, 0, pid));
  if (source === 0n) {
    throw new IpcError(
      "Io",
      `cannot take the ${entries.length} handle(s) of a message: its sender (process ${pid}) is gone (Windows error ${lastError()})`,
      { code: "ESRCH" },
    );
  }
  const stolen: bigint[] = [];
  let failure = 0;
  for (const entry of entries) {
    const ok = k.DuplicateHandle(
      source,
      entry.value,
      CURRENT_PROCESS,
      scratch,
      0,
      0,
      DUPLICATE_SAME_ACCESS | DUPLICATE_CLOSE_SOURCE,
    );
    if (ok === 0) {
      failure ||= lastError();
      stolen.push(0n);
    } else {
      stolen.push(scratchView.getBigInt64(0, true));
    }
  }
  if (source !== CURRENT_PROCESS) k.CloseHandle(source);
  const badKind = entries.some((e) =>
    e.kind !== KIND_SENDER && e.kind !== KIND_RECEIVER && e.kind !== KIND_SHM
  );
  if (failure !== 0 || badKind) {
    for (const h of stolen) closeHandle(h);
    if (badKind) throw malformed("an unknown handle kind");
    throw winError(`taking a handle out of process ${pid}`, failure);
  }
  return stolen;
}

// ---------------------------------------------------------------------------
// Sending.

interface Frame {
  bytes: Uint8Array<ArrayBuffer>;
  size: number;
  /** Handle values in this process that the frame owns until delivered. */
  owned: bigint[];
}

function buildFrame(
  data: Uint8Array,
  values: readonly { kind: number; value: bigint; size: number }[],
): Uint8Array<ArrayBuffer> {
  const total = HEADER + values.length * ENTRY + data.length;
  const bytes = allocate(total);
  const view = new DataView(bytes.buffer);
  view.setUint16(0, MAGIC, true);
  bytes[2] = VERSION;
  view.setUint32(4, values.length, true);
  view.setUint32(8, selfPid(), true);
  values.forEach((entry, i) => {
    const at = HEADER + i * ENTRY;
    bytes[at] = entry.kind;
    view.setUint32(at + 4, Number(BigInt.asUintN(32, entry.value)), true);
    view.setBigUint64(at + 8, BigInt(entry.size), true);
  });
  bytes.set(data, HEADER + values.length * ENTRY);
  return bytes;
}

/** Senders with a pending write or a queue. */
const pendingSenders = new Set<WindowsSender>();

function flushPendingSenders(): void {
  if (pendingSenders.size === 0) return;
  for (const sender of [...pendingSenders]) sender.flush();
}

/** Endpoints listed in one message, checked before anything is sent. */
class HandlePlan {
  readonly values: { kind: number; value: bigint; size: number }[] = [];
  readonly #receivers: WindowsReceiver[] = [];
  readonly #duplicates: bigint[] = [];

  constructor(handles: readonly OsTransferable[]) {
    if (handles.length > MAX_HANDLES) {
      throw new IpcError(
        "Serialization",
        `a message can carry at most ${MAX_HANDLES} endpoints; this one has ${handles.length}`,
      );
    }
    const seen = new Set<WindowsReceiver>();
    for (const h of handles) {
      if (h instanceof WindowsReceiver) {
        if (seen.has(h)) {
          throw new IpcError(
            "Serialization",
            "the same receiver appears twice in one message",
          );
        }
        h.handleForSend();
        seen.add(h);
      } else if (
        !(h instanceof WindowsSender) && !(h instanceof WindowsSharedMemory)
      ) {
        throw new IpcError(
          "Serialization",
          "an endpoint from another platform backend",
        );
      } else {
        h.handleForSend();
      }
    }
    try {
      for (const h of handles) {
        if (h instanceof WindowsReceiver) {
          this.values.push({
            kind: KIND_RECEIVER,
            value: h.handleForSend(),
            size: 0,
          });
          this.#receivers.push(h);
        } else {
          const endpoint = h as WindowsSender | WindowsSharedMemory;
          const copy = duplicateLocal(endpoint.handleForSend());
          this.#duplicates.push(copy);
          this.values.push(
            endpoint instanceof WindowsSender
              ? { kind: KIND_SENDER, value: copy, size: 0 }
              : { kind: KIND_SHM, value: copy, size: endpoint.length },
          );
        }
      }
    } catch (error) {
      for (const copy of this.#duplicates) closeHandle(copy);
      throw error;
    }
    // A receiver about to travel must have no read of ours pending on it.
    for (const receiver of this.#receivers) receiver.quiesce();
  }

  /** The message now owns every handle: receivers become unusable here. */
  committed(): bigint[] {
    for (const receiver of this.#receivers) {
      receiver.detach("sent away inside a message");
    }
    return this.values.map((v) => v.value);
  }

  /** Nothing was sent: the duplicates go, the receivers wait again. */
  abandoned(): void {
    for (const copy of this.#duplicates) closeHandle(copy);
    for (const receiver of this.#receivers) receiver.resume();
  }
}

const WRITE_DONE = 0;

class WindowsSender implements OsSender {
  #h: bigint;
  #closedReason: string | undefined;
  #broken: IpcError | undefined;
  #queue: Frame[] = [];
  #pending: Frame | undefined;
  #overlapped: Overlapped | undefined;
  #buffered = 0;
  #watch = 0;
  #drainWaiters = new Waiters<void, number>("the queue did not drain");

  constructor(h: bigint) {
    this.#h = h;
    handleRegistry.register(this, h, this);
  }

  get bufferedAmount(): number {
    return this.#buffered;
  }

  get closedReason(): string | undefined {
    return this.#closedReason;
  }

  handleForSend(): bigint {
    if (this.#closedReason !== undefined) {
      throw new IpcError("Closed", `this sender is ${this.#closedReason}`);
    }
    return this.#h;
  }

  /** The event of the pending write, if any (for recvSync). */
  get pendingEvent(): bigint | undefined {
    return this.#pending ? this.#overlapped!.event : undefined;
  }

  send(data: Uint8Array, handles: readonly OsTransferable[]): void {
    this.handleForSend();
    if (this.#broken) throw this.#broken;
    if (this.#pending !== undefined) this.flush();
    if (this.#broken) throw this.#broken;
    const plan = new HandlePlan(handles);
    let bytes: Uint8Array<ArrayBuffer>;
    try {
      bytes = buildFrame(data, plan.values);
    } catch (error) {
      plan.abandoned();
      throw error;
    }
    const frame: Frame = { bytes, size: data.length, owned: [] };
    if (this.#pending === undefined && this.#queue.length === 0) {
      const code = this.#write(frame);
      if (code === WRITE_DONE || code === ERROR_IO_PENDING) {
        frame.owned = plan.committed();
        if (code === WRITE_DONE) poller.traffic();
        return;
      }
      plan.abandoned();
      throw this.#failure(code);
    }
    frame.owned = plan.committed();
    this.#queue.push(frame);
    this.#buffered += frame.size;
  }

  /** Starts one write: WRITE_DONE, ERROR_IO_PENDING, or the error. */
  #write(frame: Frame): number {
    const ov = this.#overlapped ??= new Overlapped();
    const code = startIo(
      this.#h,
      ov,
      Deno.UnsafePointer.of(frame.bytes),
      frame.bytes.length,
      true,
    );
    if (code === 0) return WRITE_DONE;
    if (code !== ERROR_IO_PENDING) return code;
    this.#pending = frame;
    this.#buffered += frame.size;
    pendingSenders.add(this);
    this.#watch = poller.once(ov.event, () => {
      this.#watch = 0;
      this.flush();
    });
    return ERROR_IO_PENDING;
  }

  #failure(code: number): IpcError {
    const error = isDisconnect(code)
      ? disconnectedSender()
      : winError("WriteFile", code);
    if (error.kind === "Disconnected") this.#broken = error;
    return error;
  }

  /** Completes the pending write and starts queued ones. */
  flush(): void {
    if (this.#pending !== undefined) {
      const code = finish(this.#h, this.#overlapped!, false);
      if (code === ERROR_IO_INCOMPLETE) {
        if (this.#watch === 0) {
          this.#watch = poller.once(this.#overlapped!.event, () => {
            this.#watch = 0;
            this.flush();
          });
        }
        return;
      }
      const frame = this.#pending;
      this.#pending = undefined;
      this.#buffered -= frame.size;
      if (code !== 0) {
        for (const h of frame.owned) closeHandle(h);
        this.#drop(this.#failure(code));
        return;
      }
    }
    while (this.#pending === undefined && this.#queue.length > 0) {
      const frame = this.#queue.shift()!;
      this.#buffered -= frame.size;
      const code = this.#write(frame);
      if (code === ERROR_IO_PENDING) break;
      if (code !== WRITE_DONE) {
        for (const h of frame.owned) closeHandle(h);
        this.#drop(this.#failure(code));
        return;
      }
    }
    if (this.#pending === undefined) this.#idle();
    this.#drainWaiters.resolveWhere(
      (threshold) => this.#buffered <= threshold,
      undefined,
    );
  }

  #drop(error: IpcError): void {
    this.#broken ??= error;
    for (const frame of this.#queue) {
      for (const h of frame.owned) closeHandle(h);
    }
    this.#queue = [];
    this.#buffered = 0;
    this.#idle();
    this.#drainWaiters.rejectAll(error);
  }

  #idle(): void {
    if (!pendingSenders.delete(this)) return;
    if (this.#watch !== 0) poller.cancel(this.#watch);
    this.#watch = 0;
    if (this.#closedReason !== undefined) this.#release();
  }

  drained(threshold = 0, options?: OsWaitOptions): Promise<void> {
    if (this.#broken) return Promise.reject(this.#broken);
    if (this.#buffered <= threshold) return Promise.resolve();
    return this.#drainWaiters.add(threshold, options);
  }

  clone(): OsSender {
    return new WindowsSender(duplicateLocal(this.handleForSend()));
  }

  close(): void {
    if (this.#closedReason !== undefined) return;
    this.#closedReason = "closed";
    // A pending write still owes messages: the handle goes once it is done.
    if (!pendingSenders.has(this)) this.#release();
  }

  #release(): void {
    handleRegistry.unregister(this);
    closeHandle(this.#h);
    this.#h = 0n;
  }
}

class WindowsReceiver implements OsReceiver {
  #h: bigint;
  #closedReason: string | undefined;
  #ended = false;
  #overlapped: Overlapped | undefined;
  /** A zero-byte read of ours is pending on the pipe. */
  #reading = false;
  #watch = 0;
  #onReady: (() => void) | undefined;
  #waiters = new Waiters<OsMessage>("no message");

  constructor(h: bigint) {
    this.#h = h;
    handleRegistry.register(this, h, this);
  }

  get closedReason(): string | undefined {
    return this.#closedReason;
  }

  handleForSend(): bigint {
    this.#check();
    return this.#h;
  }

  #check(): void {
    if (this.#closedReason !== undefined) {
      throw new IpcError("Closed", `this receiver is ${this.#closedReason}`);
    }
  }

  #receive(): OsMessage | undefined {
    if (this.#ended) throw disconnectedReceiver();
    const message = receiveOne(this.#h);
    if (message === END_OF_STREAM) {
      this.#ended = true;
      throw disconnectedReceiver();
    }
    if (message !== undefined) {
      poller.traffic();
      flushPendingSenders();
    }
    return message;
  }

  tryRecv(): OsMessage | undefined {
    this.#check();
    flushPendingSenders();
    return this.#receive();
  }

  /** Starts a zero-byte read; false if it finished at once (data or end). */
  #startRead(): boolean {
    const ov = this.#overlapped ??= new Overlapped();
    if (startIo(this.#h, ov, null, 0, false) === ERROR_IO_PENDING) {
      this.#reading = true;
      return true;
    }
    return false;
  }

  recvSync(): OsMessage {
    this.#check();
    if (this.#waiters.size > 0 || this.#onReady !== undefined) {
      throw new IpcError(
        "Io",
        "recvSync() called while a recv() on the same receiver is pending",
      );
    }
    const k = kernel32();
    for (;;) {
      flushPendingSenders();
      const message = this.#receive();
      if (message !== undefined) return message;
      if (!this.#startRead()) continue;
      const events = [this.#overlapped!.event];
      for (const sender of pendingSenders) {
        const event = sender.pendingEvent;
        if (event !== undefined && events.length < 64) events.push(event);
      }
      const table = new BigInt64Array(events);
      const result = k.WaitForMultipleObjects(
        events.length,
        new Uint8Array(table.buffer),
        0,
        INFINITE,
      );
      if (result === 0) finish(this.#h, this.#overlapped!, true);
      else cancelAndWait(this.#h, this.#overlapped!);
      this.#reading = false;
      if (result === WAIT_FAILED) {
        throw winError("WaitForMultipleObjects", lastError());
      }
    }
  }

  /** Calls `onReady` once a message or the end may be waiting. */
  watchReadable(onReady: () => void): void {
    this.#onReady = onReady;
    this.#arm();
  }

  /** Forgets a {@linkcode watchReadable} that has not fired. */
  unwatchReadable(): void {
    this.#onReady = undefined;
    if (this.#waiters.size === 0) this.#stopWatching();
  }

  #arm(): void {
    if (this.#watch !== 0) return;
    if (!this.#reading && !this.#startRead()) {
      kernel32().SetEvent(this.#overlapped!.event);
    }
    this.#watch = poller.once(this.#overlapped!.event, () => {
      this.#watch = 0;
      if (this.#reading) {
        finish(this.#h, this.#overlapped!, false);
        this.#reading = false;
      }
      kernel32().ResetEvent(this.#overlapped!.event);
      const onReady = this.#onReady;
      this.#onReady = undefined;
      onReady?.();
      this.#onReadable();
    });
  }

  recv(options?: OsWaitOptions): Promise<OsMessage> {
    // An aborted signal wins even over a waiting message, as in fetch().
    if (options?.signal?.aborted) return Promise.reject(options.signal.reason);
    try {
      this.#check();
      if (this.#waiters.size === 0) {
        const message = this.#receive();
        if (message !== undefined) return Promise.resolve(message);
      }
    } catch (error) {
      return Promise.reject(error);
    }
    const promise = this.#waiters.add(undefined, options, () => {
      if (this.#waiters.size === 0 && this.#onReady === undefined) {
        this.#stopWatching();
      }
    });
    this.#arm();
    return promise;
  }

  #onReadable(): void {
    if (this.#closedReason !== undefined) return;
    while (this.#waiters.size > 0) {
      let message: OsMessage | undefined;
      try {
        message = this.#receive();
      } catch (error) {
        if (this.#ended) this.#waiters.rejectAll(error);
        else this.#waiters.rejectFirst(error);
        continue;
      }
      if (message === undefined) break;
      this.#waiters.resolveFirst(message);
    }
    if (this.#waiters.size > 0 || this.#onReady !== undefined) this.#arm();
  }

  #stopWatching(): void {
    if (this.#watch !== 0) poller.cancel(this.#watch);
    this.#watch = 0;
    if (this.#reading) {
      cancelAndWait(this.#h, this.#overlapped!);
      this.#reading = false;
    }
  }

  /** Before travelling: no read of ours may stay pending on the pipe. */
  quiesce(): void {
    this.#stopWatching();
  }

  /** After a send that did not happen: waits again if someone waits. */
  resume(): void {
    if (this.#waiters.size > 0 || this.#onReady !== undefined) this.#arm();
  }

  /** Hands the handle to a message; this object becomes unusable. */
  detach(reason: string): bigint {
    const h = this.#h;
    this.#retire(reason);
    return h;
  }

  close(): void {
    if (this.#closedReason !== undefined) return;
    const h = this.#h;
    this.#retire("closed");
    // Messages still waiting may own handles in their senders' processes:
    // take and close them now, or they would stay open there.
    try {
      for (let i = 0; i < 4096 && !this.#ended; i++) {
        const message = receiveOne(h);
        if (message === undefined || message === END_OF_STREAM) break;
        for (const incoming of message.handles) incoming.close();
      }
    } catch {
      // A malformed or orphaned message: nothing more to reclaim.
    }
    closeHandle(h);
  }

  #retire(reason: string): void {
    this.#stopWatching();
    this.#closedReason = reason;
    this.#onReady = undefined;
    handleRegistry.unregister(this);
    this.#h = 0n;
    this.#waiters.rejectAll(
      new IpcError("Closed", `this receiver was ${reason}`),
    );
  }
}

class WindowsIncoming implements OsIncomingHandle {
  #h: bigint;
  readonly #kind: number;
  readonly #size: number;

  constructor(h: bigint, kind: number, size: number) {
    this.#h = h;
    this.#kind = kind;
    this.#size = size;
  }

  #take(kind: number): bigint {
    if (this.#h === 0n) {
      throw new IpcError("Serialization", "a handle was used twice");
    }
    if (kind !== this.#kind) {
      throw new IpcError(
        "Serialization",
        "a handle of another kind than the message says",
      );
    }
    const h = this.#h;
    this.#h = 0n;
    return h;
  }

  intoSender(): OsSender {
    return new WindowsSender(this.#take(KIND_SENDER));
  }

  intoReceiver(): OsReceiver {
    return new WindowsReceiver(this.#take(KIND_RECEIVER));
  }

  intoSharedMemory(): WindowsSharedMemory {
    return WindowsSharedMemory.adopt(this.#take(KIND_SHM), this.#size);
  }

  close(): void {
    closeHandle(this.#h);
    this.#h = 0n;
  }
}

// ---------------------------------------------------------------------------
// Pipes, servers and connecting.

function randomHex(bytes: number): string {
  const random = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(random, (b) => b.toString(16).padStart(2, "0")).join("");
}

function pipeName(): string {
  return `${PIPE_PREFIX}ipc-channel-${randomHex(16)}`;
}

/** A new inbound, message-mode, local-only instance of pipe `name`. */
function createInstance(
  name: string,
  first: boolean,
  instances: number,
): bigint {
  const h = handle(
    kernel32().CreateNamedPipeW(
      wideString(name),
      PIPE_ACCESS_INBOUND | FILE_FLAG_OVERLAPPED |
        (first ? FILE_FLAG_FIRST_PIPE_INSTANCE : 0),
      PIPE_TYPE_MESSAGE | PIPE_READMODE_MESSAGE | PIPE_REJECT_REMOTE_CLIENTS,
      instances,
      0,
      PIPE_BUFFER,
      0,
      null,
    ),
  );
  if (h === INVALID_HANDLE_VALUE) {
    throw winError(`CreateNamedPipeW ${name}`, lastError());
  }
  return h;
}

/** The write end of pipe `name`, or the error code. */
function openClient(name: string): bigint | number {
  const h = handle(
    kernel32().CreateFileW(
      wideString(name),
      GENERIC_WRITE | FILE_READ_ATTRIBUTES,
      0,
      null,
      OPEN_EXISTING,
      FILE_FLAG_OVERLAPPED | SECURITY_IDENTIFICATION_ONLY,
      0n,
    ),
  );
  return h === INVALID_HANDLE_VALUE ? lastError() : h;
}

function connect(name: string): OsSender {
  if (!name.startsWith(PIPE_PREFIX)) {
    throw new IpcError("Io", `not a pipe name: ${name}`, { code: "ENOENT" });
  }
  const deadline = performance.now() + CONNECT_WAIT_MS;
  for (;;) {
    const result = openClient(name);
    if (typeof result === "bigint") return new WindowsSender(result);
    const left = deadline - performance.now();
    if (result !== ERROR_PIPE_BUSY || left <= 0) {
      throw winError(`connect to ${name}`, result);
    }
    // Every listening instance is taken: wait for the server to make one.
    kernel32().WaitNamedPipeW(wideString(name), Math.ceil(Math.min(left, 500)));
  }
}

function channel(): [OsSender, OsReceiver] {
  const name = pipeName();
  // One instance only: FIRST_PIPE_INSTANCE makes sure we created it, and
  // nobody else can open it once our client has.
  const server = createInstance(name, true, 1);
  const client = openClient(name);
  if (typeof client !== "bigint") {
    closeHandle(server);
    throw winError("CreateFileW", client);
  }
  return [new WindowsSender(client), new WindowsReceiver(server)];
}

interface Instance {
  h: bigint;
  overlapped: Overlapped;
  /** A ConnectNamedPipe is pending. */
  connecting: boolean;
  /** A client is connected and not yet handed out. */
  connected: boolean;
  watch: number;
}

const openServers = new Set<WindowsServer>();

class WindowsServer implements OsServer {
  readonly name: string;
  #instances: Instance[] = [];
  #closed = false;
  #waiters = new Waiters<OsAccepted>("no client connected");

  constructor() {
    this.name = pipeName();
    try {
      for (let i = 0; i < BACKLOG; i++) {
        this.#instances.push(this.#instance(i === 0));
      }
    } catch (error) {
      this.close();
      throw error;
    }
    openServers.add(this);
  }

  #instance(first: boolean): Instance {
    return {
      h: createInstance(this.name, first, PIPE_UNLIMITED_INSTANCES),
      overlapped: new Overlapped(),
      connecting: false,
      connected: false,
      watch: 0,
    };
  }

  /** Checks every instance; starts ConnectNamedPipe where none is pending. */
  #poll(instance: Instance): void {
    if (instance.connected) return;
    if (instance.connecting) {
      const code = finish(instance.h, instance.overlapped, false);
      if (code === ERROR_IO_INCOMPLETE) return;
      instance.connecting = false;
      if (code === 0 || code === ERROR_NO_DATA) instance.connected = true;
      return;
    }
    const code = startListen(instance.h, instance.overlapped);
    if (code === 0 || code === ERROR_PIPE_CONNECTED || code === ERROR_NO_DATA) {
      instance.connected = true;
    } else if (code === ERROR_IO_PENDING) {
      instance.connecting = true;
    } else {
      throw winError("ConnectNamedPipe", code);
    }
  }

  #acceptNow(): OsAccepted | undefined {
    for (const instance of this.#instances) {
      this.#poll(instance);
      if (!instance.connected) continue;
      this.#instances = this.#instances.filter((each) => each !== instance);
      if (instance.watch !== 0) poller.cancel(instance.watch);
      this.#instances.push(this.#instance(false));
      const pid = new Uint32Array(1);
      kernel32().GetNamedPipeClientProcessId(
        instance.h,
        new Uint8Array(pid.buffer),
      );
      const peer: PeerCredentials = { pid: pid[0], uid: -1, gid: -1 };
      return { receiver: new WindowsReceiver(instance.h), peer };
    }
    return undefined;
  }

  accept(options?: OsWaitOptions): Promise<OsAccepted> {
    // An aborted signal wins even over a waiting message, as in fetch().
    if (options?.signal?.aborted) return Promise.reject(options.signal.reason);
    if (this.#closed) {
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
    this.#arm();
    return promise;
  }

  #arm(): void {
    for (const instance of this.#instances) {
      if (instance.watch !== 0 || !instance.connecting) continue;
      instance.watch = poller.once(instance.overlapped.event, () => {
        instance.watch = 0;
        this.#onReady();
      });
    }
  }

  #onReady(): void {
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
    if (this.#waiters.size > 0) this.#arm();
    else this.#stopWatching();
  }

  #stopWatching(): void {
    for (const instance of this.#instances) {
      if (instance.watch !== 0) poller.cancel(instance.watch);
      instance.watch = 0;
      if (instance.connecting) {
        const code = cancelAndWait(instance.h, instance.overlapped);
        instance.connecting = false;
        // The cancel lost the race: a client got in.
        if (code === 0) instance.connected = true;
      }
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#stopWatching();
    for (const instance of this.#instances) closeHandle(instance.h);
    this.#instances = [];
    openServers.delete(this);
    this.#waiters.rejectAll(new IpcError("Closed", "the server was closed"));
  }
}

/** The Windows implementation of {@linkcode OsPlatform}. */
export const windows: OsPlatform = {
  channel,
  connect,
  listen: () => new WindowsServer(),
  processUid: () => -1,
  takeEnv,
  sharedMemory: (length) => WindowsSharedMemory.create(length),
  receiverSet: () =>
    new WindowsReceiverSet((receiver) => {
      if (!(receiver instanceof WindowsReceiver)) {
        throw new IpcError("Io", "a receiver from another platform backend");
      }
      return new WindowsReceiver(receiver.detach("added to a receiver set"));
    }),
};

/** Resolves once no wait is parked (tests use it before their op check). */
export function settled(): Promise<void> {
  return poller.idle();
}
