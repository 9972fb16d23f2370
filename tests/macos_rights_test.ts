/**
 * Rights bookkeeping of the macOS backend, on any OS: `MachRights` runs over
 * a simulated Mach kernel (an IPC space per simulated task, names per port,
 * user references, dead names, port sets, out-of-line regions) through the
 * same steps the backend takes for each API call, and both the ledger and the
 * simulated kernel must end with nothing held (servo/ipc-channel #399, #116,
 * #327 were leaks of exactly these).
 */
import {
  deepStrictEqual as assertEquals,
  equal,
  ok,
  throws,
} from "node:assert/strict";
import {
  MachRights,
  type PortKernel,
  RightsError,
  RightsLedger,
} from "../platform/macos_rights.ts";

const MOVE_RECEIVE = 16;
const MOVE_SEND = 17;
const COPY_SEND = 19;
const PORT_RECEIVE = 16;
const PORT_SEND = 17;

interface Entry {
  port: number;
  receive: boolean;
  portSet: boolean;
  send: number;
  sendOnce: number;
  dead: number;
}

/** Ports alive in the simulated world, by id. */
const alive = new Set<number>();
let nextPort = 1;

/** One task's IPC space, behaving as XNU documents (not as the ledger says). */
class FakeSpace implements PortKernel {
  readonly entries = new Map<number, Entry>();
  readonly regions = new Map<bigint, number>();
  readonly members = new Map<number, number>();
  readonly #sendPossible = new Map<number, number>();
  #nextName = 0x103;
  #nextRegion = 0x1000_0000n;
  calls = 0;

  #newName(): number {
    const name = this.#nextName;
    this.#nextName += 0x100;
    return name;
  }

  /** The name this space uses for `port`, if any. */
  nameOf(port: number): number | undefined {
    for (const [name, e] of this.entries) if (e.port === port) return name;
    return undefined;
  }

  entry(name: number): Entry {
    const e = this.entries.get(name);
    if (e === undefined) {
      throw new Error(`KERN_INVALID_NAME 0x${name.toString(16)}`);
    }
    // Dead-name conversion happens when the port dies, seen lazily here.
    if (!e.receive && e.send > 0 && !alive.has(e.port)) {
      e.dead += e.send;
      e.send = 0;
    }
    return e;
  }

  #settle(name: number): void {
    const e = this.entries.get(name)!;
    if (!e.receive && !e.portSet && e.send + e.sendOnce + e.dead === 0) {
      this.entries.delete(name);
    }
  }

  /** Inserts a right to `port` as a message would (merging names). */
  insert(port: number, right: "receive" | "send" | "send-once"): number {
    let name = right === "send-once" ? undefined : this.nameOf(port);
    if (name === undefined) {
      name = this.#newName();
      this.entries.set(name, {
        port,
        receive: false,
        portSet: false,
        send: 0,
        sendOnce: 0,
        dead: 0,
      });
    }
    const e = this.entries.get(name)!;
    if (right === "receive") e.receive = true;
    else if (right === "send") e.send++;
    else e.sendOnce++;
    return name;
  }

  /** Takes a right out for a message: the port id it names. */
  copyIn(name: number, disposition: number): number {
    const e = this.entry(name);
    if (disposition === MOVE_RECEIVE) {
      if (!e.receive) throw new Error("KERN_INVALID_RIGHT (receive)");
      e.receive = false;
      this.members.delete(name);
    } else if (disposition === MOVE_SEND) {
      if (e.send === 0) throw new Error("KERN_INVALID_RIGHT (send)");
      e.send--;
    } else if (disposition === COPY_SEND) {
      if (e.send === 0) throw new Error("KERN_INVALID_RIGHT (copy)");
    } else throw new Error(`disposition ${disposition}`);
    const port = e.port;
    this.#settle(name);
    return port;
  }

  /** A kernel-made out-of-line region arriving in this space. */
  mapRegion(length: number): bigint {
    const address = this.#nextRegion;
    this.#nextRegion += 0x10_0000n;
    this.regions.set(address, length);
    return address;
  }

  allocate(right: "receive" | "port-set"): number {
    this.calls++;
    const name = this.#newName();
    const port = nextPort++;
    if (right === "receive") alive.add(port);
    this.entries.set(name, {
      port,
      receive: right === "receive",
      portSet: right === "port-set",
      send: 0,
      sendOnce: 0,
      dead: 0,
    });
    return name;
  }
  makeSend(name: number): void {
    this.calls++;
    const e = this.entry(name);
    if (!e.receive) throw new Error("KERN_INVALID_RIGHT");
    e.send++;
  }
  addReference(name: number): void {
    this.calls++;
    const e = this.entry(name);
    if (e.send > 0) e.send++;
    else if (e.dead > 0) e.dead++;
    else throw new Error("KERN_INVALID_RIGHT");
  }
  deallocate(name: number): void {
    this.calls++;
    const e = this.entry(name);
    if (e.send > 0) e.send--;
    else if (e.dead > 0) e.dead--;
    else if (e.sendOnce > 0) e.sendOnce--;
    else throw new Error("KERN_INVALID_RIGHT (deallocate)");
    this.#settle(name);
  }
  destroyReceive(name: number): void {
    this.calls++;
    const e = this.entry(name);
    if (!e.receive) throw new Error("KERN_INVALID_RIGHT");
    e.receive = false;
    alive.delete(e.port);
    this.members.delete(name);
    e.dead += e.send;
    e.send = 0;
    this.#settle(name);
  }
  destroyPortSet(name: number): void {
    this.calls++;
    const e = this.entry(name);
    if (!e.portSet) throw new Error("KERN_INVALID_RIGHT");
    for (const [member, set] of [...this.members]) {
      if (set === name) this.members.delete(member);
    }
    e.portSet = false;
    this.#settle(name);
  }
  insertMember(name: number, set: number): void {
    this.calls++;
    if (!this.entry(name).receive || !this.entry(set).portSet) {
      throw new Error("KERN_INVALID_RIGHT");
    }
    this.members.set(name, set);
  }
  extractMember(name: number, set: number): void {
    this.calls++;
    if (this.members.get(name) !== set) throw new Error("KERN_NOT_IN_SET");
    this.members.delete(name);
  }
  requestNoSenders(name: number): number {
    this.calls++;
    if (!this.entry(name).receive) throw new Error("KERN_INVALID_RIGHT");
    return 0;
  }
  requestSendPossible(name: number, notify: number): number {
    this.calls++;
    this.entry(name);
    const previous = this.#sendPossible.get(name);
    this.#sendPossible.set(name, this.entry(notify).port);
    // A replaced request gives its send-once right back to the caller.
    return previous === undefined ? 0 : this.insert(previous, "send-once");
  }
  /** The kernel fires a send-possible request (consuming its send-once). */
  fireSendPossible(name: number): void {
    this.#sendPossible.delete(name);
  }
  vmDeallocate(address: bigint, length: number): void {
    this.calls++;
    if (this.regions.get(address) !== length) {
      throw new Error("KERN_INVALID_ADDRESS");
    }
    this.regions.delete(address);
  }
}

