/**
 * `Deno.dlopen` symbol table, constants and C struct layouts for glibc on
 * Linux (x86_64 and aarch64). This file and `platform/` are the only places
 * that touch raw memory or file descriptors.
 *
 * Functions that return `ssize_t` are declared with an `i32` result: every
 * call site bounds its length below 2 GiB, and a 32-bit result keeps the call
 * on Deno's fast path (a 64-bit result comes back as a BigInt).
 *
 * @module
 */

const symbols = {
  socketpair: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  listen: { parameters: ["i32", "i32"], result: "i32" },
  accept4: { parameters: ["i32", "pointer", "pointer", "i32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  send: { parameters: ["i32", "buffer", "usize", "i32"], result: "i32" },
  sendmsg: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  recvmsg: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  getsockopt: {
    parameters: ["i32", "i32", "i32", "buffer", "buffer"],
    result: "i32",
  },
  setsockopt: {
    parameters: ["i32", "i32", "i32", "buffer", "u32"],
    result: "i32",
  },
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "i32" },
  write: { parameters: ["i32", "buffer", "usize"], result: "i32" },
  pread: { parameters: ["i32", "buffer", "usize", "i64"], result: "i32" },
  lseek: { parameters: ["i32", "i64", "i32"], result: "i64" },
  memfd_create: { parameters: ["buffer", "u32"], result: "i32" },
  ftruncate: { parameters: ["i32", "i64"], result: "i32" },
  mmap: {
    parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"],
    result: "pointer",
  },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  poll: { parameters: ["buffer", "u32", "i32"], result: "i32" },
  epoll_create1: { parameters: ["i32"], result: "i32" },
  epoll_ctl: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  epoll_wait: { parameters: ["i32", "buffer", "i32", "i32"], result: "i32" },
  /** The same `epoll_wait`, run on Deno's blocking pool: the one parked wait. */
  epoll_wait_parked: {
    name: "epoll_wait",
    parameters: ["i32", "buffer", "i32", "i32"],
    result: "i32",
    nonblocking: true,
  },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  mkdir: { parameters: ["buffer", "u32"], result: "i32" },
  rmdir: { parameters: ["buffer"], result: "i32" },
  unlink: { parameters: ["buffer"], result: "i32" },
  getenv: { parameters: ["buffer"], result: "pointer" },
  unsetenv: { parameters: ["buffer"], result: "i32" },
  getuid: { parameters: [], result: "u32" },
  /** Raw syscall(2): fstat through it works on any glibc (the `fstat`
   * symbol only exists since 2.33, and one missing symbol fails dlopen). */
  syscall: { parameters: ["i64", "i32", "buffer"], result: "i32" },
  sched_yield: { parameters: [], result: "i32" },
  getpid: { parameters: [], result: "i32" },
  strerror: { parameters: ["i32"], result: "pointer" },
  __errno_location: { parameters: [], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

let library: Deno.DynamicLibrary<typeof symbols> | undefined;

/** Opens libc once, on first use, so that importing the module costs nothing. */
export function libc(): Deno.DynamicLibrary<typeof symbols>["symbols"] {
  library ??= Deno.dlopen("libc.so.6", symbols);
  return library.symbols;
}

let errnoView: Deno.UnsafePointerView | undefined;

/** The calling thread's `errno`, read right after a failed call. */
export function errno(): number {
  if (errnoView === undefined) {
    const where = libc().__errno_location();
    if (where === null) return 0;
    errnoView = new Deno.UnsafePointerView(where);
  }
  return errnoView.getInt32(0);
}

/** The C library's text for an errno value. */
export function strerror(code: number): string {
  const text = libc().strerror(code);
  return text === null
    ? `errno ${code}`
    : Deno.UnsafePointerView.getCString(text);
}

/** A NUL-terminated copy of `text` for `buffer` parameters. */
export function cString(text: string): Uint8Array<ArrayBuffer> {
  const bytes = new TextEncoder().encode(text);
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return out;
}

/** `getenv(name)` without Deno's env permission. */
export function getenv(name: string): string | undefined {
  const value = libc().getenv(cString(name));
  return value === null ? undefined : Deno.UnsafePointerView.getCString(value);
}

/** Reads and removes an environment variable, without Deno's env permission. */
export function takeEnv(name: string): string | undefined {
  const value = getenv(name);
  if (value !== undefined) libc().unsetenv(cString(name));
  return value;
}

/** The address of a buffer's first byte, for a pointer field in a struct. */
export function addressOf(bytes: Uint8Array): bigint {
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes)));
}

