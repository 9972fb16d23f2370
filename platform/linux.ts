/**
 * Linux backend: `AF_UNIX` `SOCK_SEQPACKET` sockets, descriptors passed with
 * `SCM_RIGHTS`, large bodies in sealed memfds, one shared epoll for waiting.
 *
 * Wire format of one packet (little-endian):
 * - bytes 0–1: magic `0x4950`; byte 2: kind (1 inline, 2 memfd); byte 3: 0
 * - bytes 4–7: number of descriptors in the packet's `SCM_RIGHTS`
 * - inline: the body follows. memfd: bytes 8–15 hold the body length, and the
 *   last descriptor is a memfd sealed against writes, shrinking and growing.
 *
 * A body that does not fit one packet goes through a memfd, so every message
 * is one packet: concurrent senders can never interleave, and the receiver
 * never allocates more than the sender really committed to the kernel.
 *
 * Sockets stay in blocking mode (the file status flags are shared with every
 * process holding them); non-blocking calls pass `MSG_DONTWAIT` instead.
 *
 * @module
 */

import {
  addressOf,
  AF_UNIX,
  CMSG_HEADER,
  cmsgSpace,
  cString,
  EAGAIN,
  EBADF,
  ECONNREFUSED,
  EEXIST,
  EFAULT,
  EINTR,
  EINVAL,
  EMSGSIZE,
  ENOBUFS,
  ENOMEM,
  ENOTCONN,
  ENOTSOCK,
  EPOLLOUT,
  errno,
  F_ADD_SEALS,
  F_DUPFD_CLOEXEC,
  F_GET_SEALS,
  F_SEAL_GROW,
  F_SEAL_SEAL,
  F_SEAL_SHRINK,
  F_SEAL_WRITE,
  getenv,
  IOVEC_SIZE,
  libc,
  MFD_ALLOW_SEALING,
  MFD_CLOEXEC,
  MSG_CMSG_CLOEXEC,
  MSG_CTRUNC,
  MSG_DONTWAIT,
  MSG_NOSIGNAL,
  MSG_PEEK,
  MSG_TRUNC,
  MSGHDR,
  POLLIN,
  POLLOUT,
  SCM_MAX_FD,
  SCM_RIGHTS,
  SEEK_END,
  SHUT_RD,
  SHUT_WR,
  SO_PEERCRED,
  SO_SNDBUF,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_SEQPACKET,
  SOCKADDR_UN_PATH_MAX,
  SOL_SOCKET,
  takeEnv,
  UCRED_SIZE,
} from "../ffi/libc.ts";
import { poller, ReadyWaiters, SPIN_MS } from "./epoll.ts";
import { isDisconnect, osError } from "./linux_errors.ts";
import { LinuxReceiverSet } from "./linux_set.ts";
import { LinuxSharedMemory } from "./linux_shm.ts";
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
const KIND_INLINE = 1;
const KIND_MEMFD = 2;
/** Several small messages in one packet: repeated (u32 length, bytes). */
const KIND_BATCH = 3;
/** "Read on from this descriptor": ends a receiver's spilled backlog. */
const KIND_REDIRECT = 4;
/** Framed bytes in one batch packet. Small enough that a spilled backlog
 * always fits a fresh socket's buffer. */
const BATCH_LIMIT = 64 * 1024;
/** The largest message that is batched. */
const BATCHED_MAX = 8 * 1024;
const HEADER = 8;
const MEMFD_HEADER = 16;
/** Larger than any packet the default socket buffers let through (212,960 B). */
const RECEIVE_BUFFER = 256 * 1024;
/** Descriptors one message may carry: the kernel's cap less one for a memfd. */
export const MAX_HANDLES: number = SCM_MAX_FD - 1;
const IO_CHUNK = 1 << 30;
const REQUIRED_SEALS = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;

const fdRegistry = new FinalizationRegistry<number>((fd) => {
  libc().close(fd);
});

function closeFd(fd: number): void {
  if (fd >= 0) libc().close(fd);
}

