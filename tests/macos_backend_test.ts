/**
 * The macOS backend's own code (platform/macos.ts), run on any OS over a
 * simulated Mach kernel (tests/fake_mach.ts): each test drives the public
 * endpoint API of one or two backend instances ("processes") and ends by
 * checking that the backend's ledger and the simulated kernel agree, name
 * by name, and that neither holds anything beyond the process-lifetime
 * bootstrap and notification ports (servo/ipc-channel #399, #116, #327 were
 * leaks the crate's tests never saw).
 */
import {
  deepStrictEqual as assertEquals,
  equal,
  ok,
  rejects,
  throws,
} from "node:assert/strict";
import { createMacBackend, type MacBackend } from "../platform/macos.ts";
import { IpcError, type OsSender } from "../platform/types.ts";
import { type FakeTask, FakeWorld } from "./fake_mach.ts";
import { Codec } from "../serde/codec.ts";
import { Buffer } from "node:buffer";

interface Process {
  task: FakeTask;
  backend: MacBackend;
}

function processes(n: number): { world: FakeWorld; procs: Process[] } {
  const world = new FakeWorld();
  const procs = Array.from({ length: n }, () => {
    const task = world.task();
    return { task, backend: createMacBackend(task.host()) };
  });
  return { world, procs };
}

function kind(k: string) {
  return (e: unknown) => e instanceof IpcError && e.kind === k;
}

const bytes = (...values: number[]) => new Uint8Array(values);
/** A wait that never comes fails the test rather than hanging it. */
const soon = { timeoutMs: 5000 };

/**
 * Two processes, A connected to a server in B: A's sender `toB`, B's
 * accepted connection, and the listener. `queueLimit` caps every port's queue.
 */
async function linked(queueLimit?: number) {
  const { world, procs: [a, b] } = processes(2);
  if (queueLimit !== undefined) world.maxQueueLimit = queueLimit;
  const listener = b.backend.platform.listen();
  const toB = a.backend.platform.connect(listener.name);
  const accepted = await listener.accept(soon);
  return { world, a, b, listener, toB, accepted };
}

/** The ledger and the kernel hold the same rights under the same names. */
function assertAgree({ task, backend }: Process): void {
  const ledger = backend.rights.ledger;
  for (const [name, e] of task.entries) {
    const held = ledger.rights(name);
    ok(held !== undefined, `kernel holds 0x${name.toString(16)}, ledger not`);
    assertEquals(
      {
        receive: held.receive,
        portSet: held.portSet,
        sendOnce: held.sendOnce,
        // The ledger learns of a death only when it meets it: count together.
        references: held.send + held.dead,
      },
      {
        receive: e.receive,
        portSet: e.portSet,
        sendOnce: e.sendOnce,
        references: e.send + e.dead,
      },
      `name 0x${name.toString(16)}`,
    );
  }
  for (const name of ledger.outstanding().names.keys()) {
    ok(
      task.entries.has(name),
      `ledger holds 0x${name.toString(16)}, kernel not`,
    );
  }
  assertEquals(
    [...ledger.outstanding().regions.keys()].sort(),
    [...task.regions.keys()].sort(),
  );
}

/** Nothing leaked, nothing freed twice, in the ledger or in the kernel. */
async function assertClean(
  world: FakeWorld,
  ...procs: Process[]
): Promise<void> {
  for (const p of procs) await p.backend.settled();
  for (const p of procs) {
    assertAgree(p);
    const left = p.backend.rights.ledger.outstanding();
    assertEquals([...left.names], [], "the ledger still holds rights");
    assertEquals([...left.regions], [], "the ledger still holds regions");
    assertEquals([...p.task.regions.keys()], [], "regions still mapped");
    for (const [name, e] of p.task.entries) {
      // What may stay: the bootstrap send right and the notification port.
      const pinned = e.port === world.bootstrap
        ? e.send === 1 && !e.receive
        : e.receive && e.send === 0 && e.dead === 0;
      ok(pinned, `the kernel still holds 0x${name.toString(16)}`);
    }
  }
  for (const port of world.ports) {
    for (const message of port.queue) {
      equal(message.items.length, 0, "a queued message still carries rights");
    }
  }
  equal(world.registry.size, 0, "a bootstrap name is still registered");
}