/** A simulated task: its kernel space and the backend's bookkeeping over it. */
function task(): { space: FakeSpace; rights: MachRights } {
  const space = new FakeSpace();
  return { space, rights: new MachRights(space) };
}

/** Moves rights in a message from `from` to `to`, as mach_msg does. */
function transfer(
  from: ReturnType<typeof task>,
  to: ReturnType<typeof task>,
  carried: { name: number; disposition: number }[],
): { name: number; disposition: number }[] {
  const ports = carried.map((c) => from.space.copyIn(c.name, c.disposition));
  from.rights.sent(carried);
  const arrived = carried.map((c, i) => {
    const receive = c.disposition === MOVE_RECEIVE;
    return {
      name: to.space.insert(ports[i], receive ? "receive" : "send"),
      disposition: receive ? PORT_RECEIVE : PORT_SEND,
    };
  });
  to.rights.received({ rights: arrived, regions: [] });
  return arrived;
}

function assertClean(t: ReturnType<typeof task>): void {
  const left = t.rights.ledger.outstanding();
  assertEquals([...left.names], [], "the ledger still holds rights");
  assertEquals([...left.regions], [], "the ledger still holds regions");
  assertEquals([...t.space.entries], [], "the kernel still holds rights");
  assertEquals([...t.space.regions], [], "the kernel still holds regions");
}

Deno.test("channel, then close sender and receiver (either order)", () => {
  const a = task();
  const one = a.rights.newChannel();
  assertEquals(a.rights.ledger.rights(one), {
    receive: true,
    portSet: false,
    send: 1,
    sendOnce: 0,
    dead: 0,
    memberOf: undefined,
  });
  a.rights.release(one); // sender.close()
  a.rights.destroyReceive(one); // receiver.close()
  const two = a.rights.newChannel();
  a.rights.destroyReceive(two); // receiver first: the sender's name is dead
  equal(a.rights.ledger.rights(two)?.dead, 1);
  equal(a.space.entries.get(two)?.dead, 1);
  a.rights.release(two); // sender.close() releases the dead name
  assertClean(a);
});

Deno.test("clones are user references on one name, each released once", () => {
  const a = task();
  const name = a.rights.newChannel();
  a.rights.addReference(name);
  a.rights.addReference(name);
  equal(a.space.entries.get(name)?.send, 3);
  a.rights.destroyReceive(name);
  // Cloning a sender whose port died adds a dead-name reference.
  a.rights.addReference(name);
  for (let i = 0; i < 4; i++) a.rights.release(name);
  assertClean(a);
});

