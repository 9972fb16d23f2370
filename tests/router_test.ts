import {
  deepStrictEqual as assertEquals,
  equal,
  ok,
  throws,
} from "node:assert/strict";
import { channel, IpcError, type IpcSender, RouterProxy } from "../mod.ts";
import { runFixture, settled } from "./helpers.ts";

/** Lets the router's loop see the "closed" results the poller delivered. */
async function routesEnded(router: RouterProxy): Promise<void> {
  await settled();
  while (router.size > 0) await new Promise((r) => setTimeout(r, 0));
}

Deno.test("routes deliver in message order per receiver, from one waiter", async () => {
  const router = new RouterProxy();
  const senders: IpcSender<number>[] = [];
  const seen = new Map<number, number[]>();
  const done = Promise.withResolvers<void>();
  let total = 0;
  for (let r = 0; r < 10; r++) {
    const [tx, rx] = channel<number>();
    senders.push(tx);
    seen.set(r, []);
    router.addTypedRoute(rx, (n) => {
      seen.get(r)!.push(n);
      if (++total === 10 * 50) done.resolve();
    });
  }
  equal(router.size, 10);
  for (let i = 0; i < 50; i++) {
    for (const tx of senders) tx.send(i);
  }
  await done.promise;
  for (const list of seen.values()) {
    assertEquals(list, Array.from({ length: 50 }, (_, i) => i));
  }
  for (const tx of senders) tx.close();
  // Every route ends when its channel disconnects; then nothing waits.
  await routesEnded(router);
  router.shutdown();
});

Deno.test("a callback that throws does not stop the router", async () => {
  const errors: unknown[] = [];
  const router = new RouterProxy({ onError: (e) => errors.push(e) });
  const [tx, rx] = channel<number>();
  const got: number[] = [];
  const done = Promise.withResolvers<void>();
  router.addTypedRoute(rx, (n) => {
    got.push(n);
    if (n % 2 === 0) throw new Error(`even ${n}`);
    if (n === 5) done.resolve();
  });
  for (let i = 1; i <= 5; i++) tx.send(i);
  await done.promise;
  assertEquals(got, [1, 2, 3, 4, 5]);
  equal(errors.length, 2);
  tx.close();
  await settled();
  router.shutdown();
});

Deno.test("routes can be added after the last one ended", async () => {
  const router = new RouterProxy();
  for (let round = 0; round < 2; round++) {
    const [tx, rx] = channel<string>();
    const got = Promise.withResolvers<string>();
    router.addTypedRoute(rx, got.resolve);
    tx.send(`round ${round}`);
    equal(await got.promise, `round ${round}`);
    tx.close();
    await routesEnded(router);
  }
  router.shutdown();
});

Deno.test("shutdown closes routed receivers and refuses new routes", async () => {
  const router = new RouterProxy();
  const [tx, rx] = channel<number>();
  router.addTypedRoute(rx, () => {});
  throws(
    () => rx.tryRecv(),
    (e) => e instanceof IpcError && e.kind === "Closed",
  );
  router.shutdown();
  router.shutdown();
  throws(
    () => tx.send(1),
    (e) => e instanceof IpcError && e.kind === "Disconnected",
  );
  throws(
    () => router.addTypedRoute(channel<number>()[1], () => {}),
    (e) => e instanceof IpcError && e.kind === "Closed",
  );
  tx.close();
  await settled();
});

Deno.test("ROUTER in a child: callbacks run, errors are reported, the process exits", async () => {
  const child = runFixture("router_child.ts");
  const output = await child.output();
  const stderr = new TextDecoder().decode(output.stderr);
  equal(output.code, 0, stderr);
  assertEquals(new TextDecoder().decode(output.stdout).trim().split("\n"), [
    "1",
    "2",
    "3",
  ]);
  ok(stderr.includes("thrown on purpose"));
});
