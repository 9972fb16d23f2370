/**
 * Mach messages as bytes: building what `mach_msg` sends and parsing what it
 * receives, with no FFI call in sight, so that every offset is unit-tested on
 * any OS (tests/macos_msg_test.ts). Layouts follow the 64-bit user-space
 * structs of XNU's `mach/message.h`, which packs them to 4 bytes
 * (`#pragma pack(push, 4)`); every integer is little-endian (x86_64, arm64).
 *
 * Our message, in order:
 * - `mach_msg_header_t` (24 B).
 * - If it carries rights or out-of-line memory: `mach_msg_body_t` (4 B, the
 *   descriptor count), one `mach_msg_port_descriptor_t` (12 B) per endpoint
 *   or shared memory region, then one `mach_msg_ool_descriptor64_t` (16 B)
 *   when the body travels out of line.
 * - Our frame: magic `0x4950` (u16), body kind (u8: 1 inline, 2 out of
 *   line), 0 (u8), handle count (u32), body length (u64), then 16 B per handle
 *   (kind u32, 0 u32, shared-memory length u64), then the inline body.
 * - Zero padding to a multiple of 4 (`mach_msg` wants 4-aligned sizes).
 *
 * The kernel appends a trailer at `msgh_size` on receive.
 *
 * @module
 */

// ---------------------------------------------------------------------------
// Constants, each from the header that defines it.

/** mach/message.h: `sizeof(mach_msg_header_t)`. */
export const HEADER_SIZE = 24;
/** mach/message.h: `sizeof(mach_msg_body_t)`. */
export const BODY_SIZE = 4;
/** mach/message.h: `sizeof(mach_msg_port_descriptor_t)` (64-bit user). */
export const PORT_DESCRIPTOR_SIZE = 12;
/** mach/message.h: `sizeof(mach_msg_ool_descriptor64_t)`. */
export const OOL_DESCRIPTOR_SIZE = 16;
/** mach/message.h: `sizeof(mach_msg_max_trailer_t)` = `mach_msg_mac_trailer_t`. */
export const MAX_TRAILER_SIZE = 68;
/** mach/message.h: `sizeof(mach_msg_audit_trailer_t)`. */
export const AUDIT_TRAILER_SIZE = 52;

/** mach/message.h: `MACH_MSGH_BITS_COMPLEX`. */
export const MACH_MSGH_BITS_COMPLEX = 0x8000_0000;
/** mach/message.h: `MACH_MSGH_BITS_REMOTE_MASK`. */
export const MACH_MSGH_BITS_REMOTE_MASK = 0x1f;
/** mach/message.h: `MACH_MSGH_BITS_LOCAL_MASK`. */
export const MACH_MSGH_BITS_LOCAL_MASK = 0x1f00;

/** mach/message.h: port dispositions (`MACH_MSG_TYPE_*`). */
export const MACH_MSG_TYPE_MOVE_RECEIVE = 16;
export const MACH_MSG_TYPE_MOVE_SEND = 17;
export const MACH_MSG_TYPE_MOVE_SEND_ONCE = 18;
export const MACH_MSG_TYPE_COPY_SEND = 19;
export const MACH_MSG_TYPE_MAKE_SEND = 20;
export const MACH_MSG_TYPE_MAKE_SEND_ONCE = 21;
/** mach/message.h: what a received right is (`PORT_RECEIVE` = `MOVE_RECEIVE`…). */
export const MACH_MSG_TYPE_PORT_RECEIVE = 16;
export const MACH_MSG_TYPE_PORT_SEND = 17;
export const MACH_MSG_TYPE_PORT_SEND_ONCE = 18;

/** mach/message.h: `mach_msg_descriptor_type_t` values. */
export const MACH_MSG_PORT_DESCRIPTOR = 0;
export const MACH_MSG_OOL_DESCRIPTOR = 1;
export const MACH_MSG_OOL_PORTS_DESCRIPTOR = 2;
export const MACH_MSG_OOL_VOLATILE_DESCRIPTOR = 3;
export const MACH_MSG_GUARDED_PORT_DESCRIPTOR = 4;
/** mach/message.h: `mach_msg_copy_options_t` values. */
export const MACH_MSG_PHYSICAL_COPY = 0;
export const MACH_MSG_VIRTUAL_COPY = 1;