Deno.test("backend over a fake kernel: a channel, then both ends closed (either order)", async () => {
  const { world, procs: [a] } = processes(1);
  const { channel } = a.backend.platform;
  const [tx, rx] = channel();
  equal(a.task.calls.get("mach_port_allocate"), 1);
  tx.send(bytes(1, 2, 3), []);
  assertEquals([...rx.tryRecv()!.data], [1, 2, 3]);
  equal(rx.tryRecv(), undefined);
  assertAgree(a);
  tx.close();
  throws(() => rx.tryRecv(), kind("Disconnected"));
  rx.close();
  const [tx2, rx2] = channel();
  rx2.close();
  // The receiver went first: the sender's name is a dead name.
  throws(() => tx2.send(bytes(1), []), kind("Disconnected"));
  equal(
    a.backend.rights.ledger.rights(
      a.task.nameOf(
        [...a.task.entries.values()].find((e) => e.dead > 0)!.port,
      )!,
    )?.dead,
    1,
  );
  tx2.close();
  await assertClean(world, a);
});

Deno.test("backend over a fake kernel: clones share one name; no-senders only after the last", async () => {
  const { world, procs: [a] } = processes(1);
  const [tx, rx] = a.backend.platform.channel();
  const clones = [tx.clone(), tx.clone()];
  const name = a.task.entries.keys().next().value!;
  equal(a.task.entries.get(name)?.send, 3);
  tx.close();
  clones[0].close();
  equal(rx.tryRecv(), undefined, "one sender is still alive");
  const pending = rx.recv(soon);
  clones[1].close();
  await rejects(pending, kind("Disconnected"));
  // Cloning after the port died adds a dead-name reference (mod_refs falls
  // back from SEND to DEAD_NAME), released like any other.
  const [tx2, rx2] = a.backend.platform.channel();
  rx2.close();
  const late = tx2.clone();
  tx2.close();
  late.close();
  rx.close();
  await assertClean(world, a);
});

Deno.test("backend over a fake kernel: a sender, a receiver and shared memory inside one message", async () => {
  const { world, procs: [a] } = processes(1);
  const { channel, sharedMemory } = a.backend.platform;
  const [tx, rx] = channel();
  const [innerTx, innerRx] = channel();
  const shm = sharedMemory(100);
  shm.bytes[0] = 7;
  tx.send(bytes(9), [innerTx, innerRx, shm]);
  equal(innerRx.closedReason, "sent away inside a message");
  assertAgree(a);
  const message = rx.tryRecv()!;
  assertEquals([...message.data], [9]);
  const sender = message.handles[0].intoSender();
  const receiver = message.handles[1].intoReceiver();
  const region = message.handles[2].intoSharedMemory();
  equal(region.length, 100);
  equal(region.bytes[0], 7);
  region.bytes[1] = 8;
  equal(shm.bytes[1], 8, "one memory entry, mapped twice");
  innerTx.send(bytes(5), []);
  sender.send(bytes(6), []);
  assertEquals([...receiver.tryRecv()!.data], [5]);
  assertEquals([...(await receiver.recv(soon)).data], [6]);
  assertAgree(a);
  for (const end of [tx, rx, innerTx, sender, receiver, shm, region]) {
    end.close();
  }
  await assertClean(world, a);
});

Deno.test("backend over a fake kernel: handles between two processes, through a server", async () => {
  const { world, procs: [server, client] } = processes(2);
  const listener = server.backend.platform.listen();
  const toServer = client.backend.platform.connect(listener.name);
  const accepted = await listener.accept(soon);
  equal(accepted.peer.pid, client.task.pid);
  equal(accepted.peer.uid, client.task.uid);
  const [innerTx, innerRx] = client.backend.platform.channel();
  const shm = client.backend.platform.sharedMemory(1 << 16);
  shm.bytes[3] = 3;
  toServer.send(bytes(1), [innerTx, innerRx, shm]);
  const message = await accepted.receiver.recv(soon);
  const sender = message.handles[0].intoSender();
  const receiver = message.handles[1].intoReceiver();
  const region = message.handles[2].intoSharedMemory();
  equal(region.bytes[3], 3);
  // The server now receives what the client sends on innerTx, and sends on
  // a clone of innerTx of its own.
  innerTx.send(bytes(2), []);
  sender.send(bytes(3), []);
  assertAgree(server);
  assertAgree(client);
  assertEquals([...receiver.tryRecv()!.data], [2]);
  assertEquals([...receiver.tryRecv()!.data], [3]);
  innerTx.close();
  sender.close();
  throws(() => receiver.tryRecv(), kind("Disconnected"));
  for (const end of [receiver, region, shm, toServer, accepted.receiver]) {
    end.close();
  }
  listener.close();
  await rejects(listener.accept(soon), kind("Closed"));
  throws(() => client.backend.platform.connect(listener.name), kind("Io"));
  await assertClean(world, server, client);
});

