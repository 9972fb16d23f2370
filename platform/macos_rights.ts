/**
 * Every Mach port right and out-of-line region this process owns, counted.
 *
 * The Rust crate leaked rights in its router, its one-shot server and its
 * receiver sets (servo/ipc-channel #399, #116, #327): a receive right freed
 * with `mach_port_deallocate` (which only drops send and dead-name
 * references), a send right cloned and never released, a set member never
 * taken out. Here every right-changing call of the macOS backend goes through
 * {@linkcode MachRights}, which makes the call through a {@linkcode PortKernel}
 * and records its effect in a {@linkcode RightsLedger}. The ledger is pure: it
 * refuses an operation the kernel would refuse (releasing a right we do not
 * hold), and {@linkcode RightsLedger.outstanding} lists what is still held.
 * Tests drive `MachRights` over a simulated kernel through the same sequences
 * the backend performs (tests/macos_rights_test.ts), and the backend itself
 * over a simulated kernel that checks every call (tests/macos_backend_test.ts);
 * on a Mac, the backend's own ledger can be read with
 * `machRightsOutstanding()`.
 *
 * Mach facts the model follows (mach/port.h, XNU `ipc_right.c`):
 * - A task has one name per port. Send rights to the same port share that
 *   name and are counted as user references; a receive right and send rights
 *   to the same port share the name too.
 * - `mach_port_deallocate` drops one send, send-once or dead-name reference;
 *   it never releases a receive right or a port set (that takes
 *   `mach_port_mod_refs(…, RECEIVE or PORT_SET, -1)`).
 * - When a port dies, our send references to it become dead-name references
 *   under the same name, still to be released.
 * - Destroying a receive right while we hold send rights to the same port
 *   leaves those as a dead name.
 * - Moving a receive right out of the task (MOVE_RECEIVE) takes it out of
 *   any port set it was in.
 * - A port that dies while we have a notification request armed on one of
 *   our names for it adds a dead-name reference to that name, carried by
 *   the dead-name notification (XNU `ipc_right_check`).
 *
 * @module
 */

/** Thrown when the backend would release a right it does not hold. */
export class RightsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RightsError";
  }
}

/** What one name holds. */
export interface NameRights {
  receive: boolean;
  portSet: boolean;
  /** Send-right user references. */
  send: number;
  sendOnce: number;
  /** Dead-name user references (send rights whose port died). */
  dead: number;
  /** The port set this receive right is a member of, if any. */
  memberOf: number | undefined;
}

/** mach/message.h dispositions the ledger understands. */
const MOVE_RECEIVE = 16;
const MOVE_SEND = 17;
const MOVE_SEND_ONCE = 18;
const COPY_SEND = 19;

/** The pure record of rights; see the module doc. */
export class RightsLedger {
  readonly #names = new Map<number, NameRights>();
  readonly #regions = new Map<bigint, number>();
  readonly #pinned = new Set<number>();
  /** Operations recorded, for tests and diagnostics. */
  operations = 0;

