// A region that arrives again reuses this process's live mapping of it.
import { equal, ok } from "node:assert/strict";
import { channel, IpcSharedMemory } from "../mod.ts";
import { sharedMemoryStats } from "../platform/linux_shm.ts";
import { onLinux, settled } from "./helpers.ts";

Deno.test(
  onLinux(
    "a region received again reuses the live mapping, and stays shared",
    "counts mappings of the Linux memfd backend",
  ),
  async () => {
    const [tx, rx] = channel<IpcSharedMemory>();
    using region = IpcSharedMemory.fromByte(1, 1 << 20);
    const before = sharedMemoryStats.mapped;
    tx.send(region);
    using first = await rx.recv();
    tx.send(region);
    using second = await rx.recv();
    // The sender's own mapping serves both arrivals: no new mmap.
    equal(sharedMemoryStats.mapped, before);
    second.bytes[5] = 42;
    equal(first.bytes[5], 42);
    equal(region.bytes[5], 42);
    ok(first.length === 1 << 20 && second.length === 1 << 20);
    tx.close();
    rx.close();
    await settled();
  },
);
