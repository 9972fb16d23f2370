/**
 * The other process for bench/shm_bench.ts. Modes (argument 2):
 * - `map`: receive regions, reply `null` after each one is mapped.
 * - `stream N`: send N `null`s round-robin over the senders it is given.
 * - `pingpong`: add 1 to every byte of the region on each turn (in place), or
 *   of a fresh copy when the turn carries a new region.
 */
import {
  channel,
  IpcSender,
  type IpcSender as Sender,
  IpcSharedMemory,
} from "../mod.ts";

type Up = { down: Sender<unknown> } | null | IpcSharedMemory | "turn";

const [name, mode, countText] = Deno.args;
const up = IpcSender.connect<Up>(name);
const [tx, rx] = channel<unknown>();
up.send({ down: tx });

if (mode === "map") {
  for (;;) {
    const shm = await rx.recv() as IpcSharedMemory | "stop" | null;
    if (shm === "stop") break;
    if (shm === null) {
      up.send(null);
      continue;
    }
    shm.bytes; // mapped on receipt; this is the view
    shm.close();
    up.send(null);
  }
} else if (mode === "stream") {
  const senders = await rx.recv() as Sender<null>[];
  const count = Number(countText);
  for (let i = 0; i < count; i++) {
    senders[i % senders.length].send(null);
    if (i % 256 === 255) await senders[i % senders.length].drained(1 << 20);
  }
  for (const s of senders) await s.drained();
  for (const s of senders) s.close();
} else if (mode === "pingpong") {
  let shm: IpcSharedMemory | undefined;
  for (;;) {
    const turn = await rx.recv() as IpcSharedMemory | "turn" | "stop";
    if (turn === "stop") break;
    if (turn === "turn") {
      const bytes = shm!.bytes;
      for (let i = 0; i < bytes.length; i++) bytes[i]++;
      up.send("turn");
    } else {
      // The copying variant: take a copy, add 1, send a new region back.
      const copy = turn.take();
      for (let i = 0; i < copy.length; i++) copy[i]++;
      if (shm === undefined) {
        shm = IpcSharedMemory.fromBytes(copy);
        up.send(shm);
      } else {
        using fresh = IpcSharedMemory.fromBytes(copy);
        up.send(fresh);
      }
    }
  }
  shm?.close();
}
await up.drained();
up.close();
tx.close();
rx.close();
