/**
 * `Deno.dlopen` symbol table, constants and struct layouts for kernel32 on
 * 64-bit Windows. Opened lazily, like `ffi/libc.ts`, so that importing the
 * module on another OS costs nothing (and never touches kernel32).
 *
 * Handles are declared `isize`: real handle values are small, and the
 * pseudo-handle `GetCurrentProcess()` and `INVALID_HANDLE_VALUE` are -1.
 * Memory the kernel keeps using after a call returns (OVERLAPPED structs,
 * the data of a pending write) is always passed as a `pointer` to an
 * `ArrayBuffer`'s backing store, which V8 never moves.
 *
 * @module
 */

const symbols = {
  CreateNamedPipeW: {
    parameters: ["buffer", "u32", "u32", "u32", "u32", "u32", "u32", "pointer"],
    result: "isize",
  },
  CreateFileW: {
    parameters: ["buffer", "u32", "u32", "pointer", "u32", "u32", "isize"],
    result: "isize",
  },
  WaitNamedPipeW: { parameters: ["buffer", "u32"], result: "i32" },
  GetNamedPipeClientProcessId: {
    parameters: ["isize", "buffer"],
    result: "i32",
  },
  GetOverlappedResult: {
    parameters: ["isize", "pointer", "buffer", "i32"],
    result: "i32",
  },
  CancelIoEx: { parameters: ["isize", "pointer"], result: "i32" },
  CloseHandle: { parameters: ["isize"], result: "i32" },
  DuplicateHandle: {
    parameters: ["isize", "isize", "isize", "buffer", "u32", "i32", "u32"],
    result: "i32",
  },
  GetCurrentProcess: { parameters: [], result: "isize" },
  GetCurrentProcessId: { parameters: [], result: "u32" },
  OpenProcess: { parameters: ["u32", "i32", "u32"], result: "isize" },
  CreateEventW: {
    parameters: ["pointer", "i32", "i32", "pointer"],
    result: "isize",
  },
  SetEvent: { parameters: ["isize"], result: "i32" },
  ResetEvent: { parameters: ["isize"], result: "i32" },
  WaitForMultipleObjects: {
    parameters: ["u32", "buffer", "i32", "u32"],
    result: "u32",
  },
  /** The same wait, run on Deno's blocking pool: a parked wait. */
  WaitForMultipleObjectsParked: {
    name: "WaitForMultipleObjects",
    parameters: ["u32", "buffer", "i32", "u32"],
    result: "u32",
    nonblocking: true,
  },
  CreateFileMappingW: {
    parameters: ["isize", "pointer", "u32", "u32", "u32", "pointer"],
    result: "isize",
  },
  MapViewOfFile: {
    parameters: ["isize", "u32", "u32", "u32", "usize"],
    result: "pointer",
  },
  UnmapViewOfFile: { parameters: ["pointer"], result: "i32" },
  VirtualAlloc: {
    parameters: ["pointer", "usize", "u32", "u32"],
    result: "pointer",
  },
  VirtualQuery: { parameters: ["pointer", "buffer", "usize"], result: "usize" },
  GetEnvironmentVariableW: {
    parameters: ["buffer", "buffer", "u32"],
    result: "u32",
  },
  SetEnvironmentVariableW: { parameters: ["buffer", "pointer"], result: "i32" },
  GetLastError: { parameters: [], result: "u32" },
} as const satisfies Deno.ForeignLibraryInterface;

let library: Deno.DynamicLibrary<typeof symbols> | undefined;

/** Opens kernel32 once, on first use. */
export function kernel32(): Deno.DynamicLibrary<typeof symbols>["symbols"] {
  library ??= Deno.dlopen("kernel32.dll", symbols);
  return library.symbols;
}

