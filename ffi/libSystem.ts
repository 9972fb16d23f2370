/**
 * `Deno.dlopen` symbol table and constants for macOS's libSystem (Mach
 * ports, bootstrap, VM, kqueue), opened lazily on first use. The macOS
 * backend (platform/macos*.ts) is the only user. Mach names and
 * `kern_return_t` are 32-bit; addresses and VM sizes are 64-bit.
 *
 * Declared types follow the prototypes in mach/mach_interface.h (MIG
 * generated mach_port.h, mach_vm.h, vm_map.h), mach/message.h,
 * servers/bootstrap.h and sys/event.h.
 *
 * @module
 */

const symbols = {
  /** mach/message.h: `mach_msg(msg, option, send_size, rcv_size, rcv_name, timeout, notify)`. */
  mach_msg: {
    parameters: ["buffer", "i32", "u32", "u32", "u32", "u32", "u32"],
    result: "i32",
  },
  /** The same `mach_msg` on Deno's blocking pool (used by `recvSync` only). */
  mach_msg_parked: {
    name: "mach_msg",
    parameters: ["buffer", "i32", "u32", "u32", "u32", "u32", "u32"],
    result: "i32",
    nonblocking: true,
  },
  mach_port_allocate: { parameters: ["u32", "u32", "buffer"], result: "i32" },
  mach_port_insert_right: {
    parameters: ["u32", "u32", "u32", "u32"],
    result: "i32",
  },
  mach_port_extract_right: {
    parameters: ["u32", "u32", "u32", "buffer", "buffer"],
    result: "i32",
  },
  mach_port_deallocate: { parameters: ["u32", "u32"], result: "i32" },
  mach_port_mod_refs: {
    parameters: ["u32", "u32", "u32", "i32"],
    result: "i32",
  },
  mach_port_request_notification: {
    parameters: ["u32", "u32", "i32", "u32", "u32", "u32", "buffer"],
    result: "i32",
  },
  mach_port_set_attributes: {
    parameters: ["u32", "u32", "i32", "buffer", "u32"],
    result: "i32",
  },
  mach_port_insert_member: {
    parameters: ["u32", "u32", "u32"],
    result: "i32",
  },
  mach_port_extract_member: {
    parameters: ["u32", "u32", "u32"],
    result: "i32",
  },
  mach_port_move_member: { parameters: ["u32", "u32", "u32"], result: "i32" },
  task_get_special_port: {
    parameters: ["u32", "i32", "buffer"],
    result: "i32",
  },
  /** servers/bootstrap.h: `bootstrap_register2(bp, service_name, sp, flags)`. */
  bootstrap_register2: {
    parameters: ["u32", "buffer", "u32", "u64"],
    result: "i32",
  },
  bootstrap_look_up: {
    parameters: ["u32", "buffer", "buffer"],
    result: "i32",
  },
  /** `mach_make_memory_entry_64(task, *size, offset, permission, *handle, parent)`. */
  mach_make_memory_entry_64: {
    parameters: ["u32", "buffer", "u64", "i32", "buffer", "u32"],
    result: "i32",
  },
  /** `mach_vm_map(task, *addr, size, mask, flags, object, offset, copy, cur, max, inherit)`. */
  mach_vm_map: {
    parameters: [
      "u32",
      "buffer",
      "u64",
      "u64",
      "i32",
      "u32",
      "u64",
      "i32",
      "i32",
      "i32",
      "u32",
    ],
    result: "i32",
  },
  mach_vm_deallocate: { parameters: ["u32", "u64", "u64"], result: "i32" },
  mach_error_string: { parameters: ["i32"], result: "pointer" },
  mmap: {
    parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"],
    result: "pointer",
  },
  kqueue: { parameters: [], result: "i32" },
  /** sys/event.h: `kevent64(kq, changes, n, events, n, flags, timeout)`. */
  kevent64: {
    parameters: ["i32", "buffer", "i32", "buffer", "i32", "u32", "pointer"],
    result: "i32",
  },
  /** The same `kevent64` on Deno's blocking pool: the one parked wait. */
  kevent64_parked: {
    name: "kevent64",
    parameters: ["i32", "buffer", "i32", "buffer", "i32", "u32", "pointer"],
    result: "i32",
    nonblocking: true,
  },
  close: { parameters: ["i32"], result: "i32" },
  getenv: { parameters: ["buffer"], result: "pointer" },
  unsetenv: { parameters: ["buffer"], result: "i32" },
  getuid: { parameters: [], result: "u32" },
  getpid: { parameters: [], result: "i32" },
  /** mach/mach_init.h: the task's own port name (`mach_task_self()` reads it). */
  mach_task_self_: { type: "u32" },
} as const satisfies Deno.ForeignLibraryInterface;

