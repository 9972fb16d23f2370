/**
 * The macOS backend end to end, in one process. Runs only on macOS (it is
 * ignored elsewhere); each test ends by checking that the backend's rights
 * ledger holds nothing beyond the process-lifetime ports.
 */
import {
  deepStrictEqual as assertEquals,
  equal,
  ok,
  rejects,
  throws,
} from "node:assert/strict";
import { IpcError } from "../platform/types.ts";
import { machRightsOutstanding, macos, settled } from "../platform/macos.ts";

const ignore = Deno.build.os !== "darwin";

function kind(k: string) {
  return (e: unknown) => e instanceof IpcError && e.kind === k;
}

async function assertNoRights(): Promise<void> {
  await settled();
  const left = machRightsOutstanding();
  assertEquals([...left.names], [], "Mach rights left over");
  assertEquals([...left.regions], [], "out-of-line regions left over");
}

const bytes = (...values: number[]) => new Uint8Array(values);

Deno.test({
  name: "macOS: send, receive, disconnect both ways",
  ignore,
  async fn() {
    const [tx, rx] = macos.channel();
    tx.send(bytes(1, 2, 3), []);
    assertEquals([...rx.tryRecv()!.data], [1, 2, 3]);
    equal(rx.tryRecv(), undefined);
    const pending = rx.recv();
    tx.send(bytes(4), []);
    assertEquals([...(await pending).data], [4]);
    tx.close();
    throws(() => rx.tryRecv(), kind("Disconnected"));
    rx.close();
    const [tx2, rx2] = macos.channel();
    rx2.close();
    throws(() => tx2.send(bytes(1), []), kind("Disconnected"));
    tx2.close();
    await assertNoRights();
  },
});

Deno.test({
  name: "macOS: endpoints and shared memory inside messages",
  ignore,
  async fn() {
    const [tx, rx] = macos.channel();
    const [innerTx, innerRx] = macos.channel();
    const shm = macos.sharedMemory(100);
    shm.bytes[0] = 7;
    tx.send(bytes(9), [innerTx, innerRx, shm]);
    equal(innerRx.closedReason, "sent away inside a message");
    const message = rx.tryRecv()!;
    const sender = message.handles[0].intoSender();
    const receiver = message.handles[1].intoReceiver();
    const region = message.handles[2].intoSharedMemory();
    equal(region.length, 100);
    equal(region.bytes[0], 7);
    region.bytes[1] = 8; // live shared memory, not a snapshot
    equal(shm.bytes[1], 8);
    innerTx.send(bytes(5), []);
    sender.send(bytes(6), []);
    assertEquals([...receiver.tryRecv()!.data], [5]);
    assertEquals([...(await receiver.recv()).data], [6]);
    for (const end of [tx, rx, innerTx, sender, receiver, shm, region]) {
      end.close();
    }
    await assertNoRights();
  },
});

Deno.test({
  name: "macOS: large bodies go out of line; full queues wait in user space",
  ignore,
  async fn() {
    const [tx, rx] = macos.channel();
    const big = new Uint8Array(3 << 20).map((_, i) => i % 251);
    tx.send(big, []);
    const got = rx.tryRecv()!.data;
    equal(got.length, big.length);
    equal(got[12345], 12345 % 251);
    for (let i = 0; i < 3000; i++) tx.send(bytes(i & 255), []);
    ok(tx.bufferedAmount > 0, "past the queue limit, sends are queued");
    for (let i = 0; i < 3000; i++) {
      equal((await rx.recv()).data[0], i & 255);
    }
    equal(tx.bufferedAmount, 0);
    tx.close();
    rx.close();
    await assertNoRights();
  },
});

Deno.test({
  name: "macOS: receiver sets report messages and closed members",
  ignore,
  async fn() {
    const set = macos.receiverSet();
    const [a, ra] = macos.channel();
    const [b, rb] = macos.channel();
    const ida = set.add(ra);
    const idb = set.add(rb);
    a.send(bytes(1), []);
    b.close();
    const results = await set.select();
    ok(results.some((r) => r.type === "message" && r.id === ida));
    ok(results.some((r) => r.type === "closed" && r.id === idb));
    equal(set.size, 1);
    set.remove(ida);
    a.close();
    set.close();
    await assertNoRights();
  },
});

Deno.test({
  name: "macOS: a server gives each client its own channel and its pid",
  ignore,
  async fn() {
    const server = macos.listen();
    const one = macos.connect(server.name);
    const two = macos.connect(server.name);
    one.send(bytes(1), []);
    two.send(bytes(2), []);
    const first = await server.accept();
    const second = await server.accept();
    equal(first.peer.pid, Deno.pid);
    equal(first.peer.uid, macos.processUid());
    assertEquals([...first.receiver.tryRecv()!.data], [1]);
    assertEquals([...second.receiver.tryRecv()!.data], [2]);
    one.close();
    throws(() => first.receiver.tryRecv(), kind("Disconnected"));
    for (const end of [two, first.receiver, second.receiver]) end.close();
    server.close();
    await rejects(server.accept(), kind("Closed"));
    throws(() => macos.connect(server.name), kind("Io"));
    await assertNoRights();
  },
});
