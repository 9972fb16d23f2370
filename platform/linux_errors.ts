/**
 * Turns a failed libc call into an {@linkcode IpcError}.
 *
 * @module
 */

import {
  ECONNREFUSED,
  ECONNRESET,
  EMFILE,
  ENFILE,
  ENOENT,
  EPIPE,
  strerror,
} from "../ffi/libc.ts";
import { IpcError } from "./types.ts";

const NAMES: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  4: "EINTR",
  9: "EBADF",
  11: "EAGAIN",
  12: "ENOMEM",
  13: "EACCES",
  17: "EEXIST",
  22: "EINVAL",
  23: "ENFILE",
  24: "EMFILE",
  28: "ENOSPC",
  32: "EPIPE",
  36: "ENAMETOOLONG",
  88: "ENOTSOCK",
  90: "EMSGSIZE",
  104: "ECONNRESET",
  105: "ENOBUFS",
  107: "ENOTCONN",
  111: "ECONNREFUSED",
};

/** The symbolic name of an errno value, e.g. `"EMFILE"`. */
export function errnoName(code: number): string {
  return NAMES[code] ?? `E${code}`;
}

/** An "Io" error for `call` failing with `code`, with advice where it helps. */
export function osError(call: string, code: number): IpcError {
  let advice = "";
  if (code === EMFILE || code === ENFILE) {
    advice =
      " (the process is out of file descriptors: close endpoints you no longer use, or raise `ulimit -n`)";
  } else if (code === ENOENT || code === ECONNREFUSED) {
    advice = " (no server is listening at that name)";
  }
  return new IpcError(
    "Io",
    `${call} failed: ${strerror(code)} [${errnoName(code)}]${advice}`,
    { code: errnoName(code) },
  );
}

/** True for the errors that mean the peer is gone. */
export function isDisconnect(code: number): boolean {
  return code === EPIPE || code === ECONNRESET;
}
