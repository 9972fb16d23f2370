/**
 * Linux shared memory: a memfd mapped `MAP_SHARED`, passed as a descriptor.
 *
 * Lifetime of the mapping. `Deno.UnsafePointerView.getArrayBuffer` gives a
 * zero-copy `ArrayBuffer` over the mapping that V8 does not track, so the
 * mapping must outlive every view. Nothing here ever unmaps while the
 * `ArrayBuffer` is reachable: `close()` and `take()` only drop this object's
 * reference (and close the descriptor; the mapping survives that). A
 * `FinalizationRegistry` on the `ArrayBuffer` releases the memory once the
 * buffer itself is unreachable.
 *
 * Even then it does not `munmap`: `ArrayBuffer.prototype.transfer()` and
 * `postMessage` transfers move the backing store to a new `ArrayBuffer` that
 * the registry cannot see, and that buffer may still be alive. So the region
 * is replaced in place (`MAP_FIXED`) by a private anonymous `MAP_NORESERVE`
 * mapping: the shared pages are released (the memfd is freed once no process
 * maps or holds it), and a transferred buffer reads zeros instead of freed
 * memory. What stays is the address range, which costs no memory until
 * someone writes to it.
 *
 * Regions are sealed against shrinking and growing, and a received region
 * must carry `F_SEAL_SHRINK`: otherwise the peer could truncate the file and
 * turn every read of the mapping into a SIGBUS.
 *
 * @module
 */

import { MappedRegion } from "./shared_memory.ts";
import {
  cString,
  EINTR,
  errno,
  F_ADD_SEALS,
  F_GET_SEALS,
  F_SEAL_GROW,
  F_SEAL_SEAL,
  F_SEAL_SHRINK,
  libc,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_NORESERVE,
  MAP_PRIVATE,
  MAP_SHARED,
  MFD_ALLOW_SEALING,
  MFD_CLOEXEC,
  PROT_READ,
  PROT_WRITE,
  SEEK_END,
  STAT_SIZE,
  SYS_FSTAT,
} from "../ffi/libc.ts";
import { osError } from "./linux_errors.ts";
import { IpcError } from "./types.ts";

/** The name every region's memfd carries (visible in /proc/PID/maps). */
export const SHARED_MEMORY_NAME = "ipc-channel-shared-memory";
/** Largest region accepted: far above real use, far below V8's limits. */
const MAX_LENGTH = 2 ** 40;
const MAP_FAILED = 0xffff_ffff_ffff_ffffn;

interface Mapping {
  address: bigint;
  length: number;
  inode: string | undefined;
}

/** Released mappings, for tests and diagnostics. */
export const sharedMemoryStats = { mapped: 0, released: 0 };

const mappingRegistry = new FinalizationRegistry<Mapping>(release);
const fdRegistry = new FinalizationRegistry<number>((fd) => {
  libc().close(fd);
});

/** Replaces a mapping nobody can reach any more; see the module doc. */
function release(mapping: Mapping): void {
  const cached = mapping.inode === undefined
    ? undefined
    : mappingsByInode.get(mapping.inode);
  if (cached !== undefined && cached.deref() === undefined) {
    mappingsByInode.delete(mapping.inode!);
  }
  const result = libc().mmap(
    Deno.UnsafePointer.create(mapping.address),
    BigInt(mapping.length),
    PROT_READ | PROT_WRITE,
    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE,
    -1,
    0n,
  );
  if (BigInt(Deno.UnsafePointer.value(result)) !== MAP_FAILED) {
    sharedMemoryStats.released++;
  }
}

/**
 * Live mappings by memfd inode: a region that arrives again (ping-pong, a
 * buffer handed back and forth) reuses the mapping this process already has
 * instead of mapping 16 MiB anew and leaving the old one to the collector.
 */
const mappingsByInode = new Map<string, WeakRef<ArrayBuffer>>();

function inodeOf(fd: number): string | undefined {
  const stat = new Uint8Array(STAT_SIZE);
  if (libc().syscall(SYS_FSTAT, fd, stat) !== 0) return undefined;
  const view = new DataView(stat.buffer);
  return `${view.getBigUint64(0, true)}:${view.getBigUint64(8, true)}`;
}

