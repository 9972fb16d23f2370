/**
 * Picks the backend for the running OS. Importing a backend costs nothing:
 * each opens its system library on first use.
 *
 * @module
 */

import { linux, settled as linuxSettled } from "./linux.ts";
import { macos, settled as macosSettled } from "./macos.ts";
import { settled as windowsSettled, windows } from "./windows.ts";
import { IpcError, type OsPlatform } from "./types.ts";

/** Operating systems with a backend, as `Deno.build.os` names them. */
export const SUPPORTED_OS: readonly string[] = ["linux", "windows", "darwin"];

/**
 * The backend for an OS name (`Deno.build.os`), or undefined if there is
 * none. Pure: it only maps the string, so any OS can check the choice.
 */
export function selectBackend(os: string): OsPlatform | undefined {
  switch (os) {
    case "linux":
      return linux;
    case "windows":
      return windows;
    case "darwin":
      return macos;
    default:
      return undefined;
  }
}

let chosen: OsPlatform | undefined;

/** The backend for `Deno.build.os`; throws kind "Io" on an unsupported OS. */
export function platform(): OsPlatform {
  if (chosen !== undefined) return chosen;
  chosen = selectBackend(Deno.build.os);
  if (chosen === undefined) {
    throw new IpcError(
      "Io",
      `ipc-channel has no backend for ${Deno.build.os} yet (supported: ${
        SUPPORTED_OS.join(", ")
      })`,
      { code: "ENOSYS" },
    );
  }
  return chosen;
}

/** Resolves once the running backend's shared waiter is idle (for tests). */
export function settled(): Promise<void> {
  switch (Deno.build.os) {
    case "windows":
      return windowsSettled();
    case "darwin":
      return macosSettled();
    default:
      return linuxSettled();
  }
}