let library: Deno.DynamicLibrary<typeof symbols> | undefined;

/** Opens libSystem once, on first use. */
export function libSystem(): Deno.DynamicLibrary<typeof symbols>["symbols"] {
  library ??= Deno.dlopen("/usr/lib/libSystem.B.dylib", symbols);
  return library.symbols;
}

let task = 0;

/** `mach_task_self()`: the name of our task port. */
export function taskSelf(): number {
  if (task === 0) task = libSystem().mach_task_self_ as number;
  return task;
}

/** `mach_error_string(kr)`. */
export function machErrorString(kr: number): string {
  const text = libSystem().mach_error_string(kr);
  return text === null
    ? `kern_return_t 0x${(kr >>> 0).toString(16)}`
    : Deno.UnsafePointerView.getCString(text);
}

/** A NUL-terminated copy of `text` for `buffer` parameters. */
export function cString(text: string): Uint8Array<ArrayBuffer> {
  const bytes = new TextEncoder().encode(text);
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return out;
}

/** Reads and removes an environment variable, without Deno's env permission. */
export function takeEnv(name: string): string | undefined {
  const lib = libSystem();
  const value = lib.getenv(cString(name));
  if (value === null) return undefined;
  const text = Deno.UnsafePointerView.getCString(value);
  lib.unsetenv(cString(name));
  return text;
}

// mach/kern_return.h
export const KERN_SUCCESS = 0;
export const KERN_INVALID_ADDRESS = 1;
export const KERN_NO_SPACE = 3;
export const KERN_INVALID_ARGUMENT = 4;
export const KERN_RESOURCE_SHORTAGE = 6;
export const KERN_INVALID_NAME = 15;
export const KERN_INVALID_RIGHT = 17;
export const KERN_INVALID_VALUE = 18;

// mach/port.h: mach_port_right_t
export const MACH_PORT_RIGHT_SEND = 0;
export const MACH_PORT_RIGHT_RECEIVE = 1;
export const MACH_PORT_RIGHT_SEND_ONCE = 2;
export const MACH_PORT_RIGHT_PORT_SET = 3;
export const MACH_PORT_RIGHT_DEAD_NAME = 4;
// mach/port.h: mach_port_set_attributes flavors and limits
export const MACH_PORT_LIMITS_INFO = 1;
export const MACH_PORT_LIMITS_INFO_COUNT = 1;
export const MACH_PORT_QLIMIT_LARGE = 1024;

// mach/task_special_ports.h
export const TASK_BOOTSTRAP_PORT = 4;

// servers/bootstrap_defs.h
export const BOOTSTRAP_SUCCESS = 0;
export const BOOTSTRAP_NOT_PRIVILEGED = 1100;
export const BOOTSTRAP_NAME_IN_USE = 1101;
export const BOOTSTRAP_UNKNOWN_SERVICE = 1102;
/** servers/bootstrap.h: `name_t` is `char[128]`. */
export const BOOTSTRAP_NAME_MAX = 128;

// mach/vm_prot.h, mach/memory_object_types.h, mach/vm_statistics.h,
// mach/vm_inherit.h
export const VM_PROT_READ = 1;
export const VM_PROT_WRITE = 2;
export const MAP_MEM_NAMED_CREATE = 0x020000;
export const VM_FLAGS_ANYWHERE = 0x1;
export const VM_INHERIT_NONE = 2;

// sys/mman.h (macOS values)
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_PRIVATE = 0x2;
export const MAP_FIXED = 0x10;
export const MAP_NORESERVE = 0x40;
export const MAP_ANON = 0x1000;

// sys/event.h
export const EVFILT_MACHPORT = -8;
export const EVFILT_USER = -10;
export const EV_ADD = 0x1;
export const EV_DELETE = 0x2;
export const EV_ENABLE = 0x4;
export const EV_CLEAR = 0x20;
export const EV_ERROR = 0x4000;
export const NOTE_TRIGGER = 0x0100_0000;
export const KEVENT_FLAG_IMMEDIATE = 0x1;
/**
 * sys/event.h `struct kevent64_s`: ident (u64) at 0, filter (i16) at 8,
 * flags (u16) at 10, fflags (u32) at 12, data (i64) at 16, udata (u64) at
 * 24, ext[2] (u64) at 32; 48 bytes.
 */
export const KEVENT64 = {
  size: 48,
  ident: 0,
  filter: 8,
  flags: 10,
  fflags: 12,
  data: 16,
  udata: 24,
} as const;