function closeAll(fds: readonly number[]): void {
  for (const fd of fds) closeFd(fd);
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

// ---------------------------------------------------------------------------
// Receiving: one static msghdr, buffer and control area for the whole process
// (JavaScript is single-threaded and every receive copies its body out, or
// lends it to a caller that is done with it before the next receive).

const receiveBuffer = new Uint8Array(RECEIVE_BUFFER);
const receiveView = new DataView(receiveBuffer.buffer);
const receiveControl = new Uint8Array(cmsgSpace(4 * SCM_MAX_FD));
const receiveControlView = new DataView(receiveControl.buffer);
const receiveIovec = new Uint8Array(IOVEC_SIZE);
const receiveHeader = new Uint8Array(MSGHDR.size);
const receiveHeaderView = new DataView(receiveHeader.buffer);
let receiveReady = false;

function prepareReceive(): void {
  if (receiveReady) return;
  const iov = new DataView(receiveIovec.buffer);
  iov.setBigUint64(0, addressOf(receiveBuffer), true);
  iov.setBigUint64(8, BigInt(RECEIVE_BUFFER), true);
  receiveHeaderView.setBigUint64(MSGHDR.iov, addressOf(receiveIovec), true);
  receiveHeaderView.setBigUint64(MSGHDR.iovlen, 1n, true);
  receiveHeaderView.setBigUint64(
    MSGHDR.control,
    addressOf(receiveControl),
    true,
  );
  receiveReady = true;
}

const END_OF_STREAM = Symbol("end of stream");

/** What recvmsg(2) documents for a socket; anything else is retried once. */
const RECVMSG_ERRORS = new Set([
  EAGAIN,
  EINTR,
  EBADF,
  ECONNREFUSED,
  EFAULT,
  EINVAL,
  ENOMEM,
  ENOTCONN,
  ENOTSOCK,
]);

/**
 * Reads one packet. Returns undefined when none is waiting (non-blocking),
 * END_OF_STREAM when every sender is gone; throws on a malformed packet after
 * closing the descriptors that came with it. With `borrow`, a single
 * message's body may be a view into the receive buffer (see OsReceiver).
 */
function receiveOne(
  fd: number,
  blocking: boolean,
  borrow = false,
): Received | undefined | typeof END_OF_STREAM {
  prepareReceive();
  const lc = libc();
  const flags = MSG_CMSG_CLOEXEC | (blocking ? 0 : MSG_DONTWAIT);
  let retries = 0;
  for (;;) {
    receiveHeaderView.setUint32(
      MSGHDR.controllen,
      receiveControl.length,
      true,
    );
    receiveHeaderView.setUint32(MSGHDR.controllen + 4, 0, true);
    receiveHeaderView.setInt32(MSGHDR.flags, 0, true);
    const length = lc.recvmsg(fd, receiveHeader, flags);
    if (length < 0) {
      const code = errno();
      if (code === EINTR) continue;
      if (code === EAGAIN) return undefined;
      if (isDisconnect(code)) return END_OF_STREAM;
      if (!blocking && !RECVMSG_ERRORS.has(code) && retries++ < 2) {
        // errno is read after the call returns to JavaScript; should the
        // runtime have touched it in between, a non-blocking retry is safe.
        continue;
      }
      throw osError("recvmsg", code);
    }
    const fds = takeDescriptors();
    if (length === 0 && fds.length === 0) return END_OF_STREAM;
    try {
      return parsePacket(
        length,
        receiveHeaderView.getInt32(MSGHDR.flags, true),
        fds,
        borrow,
      );
    } catch (error) {
      closeAll(fds);
      throw error;
    }
  }
}

function takeDescriptors(): number[] {
  const fds: number[] = [];
  const controlLength = receiveHeaderView.getUint32(MSGHDR.controllen, true);
  let at = 0;
  while (at + CMSG_HEADER <= controlLength) {
    const length = receiveControlView.getUint32(at, true);
    if (length < CMSG_HEADER || at + length > controlLength) break;
    const level = receiveControlView.getInt32(at + 8, true);
    const type = receiveControlView.getInt32(at + 12, true);
    if (level === SOL_SOCKET && type === SCM_RIGHTS) {
      for (let p = at + CMSG_HEADER; p + 4 <= at + length; p += 4) {
        fds.push(receiveControlView.getInt32(p, true));
      }
    }
    at += cmsgSpace(length - CMSG_HEADER);
  }
  return fds;
}

/**
 * A copy of `receiveBuffer[start, end)` in a buffer of its own. The typed
 * array constructor copies into uninitialised memory, where `slice()` zeroes
 * its result first: for a 64 KiB body, that memset was a fifth of the
 * receiver's time.
 */
function copyOut(start: number, end: number): Uint8Array {
  return new Uint8Array(receiveBuffer.subarray(start, end));
}

/** A received packet: one message, several (a batch), or a redirect. */
type Received = OsMessage | { batch: Uint8Array[] } | { redirect: number };

function parsePacket(
  length: number,
  flags: number,
  fds: number[],
  borrow: boolean,
): Received {
  if (flags & MSG_CTRUNC) {
    const announced =
      length >= HEADER && receiveView.getUint16(0, true) === MAGIC
        ? receiveView.getUint32(4, true)
        : Infinity;
    if (announced <= SCM_MAX_FD) {
      // The kernel dropped descriptors it could not install here: our limit,
      // not the peer's fault.
      throw new IpcError(
        "Io",
        `a message's ${announced} descriptors could not be installed: this process is out of file descriptors (raise \`ulimit -n\` or close endpoints)`,
        { code: "EMFILE" },
      );
    }
    throw malformed(`more than ${SCM_MAX_FD} descriptors in one packet`);
  }
  if (flags & MSG_TRUNC) {
    throw malformed(`a packet larger than ${RECEIVE_BUFFER} bytes`);
  }
  if (length < HEADER) {
    throw malformed(`a ${length}-byte packet, shorter than a frame header`);
  }
  if (
    receiveView.getUint16(0, true) !== MAGIC || receiveBuffer[3] !== 0
  ) {
    throw malformed("not a frame header");
  }
  const count = receiveView.getUint32(4, true);
  if (count !== fds.length) {
    throw malformed(
      `the frame announces ${count} descriptors but ${fds.length} arrived`,
    );
  }
  const kind = receiveBuffer[2];
  if (kind === KIND_INLINE) {
    return {
      data: borrow
        ? receiveBuffer.subarray(HEADER, length)
        : copyOut(HEADER, length),
      handles: fds.map((fd) => new LinuxIncoming(fd)),
    };
  }
  if (kind === KIND_MEMFD) {
    if (length !== MEMFD_HEADER || count < 1) {
      throw malformed("a bad large-message frame");
    }
    const declared = receiveView.getBigUint64(8, true);
    const data = readSealedBody(fds[fds.length - 1], declared);
    closeFd(fds.pop()!);
    return { data, handles: fds.map((fd) => new LinuxIncoming(fd)) };
  }
  if (kind === KIND_BATCH) {
    if (count !== 0) throw malformed("a batch frame with descriptors");
    // One copy of the whole batch; its messages are views into it (a
    // typed receiver decodes them into copies, a bytes receiver copies its
    // view out, see OsMessage.data).
    const body = copyOut(HEADER, length);
    const view = new DataView(body.buffer);
    const batch: Uint8Array[] = [];
    for (let at = 0; at < body.length;) {
      if (at + 4 > body.length) throw malformed("a truncated batch frame");
      const size = view.getUint32(at, true);
      if (at + 4 + size > body.length) {
        throw malformed("a truncated batch frame");
      }
      batch.push(body.subarray(at + 4, at + 4 + size));
      at += 4 + size;
    }
    if (batch.length === 0) throw malformed("an empty batch frame");
    return { batch };
  }
  if (kind === KIND_REDIRECT) {
    if (length !== HEADER || count !== 1) {
      throw malformed("a bad redirect frame");
    }
    return { redirect: fds[0] };
  }
  throw malformed(`unknown frame kind ${kind}`);
}

/**
 * True when every sender of `fd` is gone and nothing is queued: what a
 * spilled backlog's socket looks like once its redirect has been read.
 */
function drainedAndClosed(fd: number): boolean {
  prepareReceive();
  receiveHeaderView.setUint32(MSGHDR.controllen, receiveControl.length, true);
  receiveHeaderView.setUint32(MSGHDR.controllen + 4, 0, true);
  const length = libc().recvmsg(
    fd,
    receiveHeader,
    MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC,
  );
  // A peek may install descriptors of the packet it looked at.
  if (length >= 0) closeAll(takeDescriptors());
  return length === 0;
}

function readSealedBody(fd: number, declared: bigint): Uint8Array {
  const lc = libc();
  const seals = lc.fcntl(fd, F_GET_SEALS, 0);
  if (seals < 0 || (seals & REQUIRED_SEALS) !== REQUIRED_SEALS) {
    throw malformed("a large-message body that is not a sealed memfd");
  }
  const size = BigInt(lc.lseek(fd, 0n, SEEK_END));
  if (size !== declared) {
    throw malformed(
      `the frame announces ${declared} bytes but the body holds ${size}`,
    );
  }
  let data: Uint8Array;
  try {
    data = new Uint8Array(Number(size));
  } catch (cause) {
    throw new IpcError("Io", `cannot allocate ${size} bytes for a message`, {
      cause,
      code: "ENOMEM",
    });
  }
  for (let at = 0; at < data.length;) {
    const chunk = Math.min(IO_CHUNK, data.length - at);
    const got = lc.pread(
      fd,
      data.subarray(at, at + chunk),
      BigInt(chunk),
      BigInt(at),
    );
    if (got < 0 && errno() === EINTR) continue;
    if (got <= 0) throw malformed("a large-message body that ended early");
    at += got;
  }
  return data;
}

// ---------------------------------------------------------------------------
// Sending.

interface Packet {
  kind:
    | typeof KIND_INLINE
    | typeof KIND_MEMFD
    | typeof KIND_BATCH
    | typeof KIND_REDIRECT;
  /** A batch's framed bytes so far (KIND_BATCH only). */
  batch?: { buffer: Uint8Array; used: number; count: number };
  /** The inline body (empty for a memfd packet). */
  body: Uint8Array;
  /** The body length a memfd packet announces. */
  length: number;
  fds: number[];
  /** Descriptors this packet owns and closes once sent or dropped. */
  owned: number[];
  /** Returns the queue memory holding `body`, once sent or dropped. */
  release?: () => void;
  /** The address of `body` when known (queue memory), saving a lookup. */
  address?: bigint;
  size: number;
}

/** Bodies up to this size are copied next to the header: cheaper than
 * asking Deno for their address. */
const STAGED_BODY = 4096;
const staging = new Uint8Array(MEMFD_HEADER + STAGED_BODY);
const stagingView = new DataView(staging.buffer);
const sendHeader = new Uint8Array(MSGHDR.size);
const sendHeaderView = new DataView(sendHeader.buffer);
const sendIovecs = new Uint8Array(2 * IOVEC_SIZE);
const sendIovecView = new DataView(sendIovecs.buffer);
const sendControl = new Uint8Array(cmsgSpace(4 * SCM_MAX_FD));
const sendControlView = new DataView(sendControl.buffer);
let sendControlAddress = 0n;
let sendReady = false;

function prepareSend(): void {
  if (sendReady) return;
  sendHeaderView.setBigUint64(MSGHDR.iov, addressOf(sendIovecs), true);
  sendIovecView.setBigUint64(0, addressOf(staging), true);
  sendControlAddress = addressOf(sendControl);
  sendReady = true;
}

/** Sends one packet without blocking: 0 when sent, else the errno. */
function transmit(fd: number, packet: Packet): number {
  prepareSend();
  const fds = packet.fds;
  stagingView.setUint16(0, MAGIC, true);
  staging[2] = packet.kind;
  staging[3] = 0;
  stagingView.setUint32(4, fds.length, true);
  let headerLength = HEADER;
  if (packet.kind === KIND_MEMFD) {
    stagingView.setBigUint64(8, BigInt(packet.length), true);
    headerLength = MEMFD_HEADER;
  }
  let body = packet.body;
  const batch = packet.batch;
  if (batch !== undefined) {
    // A batch of one goes as a plain message.
    body = batch.count === 1
      ? batch.buffer.subarray(4, batch.used)
      : batch.buffer.subarray(0, batch.used);
    staging[2] = batch.count === 1 ? KIND_INLINE : KIND_BATCH;
  }
  if (body.length <= STAGED_BODY) {
    staging.set(body, headerLength);
    sendIovecView.setUint32(8, headerLength + body.length, true);
    sendHeaderView.setUint32(MSGHDR.iovlen, 1, true);
  } else {
    sendIovecView.setUint32(8, headerLength, true);
    sendIovecView.setBigUint64(
      16,
      body === packet.body && packet.address !== undefined
        ? packet.address
        : addressOf(body),
      true,
    );
    sendIovecView.setUint32(24, body.length, true);
    sendHeaderView.setUint32(MSGHDR.iovlen, 2, true);
  }
  if (fds.length > 0) {
    sendControlView.setUint32(0, CMSG_HEADER + 4 * fds.length, true);
    sendControlView.setInt32(8, SOL_SOCKET, true);
    sendControlView.setInt32(12, SCM_RIGHTS, true);
    for (let i = 0; i < fds.length; i++) {
      sendControlView.setInt32(CMSG_HEADER + 4 * i, fds[i], true);
    }
    sendHeaderView.setBigUint64(MSGHDR.control, sendControlAddress, true);
    sendHeaderView.setUint32(
      MSGHDR.controllen,
      cmsgSpace(4 * fds.length),
      true,
    );
  } else {
    sendHeaderView.setBigUint64(MSGHDR.control, 0n, true);
    sendHeaderView.setUint32(MSGHDR.controllen, 0, true);
  }
  const lc = libc();
  for (;;) {
    if (lc.sendmsg(fd, sendHeader, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0) return 0;
    const code = errno();
    if (code !== EINTR) return code;
  }
}

function inlinePacket(data: Uint8Array, fds: number[]): Packet {
  return {
    kind: KIND_INLINE,
    body: data,
    length: data.length,
    fds,
    owned: [],
    size: data.length,
  };
}

function batchPacket(): Packet {
  return {
    kind: KIND_BATCH,
    batch: { buffer: new Uint8Array(1024), used: 0, count: 0 },
    body: new Uint8Array(0),
    length: 0,
    fds: [],
    owned: [],
    size: 0,
  };
}

/** Appends `data` to a batch packet; false if it would exceed BATCH_LIMIT. */
function appendToBatch(packet: Packet, data: Uint8Array): boolean {
  const batch = packet.batch!;
  const end = batch.used + 4 + data.length;
  if (end > BATCH_LIMIT) return false;
  if (end > batch.buffer.length) {
    const grown = new Uint8Array(Math.min(BATCH_LIMIT, 2 * end));
    grown.set(batch.buffer.subarray(0, batch.used));
    batch.buffer = grown;
  }
  // Byte stores and, for a small body, a loop: a DataView and set() per
  // message were 18% of a producer's profile streaming 8-byte messages.
  const buffer = batch.buffer;
  const at = batch.used;
  const length = data.length;
  buffer[at] = length;
  buffer[at + 1] = length >>> 8;
  buffer[at + 2] = length >>> 16;
  buffer[at + 3] = length >>> 24;
  if (length <= 64) {
    for (let i = 0; i < length; i++) buffer[at + 4 + i] = data[i];
  } else buffer.set(data, at + 4);
  batch.used = end;
  batch.count++;
  packet.size += data.length;
  return true;
}

/** Copies `data` into a sealed memfd and returns a packet that owns it. */
function memfdPacket(data: Uint8Array, fds: number[]): Packet {
  const lc = libc();
  const memfd = lc.memfd_create(
    cString("ipc-channel-message"),
    MFD_CLOEXEC | MFD_ALLOW_SEALING,
  );
  if (memfd < 0) throw osError("memfd_create", errno());
  try {
    for (let at = 0; at < data.length;) {
      const chunk = Math.min(IO_CHUNK, data.length - at);
      const wrote = lc.write(
        memfd,
        data.subarray(at, at + chunk),
        BigInt(chunk),
      );
      if (wrote < 0) {
        const code = errno();
        if (code === EINTR) continue;
        throw osError("write to memfd", code);
      }
      at += wrote;
    }
    if (lc.fcntl(memfd, F_ADD_SEALS, REQUIRED_SEALS | F_SEAL_SEAL) < 0) {
      throw osError("fcntl(F_ADD_SEALS)", errno());
    }
  } catch (error) {
    closeFd(memfd);
    throw error;
  }
  return {
    kind: KIND_MEMFD,
    body: new Uint8Array(0),
    length: data.length,
    fds: [...fds, memfd],
    owned: [memfd],
    size: data.length,
  };
}

let inlineLimit = 0;

/** The largest body sent inline, from the socket's send buffer size. */
function learnInlineLimit(fd: number): void {
  if (inlineLimit > 0) return;
  const value = new Int32Array(1);
  const length = new Uint32Array([4]);
  const ok = libc().getsockopt(
    fd,
    SOL_SOCKET,
    SO_SNDBUF,
    new Uint8Array(value.buffer),
    new Uint8Array(length.buffer),
  ) === 0;
  // The kernel keeps 32 bytes of each send buffer for itself.
  const packet = ok ? Math.min(value[0] - 32, RECEIVE_BUFFER) : 64 * 1024;
  inlineLimit = packet - MEMFD_HEADER;
}

/**
 * Memory for queued message bodies: 1 MiB chunks handed out in order and
 * recycled once every body in them has been sent. On this machine a fresh
 * 64 KiB buffer costs ~9 µs (zeroing it, plus page faults whenever glibc
 * has trimmed the heap), against ~2 µs to copy into memory already touched.
 */
class QueueMemory {
  static readonly CHUNK = 1 << 20;
  static readonly KEEP = 4;
  /** Recycled chunks, with their addresses: asking Deno for a buffer's
   * address costs ~0.8 µs, a tenth of sending a queued 64 KiB body. */
  #free: { buffer: Uint8Array; address: bigint }[] = [];
  #current:
    | { buffer: Uint8Array; address: bigint; used: number; live: number }
    | undefined;

  copy(
    data: Uint8Array,
  ): { bytes: Uint8Array; address?: bigint; release?: () => void } {
    if (data.length === 0) return { bytes: data };
    // The constructor copies (a subclass's slice() may be a view) and, unlike
    // slice(), does not zero the copy first.
    if (data.length > QueueMemory.CHUNK / 4) {
      return { bytes: new Uint8Array(data) };
    }
    let chunk = this.#current;
    if (chunk === undefined || chunk.used + data.length > chunk.buffer.length) {
      let free = this.#free.pop();
      if (free === undefined) {
        const buffer = new Uint8Array(QueueMemory.CHUNK);
        free = { buffer, address: addressOf(buffer) };
      }
      chunk = { ...free, used: 0, live: 0 };
      this.#current = chunk;
    }
    const bytes = chunk.buffer.subarray(chunk.used, chunk.used + data.length);
    bytes.set(data);
    const address = chunk.address + BigInt(chunk.used);
    chunk.used += data.length;
    chunk.live++;
    const owner = chunk;
    return {
      bytes,
      address,
      release: () => {
        if (--owner.live > 0) return;
        if (owner === this.#current) owner.used = 0;
        else if (this.#free.length < QueueMemory.KEEP) {
          this.#free.push({ buffer: owner.buffer, address: owner.address });
        }
      },
    };
  }
}

const queueMemory = new QueueMemory();

/** Senders with a queue; a receive in this process may have made room. */
const pendingSenders = new Set<LinuxSender>();

let unloadHookedForSenders = false;

/** `Deno.exit()` skips microtasks but runs "unload": flush batches there. */
function hookUnload(): void {
  if (unloadHookedForSenders) return;
  unloadHookedForSenders = true;
  globalThis.addEventListener("unload", flushPendingSenders);
}

function flushPendingSenders(): void {
  if (pendingSenders.size === 0) return;
  for (const sender of [...pendingSenders]) sender.flush();
}

/** Endpoints listed in one message, checked before anything is sent. */
class HandlePlan {
  readonly fds: number[] = [];
  readonly #handles: (LinuxSender | LinuxReceiver | LinuxSharedMemory)[] = [];

  constructor(handles: readonly OsTransferable[]) {
    if (handles.length > MAX_HANDLES) {
      throw new IpcError(
        "Serialization",
        `a message can carry at most ${MAX_HANDLES} endpoints; this one has ${handles.length}`,
      );
    }
    const seen = new Set<LinuxReceiver>();
    for (const handle of handles) {
      if (handle instanceof LinuxReceiver) {
        if (seen.has(handle)) {
          throw new IpcError(
            "Serialization",
            "the same receiver appears twice in one message",
          );
        }
        seen.add(handle);
      } else if (
        !(handle instanceof LinuxSender) &&
        !(handle instanceof LinuxSharedMemory)
      ) {
        throw new IpcError(
          "Serialization",
          "an endpoint from another platform backend",
        );
      }
      this.fds.push(handle.descriptorForSend());
      this.#handles.push(handle);
    }
  }

  /** After an immediate send: the receivers now live in the message. */
  sent(): void {
    for (const handle of this.#handles) {
      if (handle instanceof LinuxReceiver) closeFd(handle.detach());
    }
  }

  /**
   * Before queueing: descriptors the queue owns, in order. Senders are
   * and shared memory are duplicated (they stay usable, and may be closed
   * before the flush); receivers are moved.
   */
  own(): number[] {
    const lc = libc();
    const owned = this.#handles.map(() => -1);
    this.#handles.forEach((handle, i) => {
      if (handle instanceof LinuxReceiver) return;
      owned[i] = lc.fcntl(this.fds[i], F_DUPFD_CLOEXEC, 0);
      if (owned[i] < 0) {
        const code = errno();
        closeAll(owned);
        throw osError("dup", code);
      }
    });
    this.#handles.forEach((handle, i) => {
      if (handle instanceof LinuxReceiver) owned[i] = handle.detach();
    });
    return owned;
  }
}