/** mach/message.h: `mach_msg` options. */
export const MACH_SEND_MSG = 0x1;
export const MACH_RCV_MSG = 0x2;
export const MACH_RCV_LARGE = 0x4;
export const MACH_SEND_TIMEOUT = 0x10;
export const MACH_RCV_TIMEOUT = 0x100;
/** mach/message.h: `MACH_RCV_TRAILER_TYPE(MACH_MSG_TRAILER_FORMAT_0)`. */
export const MACH_RCV_TRAILER_FORMAT_0 = 0;
/** mach/message.h: `MACH_RCV_TRAILER_AUDIT` (3), shifted by `MACH_RCV_TRAILER_ELEMENTS` (<< 24). */
export const MACH_RCV_TRAILER_AUDIT_ELEMENTS = 3 << 24;

/** mach/message.h: `mach_msg_return_t` values we branch on. */
export const MACH_MSG_SUCCESS = 0;
export const MACH_SEND_INVALID_DEST = 0x1000_0003;
export const MACH_SEND_TIMED_OUT = 0x1000_0004;
export const MACH_SEND_INTERRUPTED = 0x1000_0007;
export const MACH_SEND_INVALID_RIGHT = 0x1000_000a;
export const MACH_SEND_TOO_LARGE = 0x1000_000e;
export const MACH_SEND_NO_BUFFER = 0x1000_000d;
export const MACH_RCV_TIMED_OUT = 0x1000_4003;
export const MACH_RCV_TOO_LARGE = 0x1000_4004;
export const MACH_RCV_INTERRUPTED = 0x1000_4005;
export const MACH_RCV_PORT_DIED = 0x1000_4009;
export const MACH_RCV_PORT_CHANGED = 0x1000_4006;
export const MACH_RCV_INVALID_NAME = 0x1000_4002;

/** mach/notify.h: `MACH_NOTIFY_FIRST` (0100) plus the offsets. */
export const MACH_NOTIFY_PORT_DELETED = 0o101;
export const MACH_NOTIFY_SEND_POSSIBLE = 0o102;
export const MACH_NOTIFY_PORT_DESTROYED = 0o105;
export const MACH_NOTIFY_NO_SENDERS = 0o106;
export const MACH_NOTIFY_SEND_ONCE = 0o107;
export const MACH_NOTIFY_DEAD_NAME = 0o110;

/** Our `msgh_id` for a data message ("IP" then 1). */
export const MSG_ID_DATA = 0x4950_0001;
/** Our `msgh_id` for a connection request to a server port ("IP" then 2). */
export const MSG_ID_CONNECT = 0x4950_0002;

/** Our frame's magic (the Linux wire format's too). */
export const FRAME_MAGIC = 0x4950;
/** Frame size before the handle table. */
export const FRAME_HEADER = 16;
/** One handle-table entry. */
export const FRAME_HANDLE = 16;
/** Body kinds. */
export const BODY_INLINE = 1;
export const BODY_OUT_OF_LINE = 2;

/** What a port descriptor is, to the receiver. */
export const HANDLE_SENDER = 1;
export const HANDLE_RECEIVER = 2;
export const HANDLE_SHARED_MEMORY = 3;
/** The kind a handle-table entry may take. */
export type HandleKind =
  | typeof HANDLE_SENDER
  | typeof HANDLE_RECEIVER
  | typeof HANDLE_SHARED_MEMORY;

/** mach/port.h: `MACH_PORT_NULL`. */
export const MACH_PORT_NULL = 0;

/** `(n + 3) & ~3`: mach_msg sizes are multiples of 4 (message.h `round_msg`). */
export function round4(n: number): number {
  return (n + 3) & ~3;
}

/** mach/message.h: `MACH_MSGH_BITS(remote, local)`. */
export function msghBits(remote: number, local: number): number {
  return (remote | (local << 8)) >>> 0;
}