/** Maps `length` bytes of `fd`; the view lives as long as it is reachable. */
function map(fd: number, length: number): Uint8Array {
  if (length === 0) return new Uint8Array(0);
  const inode = inodeOf(fd);
  const known = inode === undefined
    ? undefined
    : mappingsByInode.get(inode)?.deref();
  // Sealed against growing and shrinking: the same inode has the same size.
  if (known !== undefined && known.byteLength === length) {
    return new Uint8Array(known);
  }
  const pointer = libc().mmap(
    null,
    BigInt(length),
    PROT_READ | PROT_WRITE,
    MAP_SHARED,
    fd,
    0n,
  );
  const address = BigInt(Deno.UnsafePointer.value(pointer));
  if (pointer === null || address === MAP_FAILED) {
    throw osError("mmap", errno());
  }
  let buffer: ArrayBuffer;
  try {
    buffer = Deno.UnsafePointerView.getArrayBuffer(pointer, length);
  } catch (cause) {
    libc().munmap(pointer, BigInt(length));
    throw new IpcError("Io", `cannot view ${length} bytes of shared memory`, {
      cause,
      code: "ENOMEM",
    });
  }
  mappingRegistry.register(buffer, { address, length, inode });
  if (inode !== undefined) mappingsByInode.set(inode, new WeakRef(buffer));
  sharedMemoryStats.mapped++;
  return new Uint8Array(buffer);
}

function closeFd(fd: number): void {
  if (fd >= 0) libc().close(fd);
}

/** A memfd region mapped into this process. */
export class LinuxSharedMemory extends MappedRegion {
  #fd: number;

  private constructor(fd: number, length: number) {
    super(length, () => map(fd, length), () => closeFd(fd));
    this.#fd = fd;
    fdRegistry.register(this, fd, this);
  }

  /** A new region of `length` zero bytes. */
  static create(length: number): LinuxSharedMemory {
    if (!Number.isSafeInteger(length) || length < 0 || length > MAX_LENGTH) {
      throw new RangeError(
        `shared memory length must be an integer from 0 to ${MAX_LENGTH}, not ${length}`,
      );
    }
    const lc = libc();
    const fd = lc.memfd_create(
      cString(SHARED_MEMORY_NAME),
      MFD_CLOEXEC | MFD_ALLOW_SEALING,
    );
    if (fd < 0) throw osError("memfd_create", errno());
    for (;;) {
      if (lc.ftruncate(fd, BigInt(length)) === 0) break;
      const code = errno();
      if (code === EINTR) continue;
      closeFd(fd);
      throw osError("ftruncate", code);
    }
    if (
      lc.fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0
    ) {
      const code = errno();
      closeFd(fd);
      throw osError("fcntl(F_ADD_SEALS)", code);
    }
    return new LinuxSharedMemory(fd, length);
  }

  /** Adopts a received descriptor after checking it is a sealed memfd. */
  static adopt(fd: number): LinuxSharedMemory {
    const lc = libc();
    const seals = lc.fcntl(fd, F_GET_SEALS, 0);
    if (seals < 0 || (seals & F_SEAL_SHRINK) === 0) {
      closeFd(fd);
      throw new IpcError(
        "Io",
        "malformed message from peer: shared memory that is not a memfd sealed against shrinking",
        { code: "EPROTO" },
      );
    }
    const size = BigInt(lc.lseek(fd, 0n, SEEK_END));
    if (size < 0n || size > BigInt(MAX_LENGTH)) {
      closeFd(fd);
      throw new IpcError(
        "Io",
        `malformed message from peer: shared memory of ${size} bytes`,
        { code: "EPROTO" },
      );
    }
    return new LinuxSharedMemory(fd, Number(size));
  }

  /** The descriptor to pass; the kernel gives the peer its own. */
  descriptorForSend(): number {
    this.checkOpen();
    return this.#fd;
  }

  protected releaseHandle(): void {
    fdRegistry.unregister(this);
    closeFd(this.#fd);
    this.#fd = -1;
  }
}