class LinuxSender implements OsSender {
  #fd: number;
  #closedReason: string | undefined;
  #broken: IpcError | undefined;
  #queue: (Packet | undefined)[] = [];
  #head = 0;
  #buffered = 0;
  #watch = 0;
  #burst = false;
  #drainWaiters = new Waiters<void, number>("the queue did not drain");

  constructor(fd: number) {
    this.#fd = fd;
    // A sender that arrived in a message may be this process's first socket.
    learnInlineLimit(fd);
    fdRegistry.register(this, fd, this);
  }

  get bufferedAmount(): number {
    return this.#buffered;
  }

  get closedReason(): string | undefined {
    return this.#closedReason;
  }

  descriptorForSend(): number {
    if (this.#closedReason !== undefined) {
      throw new IpcError("Closed", `this sender is ${this.#closedReason}`);
    }
    return this.#fd;
  }

  send(data: Uint8Array, handles: readonly OsTransferable[]): void {
    this.descriptorForSend();
    if (this.#broken) throw this.#broken;
    const batchable = handles.length === 0 && data.length <= BATCHED_MAX;
    if (batchable && (this.#burst || this.#head < this.#queue.length)) {
      // Right behind another send, or behind a queue: ride in a batch
      // packet, flushed when this task yields (or as the reader drains).
      if (!this.#burst) this.flush();
      if (this.#broken) throw this.#broken;
      if (this.#head < this.#queue.length || this.#burst) {
        this.#appendBatched(data);
        return;
      }
    }
    const plan = new HandlePlan(handles);
    if (this.#head < this.#queue.length) this.flush();
    if (this.#broken) throw this.#broken;
    let packet = data.length > inlineLimit
      ? memfdPacket(data, plan.fds)
      : inlinePacket(data, plan.fds);
    if (this.#head === this.#queue.length) {
      let code = transmit(this.#fd, packet);
      if (code === EMSGSIZE || code === ENOBUFS) {
        // The kernel could not take one packet this large: send the body
        // through a memfd rather than shrinking fragments.
        packet = memfdPacket(data, plan.fds);
        code = transmit(this.#fd, packet);
      }
      if (code === 0) {
        closeAll(packet.owned);
        plan.sent();
        poller.traffic();
        if (batchable) this.#beginBurst();
        return;
      }
      if (code !== EAGAIN) {
        closeAll(packet.owned);
        throw this.#failure(code);
      }
    }
    this.#enqueue(packet, plan);
  }

  #enqueue(packet: Packet, plan: HandlePlan): void {
    let owned: number[];
    try {
      owned = plan.own();
    } catch (error) {
      closeAll(packet.owned);
      throw error;
    }
    // The caller may reuse its buffer once send returns: keep a copy, in
    // recycled memory (fresh pages cost more here than the copy itself).
    const copy = queueMemory.copy(packet.body);
    const queued: Packet = {
      ...packet,
      body: copy.bytes,
      release: copy.release,
      address: copy.address,
      fds: [...owned, ...packet.owned],
      owned: [...owned, ...packet.owned],
      size: packet.size,
    };
    this.#queue.push(queued);
    this.#buffered += queued.size;
    this.#queued();
  }

  #appendBatched(data: Uint8Array): void {
    let tail = this.#queue[this.#queue.length - 1];
    if (
      this.#head === this.#queue.length || tail?.batch === undefined ||
      !appendToBatch(tail, data)
    ) {
      if (this.#burst && tail?.batch !== undefined) {
        // A full batch leaves now rather than when the task yields, so a
        // long burst overlaps with the reader instead of preceding it:
        // 50,000 small sends took 95 ms end to end, with the sender done
        // after 40 (measured).
        this.flush();
        if (this.#broken) throw this.#broken;
      }
      tail = batchPacket();
      appendToBatch(tail, data);
      this.#queue.push(tail);
    }
    this.#buffered += data.length;
    this.#queued();
  }

  /** Notes a non-empty queue; the reader's room is watched outside bursts. */
  #queued(): void {
    pendingSenders.add(this);
    if (!this.#burst && this.#watch === 0) {
      this.#watch = poller.watch(this.#fd, EPOLLOUT, () => this.flush());
    }
  }

  /**
   * Sends made in the same task as this one are batched: the first went out
   * at once (its errors reach its caller), the rest leave together when the
   * task yields.
   */
  #beginBurst(): void {
    this.#burst = true;
    hookUnload();
    queueMicrotask(() => {
      this.#burst = false;
      if (this.#head < this.#queue.length) {
        this.flush();
        if (this.#head < this.#queue.length) this.#queued();
      }
    });
  }

  /** The descriptor, for poll(2) while a queue is pending. */
  get descriptor(): number {
    return this.#fd;
  }

  #failure(code: number): IpcError {
    const error = isDisconnect(code)
      ? disconnectedSender()
      : osError("sendmsg", code);
    if (error.kind === "Disconnected") this.#broken = error;
    return error;
  }

  /** Sends what the kernel takes now; called on EPOLLOUT and after receives. */
  flush(): void {
    while (this.#head < this.#queue.length) {
      const packet = this.#queue[this.#head]!;
      const code = transmit(this.#fd, packet);
      if (code === EAGAIN) break;
      if (code !== 0) {
        this.#drop(this.#failure(code));
        return;
      }
      closeAll(packet.owned);
      packet.release?.();
      this.#queue[this.#head++] = undefined;
      this.#buffered -= packet.size;
    }
    if (this.#head === this.#queue.length) {
      this.#queue = [];
      this.#head = 0;
      this.#stopWatching();
    } else if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
    }
    this.#drainWaiters.resolveWhere(
      (threshold) => this.#buffered <= threshold,
      undefined,
    );
  }

  /** Gives up on the queue (the receiver is gone, or the OS refused). */
  #drop(error: IpcError): void {
    this.#broken ??= error;
    for (let i = this.#head; i < this.#queue.length; i++) {
      closeAll(this.#queue[i]!.owned);
      this.#queue[i]!.release?.();
    }
    this.#queue = [];
    this.#head = 0;
    this.#buffered = 0;
    this.#stopWatching();
    this.#drainWaiters.rejectAll(error);
  }

  #stopWatching(): void {
    if (!pendingSenders.delete(this)) return;
    if (this.#watch !== 0) poller.unwatch(this.#fd, this.#watch);
    this.#watch = 0;
    if (this.#closedReason !== undefined) this.#release();
  }

  drained(threshold = 0, options?: OsWaitOptions): Promise<void> {
    if (this.#broken) return Promise.reject(this.#broken);
    if (this.#buffered <= threshold) return Promise.resolve();
    return this.#drainWaiters.add(threshold, options);
  }

  clone(): OsSender {
    const copy = libc().fcntl(this.descriptorForSend(), F_DUPFD_CLOEXEC, 0);
    if (copy < 0) throw osError("dup", errno());
    return new LinuxSender(copy);
  }

  close(): void {
    if (this.#closedReason !== undefined) return;
    this.#closedReason = "closed";
    // A queue still owes messages: the descriptor goes once it is flushed.
    if (!pendingSenders.has(this)) this.#release();
  }

  #release(): void {
    fdRegistry.unregister(this);
    closeFd(this.#fd);
    this.#fd = -1;
  }
}

class LinuxReceiver implements OsReceiver {
  #fd: number;
  #closedReason: string | undefined;
  #ended = false;
  readonly #ready = new ReadyWaiters<OsMessage>(
    "no message",
    () => this.#receive(false),
    () => this.#ended,
  );
  /** Messages of a batch already read from the socket, and the next one. */
  #backlog: Uint8Array[] = [];
  #backlogAt = 0;

  constructor(fd: number) {
    this.#fd = fd;
    fdRegistry.register(this, fd, this);
  }

  get closedReason(): string | undefined {
    return this.#closedReason;
  }

  descriptorForSend(): number {
    this.#check();
    this.#spill();
    return this.#fd;
  }

  #check(): void {
    if (this.#closedReason !== undefined) {
      throw new IpcError("Closed", `this receiver is ${this.#closedReason}`);
    }
  }

  /** One message, or undefined; marks the end of the stream. */
  #receive(blocking: boolean, borrow = false): OsMessage | undefined {
    if (this.#backlogAt < this.#backlog.length) {
      const data = this.#backlog[this.#backlogAt++];
      if (this.#backlogAt === this.#backlog.length) {
        this.#backlog = [];
        this.#backlogAt = 0;
      }
      return { data, handles: [] };
    }
    for (;;) {
      if (this.#ended) throw disconnectedReceiver();
      const received = receiveOne(this.#fd, blocking, borrow);
      if (received === END_OF_STREAM) {
        this.#ended = true;
        throw disconnectedReceiver();
      }
      if (received === undefined) return undefined;
      if ("redirect" in received) {
        this.#follow(received.redirect);
        continue;
      }
      poller.traffic();
      flushPendingSenders();
      if ("batch" in received) {
        this.#backlog = received.batch;
        this.#backlogAt = 1;
        if (this.#backlog.length === 1) this.#backlog = [];
        return { data: received.batch[0], handles: [] };
      }
      return received;
    }
  }

  /** Switches to the descriptor a spilled backlog's redirect names. */
  #follow(next: number): void {
    // Only a socket that no sender can still write to may redirect us: a
    // live channel's sender must not be able to hijack it.
    if (!drainedAndClosed(this.#fd)) {
      closeFd(next);
      throw malformed("a redirect on a channel that still has senders");
    }
    this.#switchTo(next);
  }

  #switchTo(next: number): void {
    this.#ready.stop(this.#fd);
    this.onDescriptorChange?.(this.#fd, next);
    fdRegistry.unregister(this);
    closeFd(this.#fd);
    this.#fd = next;
    fdRegistry.register(this, next, this);
    this.#ready.follow(next);
  }

  /**
   * Puts messages already read from a batch back under a descriptor of
   * their own, ahead of the rest: a socket holding them, then a redirect to
   * the original. Called before the receiver leaves this handle, so that
   * whoever gets it next reads every message in order.
   */
  #spill(): void {
    if (this.#backlogAt >= this.#backlog.length) return;
    const pair = new Int32Array(2);
    const lc = libc();
    if (
      lc.socketpair(
        AF_UNIX,
        SOCK_SEQPACKET | SOCK_CLOEXEC,
        0,
        new Uint8Array(pair.buffer),
      ) < 0
    ) {
      throw osError("socketpair", errno());
    }
    const rest = batchPacket();
    for (let i = this.#backlogAt; i < this.#backlog.length; i++) {
      appendToBatch(rest, this.#backlog[i]);
    }
    const redirect: Packet = {
      kind: KIND_REDIRECT,
      body: new Uint8Array(0),
      length: 0,
      fds: [this.#fd],
      owned: [],
      size: 0,
    };
    let code = transmit(pair[0], rest);
    if (code === 0) code = transmit(pair[0], redirect);
    closeFd(pair[0]);
    if (code !== 0) {
      closeFd(pair[1]);
      throw osError("sendmsg (spilling a receiver's backlog)", code);
    }
    lc.shutdown(pair[1], SHUT_WR);
    this.#backlog = [];
    this.#backlogAt = 0;
    this.#switchTo(pair[1]);
  }

  /** Lets a receiver set follow this receiver to a new descriptor. */
  onDescriptorChange?: (previous: number, next: number) => void;

  tryRecv(borrow = false): OsMessage | undefined {
    this.#check();
    flushPendingSenders();
    return this.#receive(false, borrow);
  }

  recvSync(borrow = false): OsMessage {
    this.#check();
    if (this.#ready.size > 0) {
      throw new IpcError(
        "Io",
        "recvSync() called while a recv() on the same receiver is pending",
      );
    }
    // A message already here (a batch's next, or one in the socket) costs
    // no clock reads.
    flushPendingSenders();
    const ready = this.#receive(false, borrow);
    if (ready !== undefined) return ready;
    if (poller.recentTraffic()) {
      // The answer to what we just sent is likely microseconds away: poll
      // briefly (yielding the core to the peer) before the blocking call.
      const start = performance.now();
      do {
        libc().sched_yield();
        flushPendingSenders();
        const message = this.#receive(false, borrow);
        if (message !== undefined) return message;
      } while (performance.now() - start < SPIN_MS);
    }
    for (;;) {
      flushPendingSenders();
      if (pendingSenders.size === 0) {
        const message = this.#receive(true, borrow);
        if (message !== undefined) return message;
        continue;
      }
      // Our own queued sends may be what the peer waits for: keep flushing
      // them while we wait.
      const message = this.#receive(false, borrow);
      if (message !== undefined) return message;
      waitReadableOrWritable(this.#fd, [...pendingSenders]);
    }
  }

  recv(options?: OsWaitOptions): Promise<OsMessage> {
    if (options?.signal?.aborted) return Promise.reject(options.signal.reason);
    try {
      this.#check();
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#ready.wait(this.#fd, options);
  }

  /** Hands the descriptor to a message; this handle becomes unusable. */
  detach(reason = "sent away inside a message"): number {
    this.#spill();
    const fd = this.#fd;
    this.#retire(reason);
    return fd;
  }

  close(): void {
    if (this.#closedReason !== undefined) return;
    const fd = this.#fd;
    this.#retire("closed");
    closeFd(fd);
  }

  #retire(reason: string): void {
    this.#closedReason = reason;
    this.#ready.stop(this.#fd);
    fdRegistry.unregister(this);
    this.#fd = -1;
    this.#ready.rejectAll(
      new IpcError("Closed", `this receiver was ${reason}`),
    );
  }
}

/** Blocks until `fd` is readable or a queued sender can write; flushes. */
function waitReadableOrWritable(fd: number, senders: LinuxSender[]): void {
  const fds = [fd, ...senders.map((s) => s.descriptor)];
  const table = new Uint8Array(8 * fds.length);
  const view = new DataView(table.buffer);
  fds.forEach((each, i) => {
    view.setInt32(8 * i, each, true);
    view.setInt16(8 * i + 4, i === 0 ? POLLIN : POLLOUT, true);
  });
  const ready = libc().poll(table, fds.length, -1);
  if (ready < 0 && errno() !== EINTR) throw osError("poll", errno());
}

class LinuxIncoming implements OsIncomingHandle {
  #fd: number;

  constructor(fd: number) {
    this.#fd = fd;
  }

  #take(): number {
    if (this.#fd < 0) {
      throw new IpcError("Serialization", "a handle was used twice");
    }
    const fd = this.#fd;
    this.#fd = -1;
    return fd;
  }

  intoSender(): OsSender {
    return new LinuxSender(this.#take());
  }

  intoReceiver(): OsReceiver {
    return new LinuxReceiver(this.#take());
  }

  intoSharedMemory(): LinuxSharedMemory {
    return LinuxSharedMemory.adopt(this.#take());
  }

  close(): void {
    closeFd(this.#fd);
    this.#fd = -1;
  }
}

// ---------------------------------------------------------------------------
// Servers: a listening socket in a private directory.

function socketAddress(path: string): Uint8Array<ArrayBuffer> {
  const bytes = new TextEncoder().encode(path);
  if (bytes.length >= SOCKADDR_UN_PATH_MAX) {
    throw new IpcError(
      "Io",
      `server name is ${bytes.length} bytes; a Unix socket path must be under ${SOCKADDR_UN_PATH_MAX}: ${path}`,
      { code: "ENAMETOOLONG" },
    );
  }
  const address = new Uint8Array(2 + SOCKADDR_UN_PATH_MAX);
  new DataView(address.buffer).setUint16(0, AF_UNIX, true);
  address.set(bytes, 2);
  return address;
}

function randomHex(bytes: number): string {
  const random = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(random, (b) => b.toString(16).padStart(2, "0")).join("");
}

const openServers = new Set<LinuxServer>();
let unloadHooked = false;

function removeOnExit(server: LinuxServer): void {
  openServers.add(server);
  if (unloadHooked) return;
  unloadHooked = true;
  globalThis.addEventListener("unload", () => {
    for (const open of [...openServers]) open.close();
  });
}

function peerCredentials(fd: number): PeerCredentials {
  const credentials = new Uint8Array(UCRED_SIZE);
  const length = new Uint32Array([UCRED_SIZE]);
  if (
    libc().getsockopt(
      fd,
      SOL_SOCKET,
      SO_PEERCRED,
      credentials,
      new Uint8Array(length.buffer),
    ) < 0
  ) {
    throw osError("getsockopt(SO_PEERCRED)", errno());
  }
  const view = new DataView(credentials.buffer);
  return {
    pid: view.getInt32(0, true),
    uid: view.getUint32(4, true),
    gid: view.getUint32(8, true),
  };
}

class LinuxServer implements OsServer {
  readonly name: string;
  readonly #directory: string;
  #fd: number;
  readonly #ready = new ReadyWaiters<OsAccepted>(
    "no client connected",
    () => this.#acceptNow(),
  );

  constructor() {
    const lc = libc();
    const base = (getenv("TMPDIR") || "/tmp").replace(/\/+$/, "");
    let directory = "";
    for (;;) {
      directory = `${base}/ipc-channel-${randomHex(16)}`;
      if (lc.mkdir(cString(directory), 0o700) === 0) break;
      const code = errno();
      if (code !== EEXIST) throw osError(`mkdir ${directory}`, code);
    }
    this.#directory = directory;
    this.name = `${directory}/socket`;
    const fd = lc.socket(
      AF_UNIX,
      SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK,
      0,
    );
    if (fd < 0) {
      const code = errno();
      lc.rmdir(cString(directory));
      throw osError("socket", code);
    }
    this.#fd = fd;
    const address = socketAddress(this.name);
    if (
      lc.bind(fd, address, address.length) < 0 || lc.listen(fd, 128) < 0
    ) {
      const code = errno();
      this.close();
      throw osError(`bind ${this.name}`, code);
    }
    removeOnExit(this);
  }

  #acceptNow(): OsAccepted | undefined {
    for (;;) {
      const fd = libc().accept4(this.#fd, null, null, SOCK_CLOEXEC);
      if (fd >= 0) {
        libc().shutdown(fd, SHUT_WR);
        let peer: PeerCredentials;
        try {
          peer = peerCredentials(fd);
        } catch (error) {
          closeFd(fd);
          throw error;
        }
        return { receiver: new LinuxReceiver(fd), peer };
      }
      const code = errno();
      if (code === EINTR) continue;
      if (code === EAGAIN) return undefined;
      throw osError("accept4", code);
    }
  }

  accept(options?: OsWaitOptions): Promise<OsAccepted> {
    if (options?.signal?.aborted) return Promise.reject(options.signal.reason);
    if (this.#fd < 0) {
      return Promise.reject(new IpcError("Closed", "the server is closed"));
    }
    return this.#ready.wait(this.#fd, options);
  }

  close(): void {
    if (this.#fd < 0) return;
    this.#ready.stop(this.#fd);
    closeFd(this.#fd);
    this.#fd = -1;
    openServers.delete(this);
    const lc = libc();
    lc.unlink(cString(this.name));
    lc.rmdir(cString(this.#directory));
    this.#ready.rejectAll(new IpcError("Closed", "the server was closed"));
  }
}

function connect(name: string): OsSender {
  const lc = libc();
  const address = socketAddress(name);
  const fd = lc.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) throw osError("socket", errno());
  for (;;) {
    if (lc.connect(fd, address, address.length) === 0) break;
    const code = errno();
    if (code === EINTR) continue;
    closeFd(fd);
    throw osError(`connect to ${name}`, code);
  }
  lc.shutdown(fd, SHUT_RD);
  return new LinuxSender(fd);
}

function channel(): [OsSender, OsReceiver] {
  const pair = new Int32Array(2);
  const lc = libc();
  if (
    lc.socketpair(
      AF_UNIX,
      SOCK_SEQPACKET | SOCK_CLOEXEC,
      0,
      new Uint8Array(pair.buffer),
    ) < 0
  ) {
    throw osError("socketpair", errno());
  }
  // One direction only: a receiver cannot write back into its sender.
  lc.shutdown(pair[0], SHUT_RD);
  lc.shutdown(pair[1], SHUT_WR);
  return [new LinuxSender(pair[0]), new LinuxReceiver(pair[1])];
}

/** The Linux implementation of {@linkcode OsPlatform}. */
export const linux: OsPlatform = {
  channel,
  connect,
  listen: () => new LinuxServer(),
  processUid: () => libc().getuid(),
  takeEnv,
  sharedMemory: (length) => LinuxSharedMemory.create(length),
  receiverSet: () =>
    new LinuxReceiverSet((receiver) => {
      if (!(receiver instanceof LinuxReceiver)) {
        throw new IpcError("Io", "a receiver from another platform backend");
      }
      return new LinuxReceiver(receiver.detach("added to a receiver set"));
    }),
};

/** Resolves once no wait is parked (tests use it before their op check). */
export function settled(): Promise<void> {
  return poller.idle();
}