// ---------------------------------------------------------------------------
// Building.

/** A right carried by one port descriptor. */
export interface OutgoingPort {
  /** The name in our space. */
  name: number;
  /** `MACH_MSG_TYPE_MOVE_RECEIVE`, `MOVE_SEND` or `COPY_SEND`. */
  disposition: number;
  /** What the receiver should make of it. */
  kind: HandleKind;
  /** Shared memory length (0 for endpoints). */
  length: number;
}

/** Everything {@linkcode buildMessage} writes. */
export interface OutgoingMessage {
  /** Destination port name. */
  remotePort: number;
  /** How the destination right is used (COPY_SEND for a sender). */
  remoteDisposition: number;
  /** `msgh_id`. */
  id: number;
  /** Rights to carry, in the order the receiver will list them. */
  ports: readonly OutgoingPort[];
  /** The payload: inline bytes, or an address and size to send out of line. */
  body:
    | { inline: Uint8Array }
    | { address: bigint; length: number };
}

/** Bytes {@linkcode buildMessage} will write for `message`. */
export function messageSize(message: OutgoingMessage): number {
  const outOfLine = !("inline" in message.body);
  const descriptors = message.ports.length + (outOfLine ? 1 : 0);
  const head = HEADER_SIZE +
    (descriptors > 0
      ? BODY_SIZE + PORT_DESCRIPTOR_SIZE * message.ports.length +
        (outOfLine ? OOL_DESCRIPTOR_SIZE : 0)
      : 0);
  const inline = "inline" in message.body ? message.body.inline.length : 0;
  return round4(
    head + FRAME_HEADER + FRAME_HANDLE * message.ports.length + inline,
  );
}

/**
 * Writes `message` at the start of `into` (which must hold
 * {@linkcode messageSize} bytes) and returns its size, the `send_size` to
 * pass to `mach_msg`.
 */
export function buildMessage(
  into: Uint8Array,
  message: OutgoingMessage,
): number {
  const size = messageSize(message);
  if (into.length < size) {
    throw new RangeError(
      `message needs ${size} bytes, buffer has ${into.length}`,
    );
  }
  const view = new DataView(into.buffer, into.byteOffset, into.byteLength);
  const outOfLine = !("inline" in message.body);
  const descriptors = message.ports.length + (outOfLine ? 1 : 0);
  // mach_msg_header_t
  view.setUint32(
    0,
    (msghBits(message.remoteDisposition, 0) |
      (descriptors > 0 ? MACH_MSGH_BITS_COMPLEX : 0)) >>> 0,
    true,
  );
  view.setUint32(4, size, true); // msgh_size
  view.setUint32(8, message.remotePort, true); // msgh_remote_port
  view.setUint32(12, MACH_PORT_NULL, true); // msgh_local_port
  view.setUint32(16, MACH_PORT_NULL, true); // msgh_voucher_port
  view.setInt32(20, message.id | 0, true); // msgh_id
  let at = HEADER_SIZE;
  if (descriptors > 0) {
    view.setUint32(at, descriptors, true); // msgh_descriptor_count
    at += BODY_SIZE;
    for (const port of message.ports) {
      // mach_msg_port_descriptor_t: name, pad1, then pad2:16 disposition:8 type:8
      view.setUint32(at, port.name, true);
      view.setUint32(at + 4, 0, true);
      view.setUint16(at + 8, 0, true);
      view.setUint8(at + 10, port.disposition);
      view.setUint8(at + 11, MACH_MSG_PORT_DESCRIPTOR);
      at += PORT_DESCRIPTOR_SIZE;
    }
    if (!("inline" in message.body)) {
      // mach_msg_ool_descriptor64_t: address, deallocate:8 copy:8 pad1:8 type:8, size
      view.setBigUint64(at, message.body.address, true);
      view.setUint8(at + 8, 0); // deallocate: the sender keeps its copy
      view.setUint8(at + 9, MACH_MSG_VIRTUAL_COPY);
      view.setUint8(at + 10, 0);
      view.setUint8(at + 11, MACH_MSG_OOL_DESCRIPTOR);
      view.setUint32(at + 12, message.body.length, true);
      at += OOL_DESCRIPTOR_SIZE;
    }
  }
  // Our frame.
  const inline = "inline" in message.body ? message.body.inline : undefined;
  view.setUint16(at, FRAME_MAGIC, true);
  view.setUint8(at + 2, inline ? BODY_INLINE : BODY_OUT_OF_LINE);
  view.setUint8(at + 3, 0);
  view.setUint32(at + 4, message.ports.length, true);
  view.setBigUint64(
    at + 8,
    BigInt(
      inline ? inline.length : (message.body as { length: number }).length,
    ),
    true,
  );
  at += FRAME_HEADER;
  for (const port of message.ports) {
    view.setUint32(at, port.kind, true);
    view.setUint32(at + 4, 0, true);
    view.setBigUint64(at + 8, BigInt(port.length), true);
    at += FRAME_HANDLE;
  }
  if (inline) {
    into.set(inline, at);
    at += inline.length;
  }
  into.fill(0, at, size);
  return size;
}