// The pipe calls whose outcome decides what happens to data are made here,
// not through ReadFile/WriteFile/PeekNamedPipe/ConnectNamedPipe: these return
// their NTSTATUS, while the kernel32 wrappers return FALSE and leave the
// outcome in the thread's last error, which must be read by a second FFI call.
// Between the two the runtime runs native code of its own on this thread, and
// under Wine that code was seen to overwrite it (issue 6: a pending WriteFile
// read back as error 1150, ERROR_OLD_WIN_VERSION, which is what a failed
// VerifyVersionInfoW leaves, a call deno.exe makes).
/** NtReadFile and NtWriteFile: (handle, event, apc, apc context,
 * IO_STATUS_BLOCK, buffer, length, byte offset, key) -> NTSTATUS. */
const NT_READ_OR_WRITE = {
  parameters: [
    "isize",
    "isize",
    "pointer",
    "pointer",
    "pointer",
    "pointer",
    "u32",
    "pointer",
    "pointer",
  ],
  result: "u32",
} as const;

const ntdllSymbols = {
  RtlNtStatusToDosError: { parameters: ["u32"], result: "u32" },
  NtReadFile: NT_READ_OR_WRITE,
  NtWriteFile: NT_READ_OR_WRITE,
  NtFsControlFile: {
    parameters: [
      "isize",
      "isize",
      "pointer",
      "pointer",
      "pointer",
      "u32",
      "pointer",
      "u32",
      "pointer",
      "u32",
    ],
    result: "u32",
  },
} as const satisfies Deno.ForeignLibraryInterface;

let ntdllLibrary: Deno.DynamicLibrary<typeof ntdllSymbols> | undefined;

/**
 * Opens ntdll once, on first use: the native calls that return their
 * NTSTATUS instead of leaving it in the thread's last error.
 */
export function ntdll(): Deno.DynamicLibrary<typeof ntdllSymbols>["symbols"] {
  ntdllLibrary ??= Deno.dlopen("ntdll.dll", ntdllSymbols);
  return ntdllLibrary.symbols;
}

/**
 * The Win32 error for an NTSTATUS, e.g. the `Internal` field of a finished
 * OVERLAPPED: a pure mapping, unlike GetLastError, which anything the
 * runtime does on this thread between two FFI calls may overwrite.
 */
export function ntStatusToError(status: number): number {
  if (status === 0) return 0;
  return ntdll().RtlNtStatusToDosError(status);
}

/**
 * The calling thread's last error, read right after a failed call. Only for
 * reporting a failure: the runtime may overwrite it between the failed call
 * and this one (see {@linkcode ntdll}), so nothing that decides the fate of
 * data may branch on it.
 */
export function lastError(): number {
  return kernel32().GetLastError();
}

/**
 * A handle result as a bigint (-1n for INVALID_HANDLE_VALUE): `isize`
 * parameters take bigints, so handles stay bigints everywhere.
 */
export function handle(value: number | bigint): bigint {
  return BigInt(value);
}

/** A NUL-terminated UTF-16LE string, as the `W` functions take. */
export function wideString(text: string): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(new ArrayBuffer(2 * text.length + 2));
  const view = new DataView(out.buffer);
  for (let i = 0; i < text.length; i++) {
    view.setUint16(2 * i, text.charCodeAt(i), true);
  }
  return out;
}

/** Off-heap zeroed memory whose address never changes. */
export function pinned(length: number): Uint8Array<ArrayBuffer> {
  return new Uint8Array(new ArrayBuffer(length));
}

/** The address of pinned memory, for `pointer` parameters. */
export function pointerTo(bytes: Uint8Array): Deno.PointerValue {
  return Deno.UnsafePointer.of(bytes);
}

/** Reads and removes an environment variable of this process. */
export function takeEnv(name: string): string | undefined {
  const k = kernel32();
  const key = wideString(name);
  let buffer = new Uint8Array(512);
  let length = k.GetEnvironmentVariableW(key, buffer, buffer.length / 2);
  if (length === 0) return undefined;
  if (length > buffer.length / 2) {
    buffer = new Uint8Array(2 * length);
    length = k.GetEnvironmentVariableW(key, buffer, length);
    if (length === 0) return undefined;
  }
  const text = new TextDecoder("utf-16le").decode(
    buffer.subarray(0, 2 * length),
  );
  k.SetEnvironmentVariableW(key, null);
  return text;
}

