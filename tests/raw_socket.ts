/**
 * Raw Linux frames written through libc, for the reliability tests
 * (fuzz_test.ts, hostile_server_test.ts): a peer that speaks the wire format
 * of platform/linux.ts, or does not.
 *
 * @module
 */

import {
  addressOf,
  AF_UNIX,
  cmsgSpace,
  cString,
  errno,
  F_ADD_SEALS,
  F_SEAL_GROW,
  F_SEAL_SEAL,
  F_SEAL_SHRINK,
  F_SEAL_WRITE,
  libc,
  MFD_ALLOW_SEALING,
  MFD_CLOEXEC,
  MSG_DONTWAIT,
  MSG_NOSIGNAL,
  MSGHDR,
  SCM_RIGHTS,
  SOCK_CLOEXEC,
  SOCK_SEQPACKET,
  SOCKADDR_UN_PATH_MAX,
  SOL_SOCKET,
} from "../ffi/libc.ts";

export const ALL_SEALS = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE |
  F_SEAL_SEAL;

/** A raw SOCK_SEQPACKET socket connected to `name`. */
export function rawConnect(name: string): number {
  const lc = libc();
  const fd = lc.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) throw new Error(`socket: errno ${errno()}`);
  const address = new Uint8Array(2 + SOCKADDR_UN_PATH_MAX);
  new DataView(address.buffer).setUint16(0, AF_UNIX, true);
  address.set(new TextEncoder().encode(name), 2);
  if (lc.connect(fd, address, address.length) !== 0) {
    const e = errno();
    lc.close(fd);
    throw new Error(`connect: errno ${e}`);
  }
  return fd;
}

/**
 * One packet with `fds` in SCM_RIGHTS. Returns the bytes sent, or -errno
 * (e.g. the peer is gone, or its buffer is full with `dontWait`).
 */
export function rawSend(
  fd: number,
  bytes: Uint8Array,
  fds: number[] = [],
  dontWait = false,
): number {
  const data = new Uint8Array(Math.max(bytes.length, 1));
  data.set(bytes);
  const iov = new Uint8Array(16);
  const iovView = new DataView(iov.buffer);
  iovView.setBigUint64(0, addressOf(data), true);
  iovView.setBigUint64(8, BigInt(bytes.length), true);
  const header = new Uint8Array(MSGHDR.size);
  const view = new DataView(header.buffer);
  view.setBigUint64(MSGHDR.iov, addressOf(iov), true);
  view.setBigUint64(MSGHDR.iovlen, 1n, true);
  const control = new Uint8Array(cmsgSpace(4 * Math.max(fds.length, 1)));
  if (fds.length > 0) {
    const c = new DataView(control.buffer);
    c.setBigUint64(0, BigInt(16 + 4 * fds.length), true);
    c.setInt32(8, SOL_SOCKET, true);
    c.setInt32(12, SCM_RIGHTS, true);
    fds.forEach((each, i) => c.setInt32(16 + 4 * i, each, true));
    view.setBigUint64(MSGHDR.control, addressOf(control), true);
    view.setBigUint64(
      MSGHDR.controllen,
      BigInt(cmsgSpace(4 * fds.length)),
      true,
    );
  }
  const sent = libc().sendmsg(
    fd,
    header,
    MSG_NOSIGNAL | (dontWait ? MSG_DONTWAIT : 0),
  );
  return sent < 0 ? -errno() : sent;
}

/** Sends, then closes our copies of `fds` whatever happened. */
export function rawSendOwned(
  fd: number,
  bytes: Uint8Array,
  fds: number[],
  dontWait = false,
): number {
  try {
    return rawSend(fd, bytes, fds, dontWait);
  } finally {
    for (const each of fds) libc().close(each);
  }
}

/** An 8-byte frame header (kind 1 inline, 2 memfd) plus `extra` zero bytes. */
export function frameHeader(
  kind: number,
  fdCount: number,
  extra = 0,
): Uint8Array {
  const bytes = new Uint8Array(8 + extra);
  const view = new DataView(bytes.buffer);
  view.setUint16(0, 0x4950, true);
  bytes[2] = kind;
  view.setUint32(4, fdCount, true);
  return bytes;
}

/** An inline frame around MessagePack `body`. */
export function inlineFrame(body: Uint8Array, fdCount = 0): Uint8Array {
  const frame = frameHeader(1, fdCount, body.length);
  frame.set(body, 8);
  return frame;
}

/** An inline frame holding a short MessagePack string. */
export function stringFrame(text: string, fdCount = 0): Uint8Array {
  const utf8 = new TextEncoder().encode(text);
  if (utf8.length >= 32) throw new RangeError("fixstr only");
  return inlineFrame(new Uint8Array([0xa0 | utf8.length, ...utf8]), fdCount);
}

/** A memfd frame header announcing `length` body bytes. */
export function memfdHeader(length: bigint, fdCount = 1): Uint8Array {
  const frame = frameHeader(2, fdCount, 8);
  new DataView(frame.buffer).setBigUint64(8, length, true);
  return frame;
}

/** A memfd holding `body` (or `size` bytes of 0x41), with `seals`. */
export function memfd(body: Uint8Array | number, seals: number): number {
  const lc = libc();
  const fd = lc.memfd_create(
    cString("hostile"),
    MFD_CLOEXEC | MFD_ALLOW_SEALING,
  );
  if (fd < 0) throw new Error(`memfd_create: errno ${errno()}`);
  const bytes = typeof body === "number"
    ? new Uint8Array(body).fill(0x41)
    : body;
  if (bytes.length > 0) lc.write(fd, bytes, BigInt(bytes.length));
  if (seals) lc.fcntl(fd, F_ADD_SEALS, seals);
  return fd;
}

/** Closes a raw descriptor. */
export function rawClose(fd: number): void {
  libc().close(fd);
}