// ---------------------------------------------------------------------------
// Parsing.

/** One descriptor of a received (or pseudo-received) message. */
export type Descriptor =
  | { type: "port"; name: number; disposition: number }
  | {
    type: "ool";
    address: bigint;
    length: number;
    deallocate: boolean;
    copy: number;
  }
  | { type: "other"; descriptorType: number };

/** The parts of a received `mach_msg_header_t` and body. */
export interface ParsedMessage {
  bits: number;
  /** `msgh_size`: the message without its trailer. */
  size: number;
  remotePort: number;
  localPort: number;
  id: number;
  complex: boolean;
  descriptors: Descriptor[];
  /** Offset of the first byte after the descriptors. */
  dataOffset: number;
}

/** A message that does not follow the layout; rights in it must be destroyed. */
export class MalformedMessage extends Error {
  constructor(message: string) {
    super(`malformed Mach message: ${message}`);
    this.name = "MalformedMessage";
  }
}

/**
 * Reads the header and descriptors of the message at the start of `bytes`.
 * Throws {@linkcode MalformedMessage} only when even the descriptors cannot
 * be read; callers then have nothing to free but what the kernel destroys
 * with `mach_msg_destroy`.
 */
export function parseMessage(bytes: Uint8Array): ParsedMessage {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < HEADER_SIZE) {
    throw new MalformedMessage(`${bytes.length} bytes, less than a header`);
  }
  const bits = view.getUint32(0, true);
  const size = view.getUint32(4, true);
  if (size < HEADER_SIZE || size > bytes.length) {
    throw new MalformedMessage(`msgh_size ${size} outside 24..${bytes.length}`);
  }
  const complex = (bits & MACH_MSGH_BITS_COMPLEX) !== 0;
  const descriptors: Descriptor[] = [];
  let at = HEADER_SIZE;
  if (complex) {
    if (size < HEADER_SIZE + BODY_SIZE) {
      throw new MalformedMessage("a complex message without a body");
    }
    const count = view.getUint32(at, true);
    at += BODY_SIZE;
    for (let i = 0; i < count; i++) {
      if (at + PORT_DESCRIPTOR_SIZE > size) {
        throw new MalformedMessage(`descriptor ${i} of ${count} is cut off`);
      }
      const type = view.getUint8(at + 11);
      if (type === MACH_MSG_PORT_DESCRIPTOR) {
        descriptors.push({
          type: "port",
          name: view.getUint32(at, true),
          disposition: view.getUint8(at + 10),
        });
        at += PORT_DESCRIPTOR_SIZE;
      } else if (
        type === MACH_MSG_OOL_DESCRIPTOR ||
        type === MACH_MSG_OOL_VOLATILE_DESCRIPTOR
      ) {
        if (at + OOL_DESCRIPTOR_SIZE > size) {
          throw new MalformedMessage(`descriptor ${i} of ${count} is cut off`);
        }
        descriptors.push({
          type: "ool",
          address: view.getBigUint64(at, true),
          deallocate: view.getUint8(at + 8) !== 0,
          copy: view.getUint8(at + 9),
          length: view.getUint32(at + 12, true),
        });
        at += OOL_DESCRIPTOR_SIZE;
      } else {
        // OOL ports (16 B) and guarded ports (16 B on 64-bit): never ours.
        descriptors.push({ type: "other", descriptorType: type });
        at += 16;
      }
    }
  }
  return {
    bits,
    size,
    remotePort: view.getUint32(8, true),
    localPort: view.getUint32(12, true),
    id: view.getInt32(20, true),
    complex,
    descriptors,
    dataOffset: at,
  };
}

