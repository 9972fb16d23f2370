/**
 * Turns a failed Win32 call into an {@linkcode IpcError}, with a POSIX-like
 * `code` where one fits, so that callers can branch the same way on every OS.
 *
 * @module
 */

import {
  ERROR_BROKEN_PIPE,
  ERROR_NO_DATA,
  ERROR_PIPE_NOT_CONNECTED,
} from "../ffi/kernel32.ts";
import { IpcError } from "./types.ts";

const NAMES: Record<number, string> = {
  2: "ENOENT",
  3: "ENOENT",
  4: "EMFILE",
  5: "EACCES",
  6: "EBADF",
  8: "ENOMEM",
  14: "ENOMEM",
  87: "EINVAL",
  109: "EPIPE",
  183: "EEXIST",
  231: "EBUSY",
  232: "EPIPE",
  233: "ENOTCONN",
  1450: "ENOBUFS",
};

/** True for the errors that mean the other end of a pipe is gone. */
export function isDisconnect(code: number): boolean {
  return code === ERROR_BROKEN_PIPE || code === ERROR_NO_DATA ||
    code === ERROR_PIPE_NOT_CONNECTED;
}

/** An "Io" error for a failed call; `code` is e.g. "ENOENT" or "WIN1234". */
export function winError(call: string, error: number): IpcError {
  const name = NAMES[error] ?? `WIN${error}`;
  return new IpcError(
    "Io",
    `${call} failed: Windows error ${error} (${name})`,
    {
      code: name,
    },
  );
}
