/**
 * Picks the backend for the running OS.
 *
 * @module
 */

import { linux } from "./linux.ts";
import { IpcError, type OsPlatform } from "./types.ts";

let chosen: OsPlatform | undefined;

/** The backend for `Deno.build.os`; throws kind "Io" on an unsupported OS. */
export function platform(): OsPlatform {
  if (chosen !== undefined) return chosen;
  switch (Deno.build.os) {
    case "linux":
      chosen = linux;
      return chosen;
    default:
      throw new IpcError(
        "Io",
        `ipc-channel has no backend for ${Deno.build.os} yet (supported: linux)`,
        { code: "ENOSYS" },
      );
  }
}

export { settled } from "./linux.ts";
