/**
 * What every backend's shared memory region has in common: a live view of
 * the mapping until `close()` or `take()`, after which the handle is freed
 * but never the mapping (views handed out may still be reachable; each
 * backend releases the mapping once its buffer is collected).
 *
 * @module
 */

import { IpcError, type OsSharedMemory } from "./types.ts";

/** A mapped region; subclasses own the OS handle. */
export abstract class MappedRegion implements OsSharedMemory {
  #bytes: Uint8Array | undefined;
  readonly #length: number;
  #closedReason: string | undefined;

  /**
   * @param length the region's size in bytes
   * @param map maps the region and returns the view
   * @param discard frees the handle if mapping fails (the error is rethrown)
   */
  protected constructor(
    length: number,
    map: () => Uint8Array,
    discard: () => void,
  ) {
    this.#length = length;
    try {
      this.#bytes = map();
    } catch (error) {
      discard();
      throw error;
    }
  }

  get closedReason(): string | undefined {
    return this.#closedReason;
  }

  get length(): number {
    return this.#length;
  }

  get bytes(): Uint8Array {
    this.checkOpen();
    return this.#bytes!;
  }

  /** Throws kind "Closed" once the region was closed or taken. */
  protected checkOpen(): void {
    if (this.#closedReason !== undefined) {
      throw new IpcError(
        "Closed",
        `this shared memory was ${this.#closedReason}`,
      );
    }
  }

  take(): Uint8Array {
    const copy = this.bytes.slice();
    this.#retire("taken");
    return copy;
  }

  close(): void {
    if (this.#closedReason === undefined) this.#retire("closed");
  }

  /** Frees the OS handle (never the mapping; see the module doc). */
  protected abstract releaseHandle(): void;

  #retire(reason: string): void {
    this.#closedReason = reason;
    this.releaseHandle();
    this.#bytes = undefined;
  }
}