Deno.test("backend over a fake kernel: a receiver closed with unread messages that carry rights", async () => {
  const { world, a, b, listener, toB, accepted } = await linked();
  const [innerTx, innerRx] = a.backend.platform.channel();
  const shm = a.backend.platform.sharedMemory(10);
  toB.send(bytes(1), [innerTx, innerRx, shm]);
  toB.send(new Uint8Array(200_000), [innerTx]); // out of line, too
  // B never reads: destroying its receive right destroys both messages, the
  // receive right inside (so innerTx's port dies) and the send rights.
  accepted.receiver.close();
  equal(world.events.get("message destroyed"), 2);
  throws(() => toB.send(bytes(2), []), kind("Disconnected"));
  throws(() => innerTx.send(bytes(3), []), kind("Disconnected"));
  for (const end of [innerTx, shm, toB]) end.close();
  listener.close();
  await assertClean(world, a, b);
});

Deno.test("backend over a fake kernel: no-senders ends a pending recv, and a set member", async () => {
  const { world, procs: [a] } = processes(1);
  const { channel, receiverSet } = a.backend.platform;
  const [tx, rx] = channel();
  const pending = rx.recv(soon);
  tx.send(bytes(1), []);
  tx.close();
  assertEquals([...(await pending).data], [1], "messages come before the end");
  await rejects(rx.recv(soon), kind("Disconnected"));
  equal(world.events.get("notify 106"), 1);
  rx.close();
  const set = receiverSet();
  const [s1, r1] = channel();
  const [s2, r2] = channel();
  const [s3, r3] = channel();
  const id1 = set.add(r1);
  const id2 = set.add(r2);
  const id3 = set.add(r3);
  s1.send(bytes(4), [s2]); // a sender inside, as a handle, to close
  s2.close();
  const results = await set.select(soon);
  const got = results.find((r) => r.type === "message" && r.id === id1);
  ok(got?.type === "message");
  got.message.handles[0].close();
  // The last sender of r2 was in that message: only now is it closed.
  const closed = results.find((r) => r.type === "closed") ??
    (await set.select(soon)).find((r) => r.type === "closed");
  equal(closed?.id, id2);
  equal(set.size, 2);
  set.remove(id3);
  s3.close();
  // r1 is still in the set: close destroys it with the set.
  set.close();
  s1.close();
  await assertClean(world, a);
});

Deno.test("backend over a fake kernel: full queues wait in user space and own their rights", async () => {
  const { world, a, b, listener, toB, accepted } = await linked(2);
  const [innerTx, innerRx] = a.backend.platform.channel();
  const sent: OsSender[] = [];
  const big = new Uint8Array(100_000).fill(7);
  for (let i = 0; i < 8; i++) {
    const clone = innerTx.clone();
    // One queued body goes out of line: its pseudo-received copy is a
    // region of ours to release.
    toB.send(i === 2 ? big.map(() => i) : bytes(i), [clone]);
    sent.push(clone);
  }
  ok(toB.bufferedAmount > 0, "past the queue limit, sends are queued");
  ok(world.events.get("pseudo-receive"), "a full queue gave a message back");
  // The caller's handles may go at once: the queue holds its own references.
  for (const clone of sent) clone.close();
  innerTx.close();
  assertAgree(a);
  const senders: OsSender[] = [];
  for (let i = 0; i < 8; i++) {
    const message = await accepted.receiver.recv(soon);
    equal(message.data[0], i);
    senders.push(message.handles[0].intoSender());
  }
  await toB.drained(0, soon);
  equal(toB.bufferedAmount, 0);
  ok(world.events.get("notify 102"), "send-possible notifications flushed");
  equal(innerRx.tryRecv(), undefined);
  for (const s of senders) s.close();
  throws(() => innerRx.tryRecv(), kind("Disconnected"));
  for (const end of [innerRx, toB, accepted.receiver]) end.close();
  listener.close();
  await assertClean(world, a, b);
});

