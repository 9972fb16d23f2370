/**
 * The child process of `cross_process.ts`. Usage: `echo_child.ts <name>`.
 *
 * Connects to the parent's one-shot server at `<name>` and, in its first
 * message, hands the parent the reverse direction: a sender for commands, a
 * bytes sender for pings, and the receiver of the bytes channel it answers
 * and streams on. Then it obeys commands until told to exit (or the parent
 * goes away).
 *
 * @module
 */

import {
  bytesChannel,
  channel,
  IpcError,
  type IpcReceiver,
  IpcSender,
} from "../mod.ts";
import type { Command, Small, Up } from "./echo_protocol.ts";

const name = Deno.args[0];
if (!name) throw new Error("usage: echo_child.ts <server name>");

const up = IpcSender.connect<Up>(name);
const [commandsTx, commandsRx]: [IpcSender<Command>, IpcReceiver<Command>] =
  channel();
const [pingsTx, pingsRx] = bytesChannel();
const [streamTx, streamRx] = bytesChannel();
up.send({
  kind: "hello",
  commands: commandsTx,
  pings: pingsTx,
  stream: streamRx,
});
// The parent holds its own copies of the senders; ours would keep the
// channels open after it is gone.
commandsTx.close();
pingsTx.close();

/** What a producer queues in this process before it waits for the reader. */
const HIGH_WATER = 4 * 1024 * 1024;

async function produce(
  count: number,
  send: (i: number) => void,
  buffered: () => number,
  drained: (threshold: number) => Promise<void>,
): Promise<void> {
  for (let i = 0; i < count; i++) {
    send(i);
    if (buffered() > HIGH_WATER) await drained(HIGH_WATER / 2);
  }
  await drained(0);
}

async function obey(command: Command): Promise<boolean> {
  switch (command.op) {
    case "echoSync":
      for (let i = 0; i < command.count; i++) streamTx.send(pingsRx.recvSync());
      return true;
    case "echoAsync":
      for (let i = 0; i < command.count; i++) {
        streamTx.send(await pingsRx.recv());
      }
      return true;
    case "small": {
      const message: Small = {
        kind: "small",
        seq: 0,
        name: "sensor-7",
        ok: true,
        ratio: 0.25,
      };
      await produce(
        command.count,
        (i) => {
          message.seq = i;
          up.send(message);
        },
        () => up.bufferedAmount,
        (t) => up.drained(t),
      );
      return true;
    }
    case "blob": {
      const data = new Uint8Array(command.size).fill(1);
      await produce(
        command.count,
        (i) => up.send({ kind: "blob", seq: i, data }),
        () => up.bufferedAmount,
        (t) => up.drained(t),
      );
      return true;
    }
    case "bytes": {
      const data = new Uint8Array(command.size).fill(2);
      await produce(
        command.count,
        () => streamTx.send(data),
        () => streamTx.bufferedAmount,
        (t) => streamTx.drained(t),
      );
      return true;
    }
    case "exit":
      return false;
  }
}

try {
  while (await obey(commandsRx.recvSync()));
} catch (error) {
  // The parent going away mid-run is an ordinary end, not a failure.
  if (!(error instanceof IpcError && error.kind === "Disconnected")) {
    throw error;
  }
} finally {
  for (const end of [up, commandsRx, pingsRx, streamTx]) end.close();
}