/** A handle of a decoded frame: the right and what the sender says it is. */
export interface IncomingPort {
  name: number;
  /** `MACH_MSG_TYPE_PORT_RECEIVE` or `PORT_SEND`. */
  disposition: number;
  kind: HandleKind;
  length: number;
}

/** Our frame, decoded. */
export interface Frame {
  handles: IncomingPort[];
  /** The inline body, a view into the receive buffer (copy before reuse). */
  inline?: Uint8Array;
  /** The out-of-line body as the kernel mapped it (vm_deallocate it). */
  outOfLine?: { address: bigint; length: number };
}

/**
 * Decodes our frame from a parsed message. Throws
 * {@linkcode MalformedMessage} if it is not one of ours; the rights and memory
 * it carries are then listed by {@linkcode resourcesOf}.
 */
export function decodeFrame(bytes: Uint8Array, parsed: ParsedMessage): Frame {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = parsed.dataOffset;
  if (at + FRAME_HEADER > parsed.size) {
    throw new MalformedMessage("no room for a frame header");
  }
  if (view.getUint16(at, true) !== FRAME_MAGIC || view.getUint8(at + 3) !== 0) {
    throw new MalformedMessage("not a frame header");
  }
  const kind = view.getUint8(at + 2);
  const count = view.getUint32(at + 4, true);
  const length = view.getBigUint64(at + 8, true);
  at += FRAME_HEADER;
  const ports = parsed.descriptors.filter((d) => d.type === "port");
  const ools = parsed.descriptors.filter((d) => d.type === "ool");
  if (parsed.descriptors.some((d) => d.type === "other")) {
    throw new MalformedMessage("an unexpected descriptor type");
  }
  if (count !== ports.length) {
    throw new MalformedMessage(
      `the frame announces ${count} handles but ${ports.length} arrived`,
    );
  }
  // Port descriptors come first, then at most the body's OOL descriptor.
  for (let i = 0; i < ports.length; i++) {
    if (parsed.descriptors[i].type !== "port") {
      throw new MalformedMessage("descriptors out of order");
    }
  }
  if (at + FRAME_HANDLE * count > parsed.size) {
    throw new MalformedMessage("the handle table is cut off");
  }
  const handles: IncomingPort[] = [];
  for (let i = 0; i < count; i++) {
    const handleKind = view.getUint32(at, true);
    const handleLength = view.getBigUint64(at + 8, true);
    const port = ports[i] as { name: number; disposition: number };
    const expected = handleKind === HANDLE_RECEIVER
      ? MACH_MSG_TYPE_PORT_RECEIVE
      : MACH_MSG_TYPE_PORT_SEND;
    if (
      handleKind < HANDLE_SENDER || handleKind > HANDLE_SHARED_MEMORY ||
      port.disposition !== expected
    ) {
      throw new MalformedMessage(
        `handle ${i}: kind ${handleKind} with disposition ${port.disposition}`,
      );
    }
    if (handleLength > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new MalformedMessage(`handle ${i}: length ${handleLength}`);
    }
    handles.push({
      name: port.name,
      disposition: port.disposition,
      kind: handleKind as HandleKind,
      length: Number(handleLength),
    });
    at += FRAME_HANDLE;
  }
  if (kind === BODY_INLINE) {
    if (ools.length !== 0) {
      throw new MalformedMessage("an unexpected OOL region");
    }
    if (BigInt(at) + length > BigInt(parsed.size)) {
      throw new MalformedMessage(
        `the frame announces ${length} bytes but the message holds ${
          parsed.size - at
        }`,
      );
    }
    const end = at + Number(length);
    if (round4(end) !== parsed.size) {
      throw new MalformedMessage("trailing bytes after the body");
    }
    return { handles, inline: bytes.subarray(at, end) };
  }
  if (kind === BODY_OUT_OF_LINE) {
    const ool = ools[0];
    if (ools.length !== 1 || ool.type !== "ool") {
      throw new MalformedMessage("an out-of-line body without its region");
    }
    if (BigInt(ool.length) !== length) {
      throw new MalformedMessage(
        `the frame announces ${length} bytes but the region holds ${ool.length}`,
      );
    }
    return { handles, outOfLine: { address: ool.address, length: ool.length } };
  }
  throw new MalformedMessage(`unknown body kind ${kind}`);
}