Deno.test("backend over a fake kernel: a queued body is a copy, of a Node Buffer and of the codec's reused output too", async () => {
  const { world, a, b, listener, toB, accepted } = await linked(2);
  const codec = new Codec<never, never>([]);
  // A Buffer's slice() is a view: reusing it after send must not reach the
  // queue. The codec reuses one buffer for every encode in the same way.
  const reused = Buffer.alloc(4);
  for (let i = 0; i < 6; i++) {
    reused.fill(i);
    toB.send(reused, []);
    toB.send(codec.encode(`message ${i}`).bytes, []);
  }
  reused.fill(0xff);
  ok(toB.bufferedAmount > 0, "past the queue limit, sends are queued");
  for (let i = 0; i < 6; i++) {
    const raw = await accepted.receiver.recv(soon);
    assertEquals([...raw.data], [i, i, i, i], `Buffer message ${i}`);
    const typed = await accepted.receiver.recv(soon);
    equal(codec.decode(typed.data, []), `message ${i}`);
  }
  for (const end of [toB, accepted.receiver]) end.close();
  listener.close();
  await assertClean(world, a, b);
});

Deno.test("backend over a fake kernel: large bodies go out of line and the region is released", async () => {
  const { world, a, b, listener, toB, accepted } = await linked();
  const big = new Uint8Array(300_000).map((_, i) => i % 251);
  toB.send(big, []);
  assertAgree(b);
  const got = accepted.receiver.tryRecv()!.data;
  equal(got.length, big.length);
  equal(got[123_456], 123_456 % 251);
  assertEquals([...b.task.regions.keys()], [], "the region went back");
  toB.close();
  accepted.receiver.close();
  listener.close();
  await assertClean(world, a, b);
});

Deno.test("backend over a fake kernel: a server closed with a connection not yet accepted", async () => {
  const { world, procs: [server, client] } = processes(2);
  const listener = server.backend.platform.listen();
  const one = client.backend.platform.connect(listener.name);
  const two = client.backend.platform.connect(listener.name);
  const first = await listener.accept(soon);
  // The second connect message, with its channel's receive right, dies with
  // the listening port.
  listener.close();
  equal(world.events.get("message destroyed"), 1);
  throws(() => two.send(bytes(1), []), kind("Disconnected"));
  one.send(bytes(2), []);
  assertEquals([...first.receiver.tryRecv()!.data], [2]);
  for (const end of [one, two, first.receiver]) end.close();
  await assertClean(world, server, client);
});

Deno.test("backend over a fake kernel: MACH_SEND_TOO_LARGE sends the body out of line instead", async () => {
  const { world, procs: [a] } = processes(1);
  world.maxInline = 4096;
  const [tx, rx] = a.backend.platform.channel();
  const body = new Uint8Array(10_000).map((_, i) => i & 0xff);
  const [innerTx, innerRx] = a.backend.platform.channel();
  tx.send(body, [innerTx]);
  equal(world.events.get("too large"), 1);
  const message = rx.tryRecv()!;
  assertEquals(message.data, body);
  message.handles[0].close();
  // The limit learned: the next large body goes out of line at once.
  tx.send(body, []);
  equal(world.events.get("too large"), 1);
  assertEquals(rx.tryRecv()!.data, body);
  for (const end of [tx, rx, innerTx, innerRx]) end.close();
  await assertClean(world, a);
});

Deno.test("backend over a fake kernel: a peer dies while our queue waits for room", async () => {
  const { world, a, b, listener, toB, accepted } = await linked(2);
  const [innerTx, innerRx] = a.backend.platform.channel();
  for (let i = 0; i < 5; i++) toB.send(bytes(i), [innerTx]);
  ok(toB.bufferedAmount > 0);
  // B goes without reading: the port dies with our send-possible request
  // armed, which the kernel turns into a dead-name notification carrying a
  // dead-name reference of its own (XNU ipc_right_check).
  accepted.receiver.close();
  await rejects(toB.drained(0, soon), kind("Disconnected"));
  ok(world.events.get("notify 110"), "a dead-name notification came");
  equal(toB.bufferedAmount, 0, "the queue and its rights were dropped");
  throws(() => toB.send(bytes(9), []), kind("Disconnected"));
  // Every sender of innerRx is gone: the queued references went too.
  innerTx.close();
  throws(() => innerRx.tryRecv(), kind("Disconnected"));
  for (const end of [innerRx, toB]) end.close();
  listener.close();
  await assertClean(world, a, b);
});
