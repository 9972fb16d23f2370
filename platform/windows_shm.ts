/**
 * Windows shared memory: a pagefile-backed section (`CreateFileMappingW`)
 * mapped with `MapViewOfFile`, passed as a section handle. Windows has no
 * call that returns a section's size, so the size travels in the frame next
 * to the handle; the receiver maps exactly that many bytes, and
 * `MapViewOfFile` refuses a view larger than the section, so a lying peer
 * gets an error, never a view past the end.
 *
 * A zero-length region is a one-byte section viewed as zero bytes (Windows
 * refuses empty sections).
 *
 * Lifetime of the mapping, as on Linux: views from
 * `Deno.UnsafePointerView.getArrayBuffer` are not tracked by V8, so nothing
 * unmaps while an `ArrayBuffer` over the view is reachable. Once it is not,
 * a `FinalizationRegistry` unmaps the view and reserves-and-commits private
 * zeroed pages at the same address (best effort), so that a buffer moved
 * away by `transfer()` reads zeros rather than faulting.
 *
 * @module
 */

import { MappedRegion } from "./shared_memory.ts";
import {
  FILE_MAP_ALL_ACCESS,
  handle,
  INVALID_HANDLE_VALUE,
  kernel32,
  lastError,
  MEM_COMMIT,
  MEM_RESERVE,
  PAGE_READWRITE,
  SEC_COMMIT,
} from "../ffi/kernel32.ts";
import { winError } from "./windows_errors.ts";
import { IpcError } from "./types.ts";

/** Largest region accepted (sections are limited by the pagefile anyway). */
const MAX_LENGTH = 2 ** 40;

interface Mapping {
  address: bigint;
  length: number;
}

/** Released mappings, for tests and diagnostics. */
export const sharedMemoryStats = { mapped: 0, released: 0 };

const mappingRegistry = new FinalizationRegistry<Mapping>(release);
const handleRegistry = new FinalizationRegistry<bigint>((h) => {
  kernel32().CloseHandle(h);
});

function release(mapping: Mapping): void {
  const k = kernel32();
  const pointer = Deno.UnsafePointer.create(mapping.address);
  if (k.UnmapViewOfFile(pointer) === 0) return;
  k.VirtualAlloc(
    pointer,
    BigInt(mapping.length),
    MEM_RESERVE | MEM_COMMIT,
    PAGE_READWRITE,
  );
  sharedMemoryStats.released++;
}

function map(section: bigint, length: number): Uint8Array {
  if (length === 0) return new Uint8Array(0);
  const pointer = kernel32().MapViewOfFile(
    section,
    FILE_MAP_ALL_ACCESS,
    0,
    0,
    BigInt(length),
  );
  if (pointer === null) throw winError("MapViewOfFile", lastError());
  const address = BigInt(Deno.UnsafePointer.value(pointer));
  let buffer: ArrayBuffer;
  try {
    buffer = Deno.UnsafePointerView.getArrayBuffer(pointer, length);
  } catch (cause) {
    kernel32().UnmapViewOfFile(pointer);
    throw new IpcError("Io", `cannot view ${length} bytes of shared memory`, {
      cause,
      code: "ENOMEM",
    });
  }
  mappingRegistry.register(buffer, { address, length });
  sharedMemoryStats.mapped++;
  return new Uint8Array(buffer);
}

/** A section mapped into this process. */
export class WindowsSharedMemory extends MappedRegion {
  #section: bigint;

  private constructor(section: bigint, length: number) {
    super(
      length,
      () => map(section, length),
      () => kernel32().CloseHandle(section),
    );
    this.#section = section;
    handleRegistry.register(this, section, this);
  }

  /** A new region of `length` zero bytes. */
  static create(length: number): WindowsSharedMemory {
    if (!Number.isSafeInteger(length) || length < 0 || length > MAX_LENGTH) {
      throw new RangeError(
        `shared memory length must be an integer from 0 to ${MAX_LENGTH}, not ${length}`,
      );
    }
    const size = Math.max(1, length);
    const section = handle(
      kernel32().CreateFileMappingW(
        INVALID_HANDLE_VALUE,
        null,
        PAGE_READWRITE | SEC_COMMIT,
        Math.floor(size / 2 ** 32),
        size % 2 ** 32,
        null,
      ),
    );
    if (section === 0n) throw winError("CreateFileMappingW", lastError());
    return new WindowsSharedMemory(section, length);
  }

  /** Adopts a received section handle of the announced size. */
  static adopt(section: bigint, length: number): WindowsSharedMemory {
    if (!Number.isSafeInteger(length) || length < 0 || length > MAX_LENGTH) {
      kernel32().CloseHandle(section);
      throw new IpcError(
        "Io",
        `malformed message from peer: shared memory of ${length} bytes`,
        { code: "EPROTO" },
      );
    }
    return new WindowsSharedMemory(section, length);
  }

  /** The section handle to duplicate into a message. */
  handleForSend(): bigint {
    this.checkOpen();
    return this.#section;
  }

  protected releaseHandle(): void {
    handleRegistry.unregister(this);
    kernel32().CloseHandle(this.#section);
    this.#section = 0n;
  }
}
