/**
 * The child of `spawn_compare.ts` for JSON lines over `Deno.Command` stdio:
 * one JSON value per line on stdin and stdout, same protocol as
 * `spawn_compare_child.ts`.
 *
 * @module
 */

import type { Down, Up } from "./spawn_compare_protocol.ts";
import { lines } from "./spawn_compare_lines.ts";

const input = lines(Deno.stdin.readable);
const writer = Deno.stdout.writable.getWriter();
const encoder = new TextEncoder();

function send(message: Up): Promise<void> {
  return writer.write(encoder.encode(JSON.stringify(message) + "\n"));
}

async function next(): Promise<Down | undefined> {
  const { value, done } = await input.next();
  return done ? undefined : JSON.parse(value) as Down;
}

loop: for (;;) {
  const message = await next();
  if (message === undefined) break;
  if ("i" in message) {
    await send(message);
    continue;
  }
  const { n } = message;
  switch (message.op) {
    case "echoAsync":
    case "echoSync":
      for (let k = 0; k < n; k++) await send(await next() as Up);
      break;
    case "sinkAsync":
    case "sinkSync":
      for (let k = 0; k < n; k++) await next();
      await send({ done: n });
      break;
    case "exit":
      break loop;
  }
}
await writer.close().catch(() => {});