Deno.test("sending a sender (COPY_SEND) and a receiver (MOVE_RECEIVE) to another task", () => {
  const a = task();
  const b = task();
  const carrier = a.rights.newChannel();
  const [carrierInB] = transfer(a, b, [{
    name: carrier,
    disposition: MOVE_RECEIVE,
  }]);
  a.rights.sent([]);
  const payloadSender = a.rights.newChannel();
  const payloadReceiver = a.rights.newChannel();
  const arrived = transfer(a, b, [
    { name: payloadSender, disposition: COPY_SEND },
    { name: payloadReceiver, disposition: MOVE_RECEIVE },
  ]);
  // A keeps its sender (still usable) and the send right of the receiver's
  // channel; the receive right left.
  equal(a.rights.ledger.rights(payloadSender)?.send, 1);
  equal(a.rights.ledger.rights(payloadReceiver)?.receive, false);
  // B closes what arrived.
  b.rights.release(arrived[0].name);
  b.rights.destroyReceive(arrived[1].name);
  b.rights.destroyReceive(carrierInB.name);
  // A closes its endpoints; payloadSender's port died in B: a dead name.
  a.rights.release(carrier);
  a.rights.release(payloadSender);
  a.rights.destroyReceive(payloadSender);
  a.rights.release(payloadReceiver);
  assertClean(a);
  assertClean(b);
});

Deno.test("a sender that comes back merges into the name we hold", () => {
  const a = task();
  const b = task();
  const name = a.rights.newChannel();
  const [inB] = transfer(a, b, [{ name, disposition: COPY_SEND }]);
  const [back] = transfer(b, a, [{ name: inB.name, disposition: MOVE_SEND }]);
  equal(back.name, name);
  equal(a.rights.ledger.rights(name)?.send, 2);
  a.rights.release(back.name);
  a.rights.release(name);
  a.rights.destroyReceive(name);
  assertClean(a);
  assertClean(b);
});

Deno.test("queued sends own references; a dropped queue releases them", () => {
  const a = task();
  const b = task();
  const target = a.rights.newChannel();
  const [targetInB] = transfer(a, b, [{
    name: target,
    disposition: MOVE_RECEIVE,
  }]);
  const handle = a.rights.newChannel();
  const moved = a.rights.newChannel();
  // The queue takes a reference on the sender and the receive right.
  a.rights.addReference(handle);
  // The caller closes its sender before the flush: the queue's ref remains.
  a.rights.release(handle);
  // Flush: MOVE_SEND for the queued sender, MOVE_RECEIVE for the receiver.
  const arrived = transfer(a, b, [
    { name: handle, disposition: MOVE_SEND },
    { name: moved, disposition: MOVE_RECEIVE },
  ]);
  b.rights.release(arrived[0].name);
  b.rights.destroyReceive(arrived[1].name);
  // A second message is queued, then the receiver dies: the queue is dropped.
  const other = a.rights.newChannel();
  a.rights.addReference(other);
  b.rights.destroyReceive(targetInB.name);
  a.rights.died(target);
  a.rights.discard({
    rights: [{ name: other, disposition: PORT_SEND }],
    regions: [],
  });
  a.rights.release(other);
  a.rights.destroyReceive(other);
  a.rights.destroyReceive(handle);
  a.rights.release(moved);
  a.rights.release(target);
  assertClean(a);
  assertClean(b);
});

Deno.test("a timed-out send gives its rights back (pseudo-receive)", () => {
  const a = task();
  const sender = a.rights.newChannel();
  const receiver = a.rights.newChannel();
  const carried = [
    { name: sender, disposition: COPY_SEND },
    { name: receiver, disposition: MOVE_RECEIVE },
  ];
  // Copy-in took the rights; MACH_SEND_TIMED_OUT then copied them out again
  // (a copied send right comes back as one more reference).
  const ports = carried.map((c) => a.space.copyIn(c.name, c.disposition));
  a.rights.sent(carried);
  const back = [
    { name: a.space.insert(ports[0], "send"), disposition: PORT_SEND },
    { name: a.space.insert(ports[1], "receive"), disposition: PORT_RECEIVE },
  ];
  a.rights.received({ rights: back, regions: [] });
  equal(back[0].name, sender);
  equal(back[1].name, receiver); // merged with the send right still held
  // The queued message now owns those rights; its flush moves them away.
  a.space.copyIn(back[0].name, MOVE_SEND);
  a.space.copyIn(back[1].name, MOVE_RECEIVE);
  a.rights.sent([
    { name: back[0].name, disposition: MOVE_SEND },
    { name: back[1].name, disposition: MOVE_RECEIVE },
  ]);
  a.rights.release(sender);
  a.rights.destroyReceive(sender);
  a.rights.release(receiver);
  assertClean(a);
});