  #entry(name: number): NameRights {
    let entry = this.#names.get(name);
    if (entry === undefined) {
      entry = {
        receive: false,
        portSet: false,
        send: 0,
        sendOnce: 0,
        dead: 0,
        memberOf: undefined,
      };
      this.#names.set(name, entry);
    }
    return entry;
  }

  #settle(name: number): void {
    const e = this.#names.get(name);
    if (
      e !== undefined && !e.receive && !e.portSet && e.send === 0 &&
      e.sendOnce === 0 && e.dead === 0
    ) {
      this.#names.delete(name);
    }
  }

  #fail(name: number, what: string): never {
    const e = this.#names.get(name);
    throw new RightsError(
      `${what} on name 0x${name.toString(16)}, which holds ${
        e === undefined ? "nothing" : JSON.stringify(e)
      }`,
    );
  }

  /** What `name` holds now (a copy), or undefined. */
  rights(name: number): NameRights | undefined {
    const e = this.#names.get(name);
    return e === undefined ? undefined : { ...e };
  }

  /** Marks a name as held for the life of the process (not a leak). */
  pin(name: number): void {
    this.#pinned.add(name);
  }

  /** `mach_port_allocate(RECEIVE or PORT_SET)` returned `name`. */
  allocated(name: number, right: "receive" | "port-set"): void {
    this.operations++;
    const e = this.#entry(name);
    if (e.receive || e.portSet) this.#fail(name, "allocate");
    if (right === "receive") e.receive = true;
    else e.portSet = true;
  }

  /** `mach_port_insert_right(name, name, MAKE_SEND)`. */
  sendMade(name: number): void {
    this.operations++;
    const e = this.#entry(name);
    if (!e.receive) this.#fail(name, "MAKE_SEND without the receive right");
    e.send++;
  }

  /** `mach_port_mod_refs(SEND or DEAD_NAME, +1)`: one more user reference. */
  referenceAdded(name: number): void {
    this.operations++;
    const e = this.#entry(name);
    if (e.send > 0) e.send++;
    else if (e.dead > 0) e.dead++;
    else this.#fail(name, "add a send reference");
  }

  /** `mach_port_deallocate(name)`: drops one send, send-once or dead reference. */
  deallocated(name: number): void {
    this.operations++;
    const e = this.#names.get(name) ?? this.#fail(name, "deallocate");
    if (e.send > 0) e.send--;
    else if (e.dead > 0) e.dead--;
    else if (e.sendOnce > 0) e.sendOnce--;
    else this.#fail(name, "deallocate (which never frees a receive right)");
    this.#settle(name);
  }

  /** `mach_port_mod_refs(name, RECEIVE, -1)`: the port is destroyed. */
  receiveDestroyed(name: number): void {
    this.operations++;
    const e = this.#names.get(name);
    if (!e?.receive) this.#fail(name, "destroy a receive right");
    e.receive = false;
    e.memberOf = undefined;
    e.dead += e.send;
    e.send = 0;
    this.#settle(name);
  }

  /** `mach_port_mod_refs(name, PORT_SET, -1)`: members leave the set. */
  portSetDestroyed(name: number): void {
    this.operations++;
    const e = this.#names.get(name);
    if (!e?.portSet) this.#fail(name, "destroy a port set");
    e.portSet = false;
    for (const other of this.#names.values()) {
      if (other.memberOf === name) other.memberOf = undefined;
    }
    this.#settle(name);
  }

  /** `mach_port_insert_member(name, set)`. */
  memberInserted(name: number, set: number): void {
    this.operations++;
    const e = this.#names.get(name);
    if (!e?.receive) this.#fail(name, "insert a non-receive right in a set");
    if (!this.#names.get(set)?.portSet) {
      this.#fail(set, "insert into a non-set");
    }
    if (e.memberOf !== undefined) this.#fail(name, "insert twice");
    e.memberOf = set;
  }

  /** `mach_port_extract_member(name, set)`. */
  memberExtracted(name: number, set: number): void {
    this.operations++;
    const e = this.#names.get(name);
    if (e?.memberOf !== set) {
      this.#fail(name, `extract from 0x${set.toString(16)}`);
    }
    e.memberOf = undefined;
  }

  /** A message we sent carried `name` with `disposition` (it left us if moved). */
  moved(name: number, disposition: number): void {
    this.operations++;
    if (disposition === COPY_SEND) return;
    const e = this.#names.get(name) ?? this.#fail(name, "send a right");
    if (disposition === MOVE_RECEIVE) {
      if (!e.receive) this.#fail(name, "MOVE_RECEIVE");
      e.receive = false;
      e.memberOf = undefined;
    } else if (disposition === MOVE_SEND) {
      if (e.send === 0) this.#fail(name, "MOVE_SEND");
      e.send--;
    } else if (disposition === MOVE_SEND_ONCE) {
      if (e.sendOnce === 0) this.#fail(name, "MOVE_SEND_ONCE");
      e.sendOnce--;
    } else {
      this.#fail(name, `send with disposition ${disposition}`);
    }
    this.#settle(name);
  }

  /** A message we received (or got back after a failed send) gave us a right. */
  received(name: number, disposition: number): void {
    this.operations++;
    const e = this.#entry(name);
    if (disposition === MOVE_RECEIVE) {
      if (e.receive) this.#fail(name, "receive a receive right twice");
      e.receive = true;
    } else if (disposition === MOVE_SEND) {
      e.send++;
    } else if (disposition === MOVE_SEND_ONCE) {
      e.sendOnce++;
    } else {
      this.#fail(name, `receive disposition ${disposition}`);
    }
  }

  /**
   * A dead-name notification for `name` arrived: the kernel added one
   * dead-name reference for it when the port died with our request armed.
   */
  deadNameNotified(name: number): void {
    this.operations++;
    const e = this.#entry(name);
    e.dead += e.send + 1;
    e.send = 0;
  }

  /** The port behind our send references died: they are dead names now. */
  died(name: number): void {
    this.operations++;
    const e = this.#names.get(name);
    if (e === undefined || e.receive) return;
    e.dead += e.send;
    e.send = 0;
  }

  /** An out-of-line region appeared in our address space. */
  regionMapped(address: bigint, length: number): void {
    this.operations++;
    if (this.#regions.has(address)) {
      throw new RightsError(`region 0x${address.toString(16)} mapped twice`);
    }
    this.#regions.set(address, length);
  }

  /** `vm_deallocate` of a region. */
  regionReleased(address: bigint): void {
    this.operations++;
    if (!this.#regions.delete(address)) {
      throw new RightsError(`region 0x${address.toString(16)} is not ours`);
    }
  }

  /** Every unpinned name still holding something, and every region. */
  outstanding(): {
    names: Map<number, NameRights>;
    regions: Map<bigint, number>;
  } {
    const names = new Map<number, NameRights>();
    for (const [name, e] of this.#names) {
      if (!this.#pinned.has(name)) names.set(name, { ...e });
    }
    return { names, regions: new Map(this.#regions) };
  }
}

// ---------------------------------------------------------------------------

/**
 * The Mach calls that change rights. Each returns normally on
 * KERN_SUCCESS and throws otherwise; `allocate` returns the new name.
 */
export interface PortKernel {
  /** `mach_port_allocate`. */
  allocate(right: "receive" | "port-set"): number;
  /** `mach_port_insert_right(task, name, name, MAKE_SEND)`. */
  makeSend(name: number): void;
  /** `mach_port_mod_refs(task, name, SEND or DEAD_NAME, +1)`. */
  addReference(name: number): void;
  /** `mach_port_deallocate`. */
  deallocate(name: number): void;
  /** `mach_port_mod_refs(task, name, RECEIVE, -1)`. */
  destroyReceive(name: number): void;
  /** `mach_port_mod_refs(task, name, PORT_SET, -1)`. */
  destroyPortSet(name: number): void;
  /** `mach_port_insert_member`. */
  insertMember(name: number, set: number): void;
  /** `mach_port_extract_member`. */
  extractMember(name: number, set: number): void;
  /**
   * `mach_port_request_notification(name, NO_SENDERS, sync 0, name,
   * MAKE_SEND_ONCE)`; returns the previous send-once right (usually NULL).
   */
  requestNoSenders(name: number): number;
  /**
   * `mach_port_request_notification(name, SEND_POSSIBLE, sync 1, notify,
   * MAKE_SEND_ONCE)`; returns the previous send-once right (NULL if none).
   */
  requestSendPossible(name: number, notify: number): number;
  /** `vm_deallocate(task, address, length)`. */
  vmDeallocate(address: bigint, length: number): void;
}

/** A right and how a message carries it. */
export interface CarriedRight {
  name: number;
  disposition: number;
}

/** Rights and regions a received message gave us. */
export interface ReceivedResources {
  rights: CarriedRight[];
  regions: { address: bigint; length: number }[];
}

/**
 * The backend's only way to change rights: each method is one API-level
 * step (a channel, a clone, a close, a send…), makes its kernel calls and
 * records them. See the module doc.
 */
export class MachRights {
  readonly ledger: RightsLedger = new RightsLedger();
  readonly #kernel: PortKernel;

  constructor(kernel: PortKernel) {
    this.#kernel = kernel;
  }

  /** A new port: its receive right plus one send right, armed for no-senders. */
  newChannel(): number {
    const k = this.#kernel;
    const name = k.allocate("receive");
    this.ledger.allocated(name, "receive");
    try {
      k.makeSend(name);
      this.ledger.sendMade(name);
      // With a send right alive, the request arms rather than fires at once.
      this.#dropPrevious(k.requestNoSenders(name));
    } catch (error) {
      this.destroyReceive(name);
      throw error;
    }
    return name;
  }

  /** A port with only its receive right (a server's listening port, a notify port). */
  newReceivePort(): number {
    const name = this.#kernel.allocate("receive");
    this.ledger.allocated(name, "receive");
    return name;
  }

  /** One more send right on a port we hold the receive right of (to register it). */
  makeSend(name: number): void {
    this.#kernel.makeSend(name);
    this.ledger.sendMade(name);
  }

  /** A port set for a receiver set. */
  newPortSet(): number {
    const name = this.#kernel.allocate("port-set");
    this.ledger.allocated(name, "port-set");
    return name;
  }

  /** A sender clone: one more reference on the same name. */
  addReference(name: number): void {
    this.#kernel.addReference(name);
    this.ledger.referenceAdded(name);
  }

  /** Drops one send, send-once or dead-name reference. */
  release(name: number): void {
    this.#kernel.deallocate(name);
    this.ledger.deallocated(name);
  }

  /** Destroys a receive right (the port dies; its senders see dead names). */
  destroyReceive(name: number): void {
    this.#kernel.destroyReceive(name);
    this.ledger.receiveDestroyed(name);
  }

  /** Destroys a port set (after its members were taken out or destroyed). */
  destroyPortSet(name: number): void {
    this.#kernel.destroyPortSet(name);
    this.ledger.portSetDestroyed(name);
  }

  /** Puts a receive right in a set. */
  insertMember(name: number, set: number): void {
    this.#kernel.insertMember(name, set);
    this.ledger.memberInserted(name, set);
  }

  /** Takes a receive right out of its set. */
  extractMember(name: number, set: number): void {
    this.#kernel.extractMember(name, set);
    this.ledger.memberExtracted(name, set);
  }

  /** Asks for a send-possible notification on `name` at `notify`. */
  requestSendPossible(name: number, notify: number): void {
    this.#dropPrevious(this.#kernel.requestSendPossible(name, notify));
  }

  #dropPrevious(previous: number): void {
    if (previous === 0) return;
    // The replaced request's send-once right came back to us: release it.
    this.ledger.received(previous, MOVE_SEND_ONCE);
    this.release(previous);
  }

  /** A message left with these rights (moved ones are no longer ours). */
  sent(rights: readonly CarriedRight[]): void {
    for (const right of rights) {
      this.ledger.moved(right.name, right.disposition);
    }
  }

  /** A message arrived (or came back from a failed send) with these. */
  received(resources: ReceivedResources): void {
    for (const right of resources.rights) {
      this.ledger.received(right.name, right.disposition);
    }
    for (const region of resources.regions) {
      this.ledger.regionMapped(region.address, region.length);
    }
  }

  /** Releases everything a message gave us (a rejected or dropped message). */
  discard(resources: ReceivedResources): void {
    for (const right of resources.rights) {
      if (right.disposition === MOVE_RECEIVE) this.destroyReceive(right.name);
      else this.release(right.name);
    }
    for (const region of resources.regions) this.releaseRegion(region);
  }

  /** `vm_deallocate` of an out-of-line region once its bytes are copied. */
  releaseRegion(region: { address: bigint; length: number }): void {
    this.#kernel.vmDeallocate(region.address, region.length);
    this.ledger.regionReleased(region.address);
  }

  /**
   * A dead-name notification for `name`: a send-possible (or dead-name)
   * request was armed when the port died, and the kernel added a dead-name
   * reference that the notification carries (XNU `ipc_right_check`: "Add
   * the reference that the notification carries"). Released at once.
   */
  deadNameNotified(name: number): void {
    this.ledger.deadNameNotified(name);
    this.release(name);
  }

  /** Our send references to `name` turned out dead (MACH_SEND_INVALID_DEST). */
  died(name: number): void {
    this.ledger.died(name);
  }
}
