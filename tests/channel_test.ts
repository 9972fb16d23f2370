import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { channel } from "../mod.ts";
import { settled } from "./helpers.ts";

Deno.test("a typed value round-trips in one process", async () => {
  const [tx, rx] = channel<{ n: number }>();
  tx.send({ n: 1 });
  assertEquals(await rx.recv(), { n: 1 });
  tx.close();
  rx.close();
  await settled();
});