Deno.test("receiver sets: add, remove, close, and a member that closes", () => {
  const a = task();
  const set = a.rights.newPortSet();
  const names = [
    a.rights.newChannel(),
    a.rights.newChannel(),
    a.rights.newChannel(),
  ];
  for (const name of names) a.rights.insertMember(name, set);
  equal(a.space.members.size, 3);
  // remove(id): out of the set, receive right destroyed
  a.rights.extractMember(names[0], set);
  a.rights.destroyReceive(names[0]);
  // a member whose senders are gone (no-senders arrived): destroyed in place
  a.rights.release(names[1]);
  a.rights.destroyReceive(names[1]);
  // close(): every member destroyed, then the set
  a.rights.destroyReceive(names[2]);
  a.rights.destroyPortSet(set);
  a.rights.release(names[0]);
  a.rights.release(names[2]);
  assertClean(a);
});

Deno.test("server: register, connect, accept, close", () => {
  const server = task();
  const client = task();
  // listen(): a receive port, a send right for bootstrap_register2 (which
  // copies it), then our reference released.
  const listener = server.rights.newReceivePort();
  server.rights.makeSend(listener);
  const launchd = task();
  const [registered] = transfer(server, launchd, [
    { name: listener, disposition: COPY_SEND },
  ]);
  server.rights.release(listener);
  // connect(): bootstrap_look_up gives the client a send right…
  const [lookedUp] = transfer(launchd, client, [
    { name: registered.name, disposition: COPY_SEND },
  ]);
  // …it makes a channel and moves the receive right to the listener…
  const channel = client.rights.newChannel();
  const [accepted] = transfer(client, server, [
    { name: channel, disposition: MOVE_RECEIVE },
  ]);
  // …and releases the looked-up right.
  client.rights.release(lookedUp.name);
  // The server accepted a receiver; both sides close.
  server.rights.destroyReceive(accepted.name);
  client.rights.release(channel);
  // Server close: the listening port dies; launchd drops its dead name.
  server.rights.destroyReceive(listener);
  launchd.rights.release(registered.name);
  assertClean(server);
  assertClean(client);
  assertClean(launchd);
});

Deno.test("send-possible requests: a replaced request's send-once right is released", () => {
  const a = task();
  const notify = a.rights.newReceivePort();
  const b = task();
  const target = b.rights.newChannel();
  const [inA] = transfer(b, a, [{ name: target, disposition: MOVE_SEND }]);
  a.rights.requestSendPossible(inA.name, notify);
  a.rights.requestSendPossible(inA.name, notify); // returns the previous one
  a.space.fireSendPossible(inA.name);
  a.rights.release(inA.name);
  a.rights.destroyReceive(notify);
  b.rights.destroyReceive(target);
  assertClean(a);
  assertClean(b);
});

Deno.test("out-of-line bodies and rejected messages are released", () => {
  const a = task();
  const b = task();
  const address = a.space.mapRegion(1 << 20);
  const stray = b.rights.newChannel();
  const [strayInA] = transfer(b, a, [{ name: stray, disposition: COPY_SEND }]);
  // A message whose frame is malformed: every right and region discarded.
  const resources = {
    rights: [{ name: strayInA.name, disposition: PORT_SEND }],
    regions: [{ address, length: 1 << 20 }],
  };
  a.rights.ledger.regionMapped(address, 1 << 20);
  // (transfer already recorded the right; the region is recorded here)
  a.rights.discard(resources);
  b.rights.release(stray);
  b.rights.destroyReceive(stray);
  assertClean(a);
  assertClean(b);
});

Deno.test("the ledger catches the crate's leaks and misuses", () => {
  const ledger = new RightsLedger();
  ledger.allocated(0x103, "receive");
  ledger.sendMade(0x103);
  ledger.deallocated(0x103);
  // #116-style: mach_port_deallocate on a receive right frees nothing.
  throws(() => ledger.deallocated(0x103), RightsError);
  equal(ledger.outstanding().names.size, 1);
  // #399-style: a set member never taken out keeps its receive right.
  ledger.allocated(0x203, "port-set");
  ledger.memberInserted(0x103, 0x203);
  ledger.portSetDestroyed(0x203);
  const left = ledger.outstanding().names.get(0x103);
  ok(left?.receive);
  equal(left?.memberOf, undefined);
  // Pinned process-lifetime names (bootstrap port, notify port) are not leaks.
  ledger.received(0x303, PORT_SEND);
  ledger.pin(0x303);
  ledger.receiveDestroyed(0x103);
  equal(ledger.outstanding().names.size, 0);
  throws(() => ledger.moved(0x403, MOVE_SEND), RightsError);
  throws(() => ledger.regionReleased(0x1000n), RightsError);
});