/** Rights and memory a received message put in our space. */
export interface Resources {
  /** Names with the right each one gained (PORT_SEND, PORT_RECEIVE…). */
  rights: { name: number; disposition: number }[];
  /** Out-of-line regions now mapped in our space. */
  regions: { address: bigint; length: number }[];
}

/**
 * Everything a received message gave us: the reply right in the header and
 * every right and region in its descriptors. A receiver that rejects a
 * message releases exactly these (what `mach_msg_destroy` would do).
 */
export function resourcesOf(parsed: ParsedMessage): Resources {
  const rights: Resources["rights"] = [];
  const regions: Resources["regions"] = [];
  // A received header has remote = the reply port (our new right), local =
  // the port it arrived on (nothing new).
  const reply = parsed.bits & MACH_MSGH_BITS_REMOTE_MASK;
  if (parsed.remotePort !== MACH_PORT_NULL && reply !== 0) {
    rights.push({ name: parsed.remotePort, disposition: reply });
  }
  for (const d of parsed.descriptors) {
    if (d.type === "port" && d.name !== MACH_PORT_NULL) {
      rights.push({ name: d.name, disposition: d.disposition });
    } else if (d.type === "ool" && d.length > 0 && d.address !== 0n) {
      regions.push({ address: d.address, length: d.length });
    }
  }
  return { rights, regions };
}

/**
 * After a failed send: whether the kernel had copied the message in and then
 * "pseudo-received" it back into our buffer (MACH_SEND_TIMED_OUT,
 * MACH_SEND_INTERRUPTED, a destination that died during the send). It then
 * rewrote the header's remote disposition from the COPY_SEND we wrote to the
 * PORT_SEND (17) it copied back out, and every right and region in the
 * descriptors is ours again under the names the buffer now shows. XNU
 * `ipc_kmsg_copyout_pseudo`; inferred from the source, not yet seen on a Mac.
 */
export function wasPseudoReceived(bytes: Uint8Array): boolean {
  const bits = new DataView(bytes.buffer, bytes.byteOffset).getUint32(0, true);
  return (bits & MACH_MSGH_BITS_REMOTE_MASK) === MACH_MSG_TYPE_PORT_SEND;
}

// ---------------------------------------------------------------------------
// Notifications and trailers.

/** A kernel notification, from mach/notify.h. */
export type Notification =
  /** `mach_no_senders_notification_t`: the last send right is gone. */
  | { type: "no-senders"; port: number; makeSendCount: number }
  /** `mach_send_possible_notification_t`: the queue of `name` has room. */
  | { type: "send-possible"; name: number }
  /** `mach_dead_name_notification_t`: `name` became a dead name. */
  | { type: "dead-name"; name: number }
  /** `mach_port_deleted_notification_t`. */
  | { type: "port-deleted"; name: number }
  /** `mach_send_once_notification_t`: a send-once right died unused. */
  | { type: "send-once" };

/**
 * mach/notify.h: every notification is a header, then `NDR_record_t` (8 B),
 * then one 32-bit field (`not_count`, `not_port`) at offset 32.
 */
export const NOTIFY_FIELD_OFFSET = HEADER_SIZE + 8;