// OVERLAPPED (x64): Internal, InternalHigh, Offset/OffsetHigh, hEvent.
/** Size and field offsets of `OVERLAPPED`. */
export const OVERLAPPED = {
  size: 32,
  internal: 0,
  internalHigh: 8,
  offset: 16,
  hEvent: 24,
} as const;
/** `OVERLAPPED.Internal` while the call is in flight. */
export const STATUS_PENDING = 0x103;
/** A warning, not an error: a message longer than the buffer (ERROR_MORE_DATA). */
export const STATUS_BUFFER_OVERFLOW = 0x8000_0005;
/** Size of `IO_STATUS_BLOCK`, which is also how an OVERLAPPED begins. */
export const IO_STATUS_BLOCK_SIZE = 16;
/** Size of `FILE_PIPE_PEEK_BUFFER` without data, and its field offsets. */
export const FILE_PIPE_PEEK_BUFFER = {
  size: 16,
  readDataAvailable: 4,
  messageLength: 12,
} as const;
/** `PeekNamedPipe`'s control code. */
export const FSCTL_PIPE_PEEK = 0x0011_400c;
/** `ConnectNamedPipe`'s control code. */
export const FSCTL_PIPE_LISTEN = 0x0011_0008;
/** Size of `MEMORY_BASIC_INFORMATION` and the offset of `RegionSize`. */
export const MEMORY_BASIC_INFORMATION = { size: 48, regionSize: 24 } as const;

export const INVALID_HANDLE_VALUE = -1n;
export const INFINITE = 0xffff_ffff;
export const WAIT_OBJECT_0 = 0;
export const WAIT_TIMEOUT = 258;
export const WAIT_FAILED = 0xffff_ffff;
export const MAXIMUM_WAIT_OBJECTS = 64;

export const GENERIC_READ = 0x8000_0000;
export const GENERIC_WRITE = 0x4000_0000;
export const FILE_READ_ATTRIBUTES = 0x80;
export const OPEN_EXISTING = 3;
export const FILE_FLAG_OVERLAPPED = 0x4000_0000;
export const FILE_FLAG_FIRST_PIPE_INSTANCE = 0x0008_0000;
export const PIPE_ACCESS_INBOUND = 0x1;
export const PIPE_TYPE_MESSAGE = 0x4;
export const PIPE_READMODE_MESSAGE = 0x2;
export const PIPE_WAIT = 0;
export const PIPE_REJECT_REMOTE_CLIENTS = 0x8;
export const PIPE_UNLIMITED_INSTANCES = 255;
/** `SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION`: a server may not impersonate us. */
export const SECURITY_IDENTIFICATION_ONLY = 0x0010_0000 | (1 << 16);

export const DUPLICATE_CLOSE_SOURCE = 0x1;
export const DUPLICATE_SAME_ACCESS = 0x2;
export const PROCESS_DUP_HANDLE = 0x40;

export const PAGE_READWRITE = 0x04;
export const SEC_COMMIT = 0x0800_0000;
export const FILE_MAP_ALL_ACCESS = 0x000f_001f;
export const MEM_COMMIT = 0x1000;
export const MEM_RESERVE = 0x2000;

// Win32 error codes.
export const ERROR_FILE_NOT_FOUND = 2;
export const ERROR_ACCESS_DENIED = 5;
export const ERROR_INVALID_HANDLE = 6;
export const ERROR_INVALID_PARAMETER = 87;
export const ERROR_BROKEN_PIPE = 109;
export const ERROR_PIPE_BUSY = 231;
export const ERROR_NO_DATA = 232;
export const ERROR_PIPE_NOT_CONNECTED = 233;
export const ERROR_MORE_DATA = 234;
export const ERROR_PIPE_CONNECTED = 535;
export const ERROR_PIPE_LISTENING = 536;
export const ERROR_OPERATION_ABORTED = 995;
export const ERROR_IO_INCOMPLETE = 996;
export const ERROR_IO_PENDING = 997;