// errno values (asm-generic, shared by x86_64 and aarch64)
export const ENOENT = 2;
export const EINTR = 4;
export const EBADF = 9;
export const EAGAIN = 11;
export const ENOMEM = 12;
export const EACCES = 13;
export const EEXIST = 17;
export const EFAULT = 14;
export const EINVAL = 22;
export const ENFILE = 23;
export const EMFILE = 24;
export const EPIPE = 32;
export const ENOTSOCK = 88;
export const EMSGSIZE = 90;
export const ECONNRESET = 104;
export const ENOBUFS = 105;
export const ENOTCONN = 107;
export const ECONNREFUSED = 111;

export const AF_UNIX = 1;
export const SOCK_SEQPACKET = 5;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1;
export const SO_SNDBUF = 7;
export const SO_PEERCRED = 17;
export const SCM_RIGHTS = 1;
export const SHUT_RD = 0;
export const SHUT_WR = 1;
export const MSG_PEEK = 0x2;
export const MSG_CTRUNC = 0x8;
export const MSG_TRUNC = 0x20;
export const MSG_DONTWAIT = 0x40;
export const MSG_NOSIGNAL = 0x4000;
export const MSG_CMSG_CLOEXEC = 0x40000000;

export const F_DUPFD_CLOEXEC = 1030;
export const F_ADD_SEALS = 1033;
export const F_GET_SEALS = 1034;
export const F_SEAL_SEAL = 1;
export const F_SEAL_SHRINK = 2;
export const F_SEAL_GROW = 4;
export const F_SEAL_WRITE = 8;
export const MFD_CLOEXEC = 1;
export const MFD_ALLOW_SEALING = 2;
export const SEEK_END = 2;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 1;
export const MAP_PRIVATE = 2;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;

export const POLLIN = 0x1;
export const POLLOUT = 0x4;
export const POLLERR = 0x8;
export const POLLHUP = 0x10;
export const EPOLLIN = 0x1;
export const EPOLLOUT = 0x4;
export const EPOLLERR = 0x8;
export const EPOLLHUP = 0x10;
export const EPOLL_CLOEXEC = 0o2000000;
export const EPOLL_CTL_ADD = 1;
export const EPOLL_CTL_DEL = 2;
export const EPOLL_CTL_MOD = 3;
export const EFD_NONBLOCK = 0o4000;
export const EFD_CLOEXEC = 0o2000000;

/** `struct msghdr` (64-bit): field offsets and size. */
export const MSGHDR = {
  size: 56,
  name: 0,
  namelen: 8,
  iov: 16,
  iovlen: 24,
  control: 32,
  controllen: 40,
  flags: 48,
} as const;

/** `struct iovec`: `iov_base` at 0, `iov_len` at 8. */
export const IOVEC_SIZE = 16;

/** `struct cmsghdr`: `cmsg_len` (size_t), level, type, then data at 16. */
export const CMSG_HEADER = 16;

/** `CMSG_SPACE(n)`: a header plus `n` data bytes rounded up to 8. */
export function cmsgSpace(dataBytes: number): number {
  return CMSG_HEADER + ((dataBytes + 7) & ~7);
}

/** The kernel's cap on descriptors in one SCM_RIGHTS message (SCM_MAX_FD). */
export const SCM_MAX_FD = 253;

/**
 * `struct epoll_event`: `events` (u32) then `data` (u64). x86_64 packs it to
 * 12 bytes; every other 64-bit ABI aligns `data` to 8, giving 16.
 */
export const EPOLL_EVENT = Deno.build.arch === "x86_64"
  ? { size: 12, data: 4 } as const
  : { size: 16, data: 8 } as const;

/** fstat's syscall number, and where `struct stat` keeps st_dev and st_ino
 * (u64 each, at 0 and 8, on x86_64 and on the generic aarch64 layout). */
export const SYS_FSTAT = Deno.build.arch === "x86_64" ? 5n : 80n;
export const STAT_SIZE = 256;

/** `struct sockaddr_un`: `sun_family` (u16) then a 108-byte path. */
export const SOCKADDR_UN_PATH_MAX = 108;

/** `struct ucred` from SO_PEERCRED: pid, uid, gid as 32-bit values. */
export const UCRED_SIZE = 12;