/**
 * Whether a message came through a send-once right: the local field of a
 * received header carries the right the sender used (mach/message.h
 * `MACH_MSGH_BITS_LOCAL`). Our notification requests give the kernel the
 * only send-once rights to our ports (`MAKE_SEND_ONCE`); peers hold send
 * rights, so a peer cannot forge a no-senders notification.
 */
export function viaSendOnce(parsed: ParsedMessage): boolean {
  return ((parsed.bits & MACH_MSGH_BITS_LOCAL_MASK) >>> 8) ===
    MACH_MSG_TYPE_PORT_SEND_ONCE;
}

/** The notification in a parsed message, or undefined if it is not one. */
export function parseNotification(
  bytes: Uint8Array,
  parsed: ParsedMessage,
): Notification | undefined {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const field = () => {
    if (parsed.size < NOTIFY_FIELD_OFFSET + 4) {
      throw new MalformedMessage(`notification ${parsed.id} is too short`);
    }
    return view.getUint32(NOTIFY_FIELD_OFFSET, true);
  };
  switch (parsed.id) {
    case MACH_NOTIFY_NO_SENDERS:
      return {
        type: "no-senders",
        port: parsed.localPort,
        makeSendCount: field(),
      };
    case MACH_NOTIFY_SEND_POSSIBLE:
      return { type: "send-possible", name: field() };
    case MACH_NOTIFY_DEAD_NAME:
      return { type: "dead-name", name: field() };
    case MACH_NOTIFY_PORT_DELETED:
      return { type: "port-deleted", name: field() };
    case MACH_NOTIFY_SEND_ONCE:
      return { type: "send-once" };
    default:
      return undefined;
  }
}

/** The sender of a message, from `audit_token_t` in the audit trailer. */
export interface AuditCredentials {
  pid: number;
  uid: number;
  gid: number;
}

/**
 * mach/message.h `mach_msg_audit_trailer_t`: `msgh_trailer_type` (u32) at 0,
 * `msgh_trailer_size` (u32) at 4, `msgh_seqno` at 8, `msgh_sender`
 * (`security_token_t`, 2 × u32) at 12, `msgh_audit` (`audit_token_t`,
 * 8 × u32) at 20. bsm/libbsm.h `audit_token_to_*`: val[1] is the effective
 * uid, val[2] the effective gid, val[5] the pid.
 */
export function parseAuditTrailer(
  bytes: Uint8Array,
  parsed: ParsedMessage,
): AuditCredentials {
  const at = round4(parsed.size);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (at + 8 > bytes.length) throw new MalformedMessage("no trailer");
  const trailerSize = view.getUint32(at + 4, true);
  if (
    trailerSize < AUDIT_TRAILER_SIZE || at + AUDIT_TRAILER_SIZE > bytes.length
  ) {
    throw new MalformedMessage(
      `a ${trailerSize}-byte trailer has no audit token`,
    );
  }
  const token = at + 20;
  return {
    uid: view.getUint32(token + 4 * 1, true),
    gid: view.getUint32(token + 4 * 2, true),
    pid: view.getInt32(token + 4 * 5, true),
  };
}

/** Options for a receive: LARGE (keep a big message queued), optional timeout, trailer. */
export function receiveOptions(
  timeout: boolean,
  audit: boolean,
): number {
  return (MACH_RCV_MSG | MACH_RCV_LARGE | (timeout ? MACH_RCV_TIMEOUT : 0) |
    MACH_RCV_TRAILER_FORMAT_0 |
    (audit ? MACH_RCV_TRAILER_AUDIT_ELEMENTS : 0)) >>> 0;
}

/**
 * After MACH_RCV_TOO_LARGE with MACH_RCV_LARGE, the kernel left the message
 * queued and wrote its size into `msgh_size`: the buffer to retry with.
 */
export function sizeNeeded(bytes: Uint8Array): number {
  const size = new DataView(bytes.buffer, bytes.byteOffset).getUint32(4, true);
  return round4(size) + MAX_TRAILER_SIZE;
}
