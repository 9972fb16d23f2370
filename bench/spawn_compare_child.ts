/**
 * The child of `spawn_compare.ts` for our `spawn` channels: echoes a first
 * ping, then follows {@linkcode Command}s.
 *
 * @module
 */

import { connectToParent, IpcError } from "../mod.ts";
import type { Down, Up } from "./spawn_compare_protocol.ts";

const { sender, receiver } = await connectToParent<Up, Down>();

async function next(): Promise<Down | undefined> {
  try {
    return await receiver.recv();
  } catch (error) {
    if (error instanceof IpcError && error.kind === "Disconnected") {
      return undefined;
    }
    throw error;
  }
}

loop: for (;;) {
  const message = await next();
  if (message === undefined) break;
  if ("i" in message) {
    sender.send(message);
    continue;
  }
  const { n } = message;
  switch (message.op) {
    case "echoAsync":
      for (let k = 0; k < n; k++) sender.send(await receiver.recv() as Up);
      break;
    case "echoSync":
      for (let k = 0; k < n; k++) sender.send(receiver.recvSync() as Up);
      break;
    case "sinkAsync":
      for (let k = 0; k < n; k++) await receiver.recv();
      sender.send({ done: n });
      break;
    case "sinkSync":
      for (let k = 0; k < n; k++) receiver.recvSync();
      sender.send({ done: n });
      break;
    case "exit":
      break loop;
  }
}
sender.close();
receiver.close();
