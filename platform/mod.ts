/**
 * Picks the backend for the running OS.
 *
 * @module
 */

import { linux, settled as linuxSettled } from "./linux.ts";
import { settled as windowsSettled, windows } from "./windows.ts";
import { IpcError, type OsPlatform } from "./types.ts";

let chosen: OsPlatform | undefined;

/** The backend for `Deno.build.os`; throws kind "Io" on an unsupported OS. */
export function platform(): OsPlatform {
  if (chosen !== undefined) return chosen;
  switch (Deno.build.os) {
    case "linux":
      chosen = linux;
      return chosen;
    case "windows":
      chosen = windows;
      return chosen;
    default:
      throw new IpcError(
        "Io",
        `ipc-channel has no backend for ${Deno.build.os} yet (supported: linux, windows)`,
        { code: "ENOSYS" },
      );
  }
}

/** Resolves once the running backend has no wait parked (for tests). */
export function settled(): Promise<void> {
  return Deno.build.os === "windows" ? windowsSettled() : linuxSettled();
}
