/**
 * The macOS message layer, checked on any OS against byte layouts worked out
 * by hand from XNU's headers (64-bit user space, `#pragma pack(4)` in
 * mach/message.h, little-endian). Each expected offset says where it comes
 * from.
 */
import {
  deepStrictEqual as assertEquals,
  equal,
  ok,
  throws,
} from "node:assert/strict";
import {
  AUDIT_TRAILER_SIZE,
  BODY_INLINE,
  BODY_OUT_OF_LINE,
  buildMessage,
  decodeFrame,
  FRAME_MAGIC,
  HANDLE_RECEIVER,
  HANDLE_SENDER,
  HANDLE_SHARED_MEMORY,
  MACH_MSG_OOL_DESCRIPTOR,
  MACH_MSG_PORT_DESCRIPTOR,
  MACH_MSG_TYPE_COPY_SEND,
  MACH_MSG_TYPE_MOVE_RECEIVE,
  MACH_MSG_TYPE_MOVE_SEND,
  MACH_MSG_TYPE_PORT_RECEIVE,
  MACH_MSG_TYPE_PORT_SEND,
  MACH_MSG_TYPE_PORT_SEND_ONCE,
  MACH_MSG_VIRTUAL_COPY,
  MACH_MSGH_BITS_COMPLEX,
  MACH_NOTIFY_DEAD_NAME,
  MACH_NOTIFY_NO_SENDERS,
  MACH_NOTIFY_SEND_ONCE,
  MACH_NOTIFY_SEND_POSSIBLE,
  MACH_RCV_INTERRUPTED,
  MACH_RCV_TIMED_OUT,
  MACH_RCV_TOO_LARGE,
  MACH_RCV_TRAILER_AUDIT_ELEMENTS,
  MACH_SEND_INTERRUPTED,
  MACH_SEND_INVALID_DEST,
  MACH_SEND_INVALID_RIGHT,
  MACH_SEND_NO_BUFFER,
  MACH_SEND_TIMED_OUT,
  MACH_SEND_TOO_LARGE,
  MalformedMessage,
  MAX_TRAILER_SIZE,
  messageSize,
  MSG_ID_DATA,
  parseAuditTrailer,
  parseMessage,
  parseNotification,
  receiveOptions,
  resourcesOf,
  sizeNeeded,
  viaSendOnce,
  wasPseudoReceived,
} from "../platform/macos_msg.ts";

const malformed = (e: unknown) => e instanceof MalformedMessage;

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * Rewrites a built message's header into what the receiver's kernel hands
 * over (XNU ipc_kmsg_copyout_header): the remote field becomes the reply
 * port (none here, so NULL with type 0) and the local field the port it
 * arrived on, typed MACH_MSGH_BITS(reply=0, local=PORT_SEND).
 */
function asReceived(bytes: Uint8Array, localPort: number): Uint8Array {
  const v = view(bytes);
  const complex = v.getUint32(0, true) & 0x80000000;
  v.setUint32(0, (complex | (MACH_MSG_TYPE_PORT_SEND << 8)) >>> 0, true);
  v.setUint32(8, 0, true);
  v.setUint32(12, localPort, true);
  return bytes;
}

Deno.test("constants match mach/message.h and mach/notify.h", () => {
  // mach/message.h: #define MACH_MSG_TYPE_MOVE_RECEIVE 16 … MAKE_SEND_ONCE 21
  equal(MACH_MSG_TYPE_MOVE_RECEIVE, 16);
  equal(MACH_MSG_TYPE_MOVE_SEND, 17);
  equal(MACH_MSG_TYPE_COPY_SEND, 19);
  // mach/message.h: MACH_MSG_TYPE_PORT_RECEIVE is MOVE_RECEIVE, PORT_SEND is
  // MOVE_SEND, PORT_SEND_ONCE is MOVE_SEND_ONCE (18).
  equal(MACH_MSG_TYPE_PORT_RECEIVE, 16);
  equal(MACH_MSG_TYPE_PORT_SEND, 17);
  equal(MACH_MSG_TYPE_PORT_SEND_ONCE, 18);
  // mach/message.h: #define MACH_MSGH_BITS_COMPLEX 0x80000000U
  equal(MACH_MSGH_BITS_COMPLEX, 0x80000000);
  // mach/notify.h: MACH_NOTIFY_FIRST 0100; NO_SENDERS = FIRST + 006 = 70,
  // SEND_POSSIBLE = FIRST + 002 = 66, SEND_ONCE = FIRST + 007 = 71,
  // DEAD_NAME = FIRST + 010 = 72.
  equal(MACH_NOTIFY_NO_SENDERS, 70);
  equal(MACH_NOTIFY_SEND_POSSIBLE, 66);
  equal(MACH_NOTIFY_SEND_ONCE, 71);
  equal(MACH_NOTIFY_DEAD_NAME, 72);
  // mach/message.h: sizeof(mach_msg_mac_trailer_t) = 68 (the max trailer);
  // sizeof(mach_msg_audit_trailer_t) = 8 + 4 + 8 + 32 = 52.
  equal(MAX_TRAILER_SIZE, 68);
  equal(AUDIT_TRAILER_SIZE, 52);
});

Deno.test("a plain inline message: header then frame, no body struct", () => {
  const body = new Uint8Array([1, 2, 3, 4, 5]);
  const message = {
    remotePort: 0x1303,
    remoteDisposition: MACH_MSG_TYPE_COPY_SEND,
    id: MSG_ID_DATA,
    ports: [],
    body: { inline: body },
  };
  // 24 (mach_msg_header_t) + 16 (frame header) + 5 (body) = 45, round_msg → 48
  equal(messageSize(message), 48);
  const bytes = new Uint8Array(64).fill(0xee);
  equal(buildMessage(bytes, message), 48);
  const v = view(bytes);
  // mach/message.h: mach_msg_header_t.msgh_bits at 0 (u32) =
  // MACH_MSGH_BITS(COPY_SEND, 0) = 19, not complex.
  equal(v.getUint32(0, true), 19);
  // mach_msg_header_t.msgh_size at 4 (u32)
  equal(v.getUint32(4, true), 48);
  // mach_msg_header_t.msgh_remote_port at 8 (mach_port_t = u32)
  equal(v.getUint32(8, true), 0x1303);
  // mach_msg_header_t.msgh_local_port at 12, msgh_voucher_port at 16: NULL
  equal(v.getUint32(12, true), 0);
  equal(v.getUint32(16, true), 0);
  // mach_msg_header_t.msgh_id at 20 (i32)
  equal(v.getUint32(20, true), 0x49500001);
  // our frame right after the 24-byte header
  equal(v.getUint16(24, true), FRAME_MAGIC);
  equal(bytes[26], BODY_INLINE);
  equal(v.getUint32(28, true), 0); // handle count
  equal(v.getBigUint64(32, true), 5n); // body length
  assertEquals([...bytes.subarray(40, 45)], [1, 2, 3, 4, 5]);
  assertEquals([...bytes.subarray(45, 48)], [0, 0, 0]); // padding to 4
  equal(bytes[48], 0xee); // nothing written past msgh_size

  const parsed = parseMessage(bytes.subarray(0, 48));
  equal(parsed.complex, false);
  equal(parsed.dataOffset, 24);
  const frame = decodeFrame(bytes, parsed);
  assertEquals([...frame.inline!], [1, 2, 3, 4, 5]);
  assertEquals(frame.handles, []);
});

Deno.test("port descriptors: senders, a receiver and shared memory", () => {
  const message = {
    remotePort: 0x2003,
    remoteDisposition: MACH_MSG_TYPE_COPY_SEND,
    id: MSG_ID_DATA,
    ports: [
      {
        name: 0x1103,
        disposition: MACH_MSG_TYPE_MOVE_SEND,
        kind: HANDLE_SENDER,
        length: 0,
      },
      {
        name: 0x1207,
        disposition: MACH_MSG_TYPE_MOVE_RECEIVE,
        kind: HANDLE_RECEIVER,
        length: 0,
      },
      {
        name: 0x1a0b,
        disposition: MACH_MSG_TYPE_COPY_SEND,
        kind: HANDLE_SHARED_MEMORY,
        length: 5 * 2 ** 32 + 7,
      },
    ] as const,
    body: { inline: new Uint8Array([9]) },
  };
  // 24 header + 4 mach_msg_body_t + 3 × 12 mach_msg_port_descriptor_t = 64;
  // frame 16 + 3 × 16 handle entries = 64; body 1 → 129, round_msg → 132.
  equal(messageSize(message), 132);
  const bytes = new Uint8Array(132);
  buildMessage(bytes, message);
  const v = view(bytes);
  // msgh_bits: MACH_MSGH_BITS_COMPLEX | COPY_SEND
  equal(v.getUint32(0, true), (0x80000000 | 19) >>> 0);
  // mach/message.h: mach_msg_body_t.msgh_descriptor_count at 24 (u32)
  equal(v.getUint32(24, true), 3);
  // mach_msg_port_descriptor_t at 28: name (u32) at +0, pad1 (u32) at +4,
  // then one u32 of bit-fields: pad2:16, disposition:8, type:8, so on a
  // little-endian ABI disposition is byte +10 and type byte +11.
  equal(v.getUint32(28, true), 0x1103);
  equal(v.getUint32(32, true), 0);
  equal(v.getUint16(36, true), 0);
  equal(bytes[38], MACH_MSG_TYPE_MOVE_SEND);
  equal(bytes[39], MACH_MSG_PORT_DESCRIPTOR);
  // second descriptor at 28 + 12 = 40
  equal(v.getUint32(40, true), 0x1207);
  equal(bytes[50], MACH_MSG_TYPE_MOVE_RECEIVE);
  // third at 52
  equal(v.getUint32(52, true), 0x1a0b);
  equal(bytes[62], MACH_MSG_TYPE_COPY_SEND);
  // frame at 64: handle table from 80, 16 bytes each (kind u32, 0, length u64)
  equal(v.getUint16(64, true), FRAME_MAGIC);
  equal(v.getUint32(68, true), 3);
  equal(v.getUint32(80, true), HANDLE_SENDER);
  equal(v.getUint32(96, true), HANDLE_RECEIVER);
  equal(v.getUint32(112, true), HANDLE_SHARED_MEMORY);
  equal(v.getBigUint64(120, true), 5n * 2n ** 32n + 7n);
  equal(bytes[128], 9);

  // What the receiver sees: the kernel rewrites dispositions to what the
  // right now is (MOVE_SEND/COPY_SEND → PORT_SEND) and names to ours.
  bytes[38] = MACH_MSG_TYPE_PORT_SEND;
  bytes[62] = MACH_MSG_TYPE_PORT_SEND;
  const parsed = parseMessage(asReceived(bytes, 0x2003));
  equal(parsed.localPort, 0x2003);
  equal(parsed.remotePort, 0);
  equal(parsed.descriptors.length, 3);
  const frame = decodeFrame(bytes, parsed);
  assertEquals(frame.handles, [
    { name: 0x1103, disposition: 17, kind: HANDLE_SENDER, length: 0 },
    { name: 0x1207, disposition: 16, kind: HANDLE_RECEIVER, length: 0 },
    {
      name: 0x1a0b,
      disposition: 17,
      kind: HANDLE_SHARED_MEMORY,
      length: 5 * 2 ** 32 + 7,
    },
  ]);
  assertEquals([...frame.inline!], [9]);
  assertEquals(resourcesOf(parsed), {
    rights: [
      { name: 0x1103, disposition: 17 },
      { name: 0x1207, disposition: 16 },
      { name: 0x1a0b, disposition: 17 },
    ],
    regions: [],
  });
});

Deno.test("an out-of-line body: mach_msg_ool_descriptor64_t after the ports", () => {
  const message = {
    remotePort: 0x707,
    remoteDisposition: MACH_MSG_TYPE_COPY_SEND,
    id: MSG_ID_DATA,
    ports: [{
      name: 0x303,
      disposition: MACH_MSG_TYPE_MOVE_SEND,
      kind: HANDLE_SENDER,
      length: 0,
    }] as const,
    body: { address: 0x1_2345_6000n, length: 1 << 20 },
  };
  // 24 + 4 + 12 (port) + 16 (OOL) = 56; frame 16 + 16 = 32 → 88.
  equal(messageSize(message), 88);
  const bytes = new Uint8Array(88);
  buildMessage(bytes, message);
  const v = view(bytes);
  equal(v.getUint32(24, true), 2); // msgh_descriptor_count: port + OOL
  // mach/message.h: mach_msg_ool_descriptor64_t at 40: address (u64) at +0,
  // then a u32 of bit-fields deallocate:8 copy:8 pad1:8 type:8 at +8
  // (bytes +8, +9, +10, +11), size (u32) at +12.
  equal(v.getBigUint64(40, true), 0x1_2345_6000n);
  equal(bytes[48], 0); // deallocate = FALSE: the sender keeps its buffer
  equal(bytes[49], MACH_MSG_VIRTUAL_COPY);
  equal(bytes[51], MACH_MSG_OOL_DESCRIPTOR);
  equal(v.getUint32(52, true), 1 << 20);
  // frame at 56: body kind 2, length = the region's size
  equal(bytes[58], BODY_OUT_OF_LINE);
  equal(v.getBigUint64(64, true), BigInt(1 << 20));

  bytes[38] = MACH_MSG_TYPE_PORT_SEND;
  // The receiver's kernel mapped the region elsewhere.
  v.setBigUint64(40, 0x7f00_0000_0000n, true);
  const parsed = parseMessage(bytes);
  const frame = decodeFrame(bytes, parsed);
  assertEquals(frame.outOfLine, {
    address: 0x7f00_0000_0000n,
    length: 1 << 20,
  });
  equal(frame.inline, undefined);
  assertEquals(resourcesOf(parsed).regions, [
    { address: 0x7f00_0000_0000n, length: 1 << 20 },
  ]);
});

Deno.test("malformed frames are refused, and their resources are still listed", () => {
  const message = {
    remotePort: 5,
    remoteDisposition: MACH_MSG_TYPE_COPY_SEND,
    id: MSG_ID_DATA,
    ports: [{
      name: 0x903,
      disposition: MACH_MSG_TYPE_MOVE_SEND,
      kind: HANDLE_RECEIVER, // a lie: the right is a send right
      length: 0,
    }] as const,
    body: { inline: new Uint8Array(3) },
  };
  const bytes = new Uint8Array(messageSize(message));
  buildMessage(bytes, message);
  bytes[38] = MACH_MSG_TYPE_PORT_SEND;
  const parsed = parseMessage(asReceived(bytes, 5));
  throws(() => decodeFrame(bytes, parsed), malformed);
  assertEquals(resourcesOf(parsed).rights, [{ name: 0x903, disposition: 17 }]);

  // A body length that runs past msgh_size
  const plain = new Uint8Array(48);
  buildMessage(plain, {
    remotePort: 5,
    remoteDisposition: MACH_MSG_TYPE_COPY_SEND,
    id: MSG_ID_DATA,
    ports: [],
    body: { inline: new Uint8Array(5) },
  });
  view(plain).setBigUint64(32, 500n, true);
  throws(() => decodeFrame(plain, parseMessage(plain)), malformed);
  // Wrong magic
  view(plain).setBigUint64(32, 5n, true);
  plain[24] = 0;
  throws(() => decodeFrame(plain, parseMessage(plain)), malformed);
  // msgh_size beyond the buffer
  view(plain).setUint32(4, 4096, true);
  throws(() => parseMessage(plain), malformed);
  // A descriptor count the message cannot hold
  const complex = new Uint8Array(32);
  view(complex).setUint32(0, 0x80000000, true);
  view(complex).setUint32(4, 32, true);
  view(complex).setUint32(24, 9, true);
  throws(() => parseMessage(complex), malformed);
});

/** A received kernel notification, laid out as mach/notify.h declares it. */
function notification(
  id: number,
  localPort: number,
  field: number,
): Uint8Array {
  // mach_no_senders_notification_t / mach_send_possible_notification_t /
  // mach_dead_name_notification_t: header (24), NDR_record_t (8), then
  // not_count / not_port (u32) at 32; msgh_size 36; then the trailer
  // (mach_msg_format_0_trailer_t, 8 B, the default).
  const bytes = new Uint8Array(36 + 8);
  const v = view(bytes);
  // The kernel sends it with a send-once right: remote NULL, local = port,
  // MACH_MSGH_BITS(0, MACH_MSG_TYPE_PORT_SEND_ONCE).
  v.setUint32(0, 18 << 8, true);
  v.setUint32(4, 36, true);
  v.setUint32(12, localPort, true);
  v.setInt32(20, id, true);
  v.setUint32(32, field, true);
  v.setUint32(36, 0, true); // msgh_trailer_type
  v.setUint32(40, 8, true); // msgh_trailer_size
  return bytes;
}

Deno.test("notifications: no-senders, send-possible, dead-name, send-once", () => {
  const noSenders = notification(70, 0x4403, 1);
  const parsed = parseMessage(noSenders);
  assertEquals(parseNotification(noSenders, parsed), {
    type: "no-senders",
    port: 0x4403,
    makeSendCount: 1,
  });
  // A notification gives us no right: its reply (remote) port is NULL.
  assertEquals(resourcesOf(parsed), { rights: [], regions: [] });
  const possible = notification(66, 0x99, 0x1203);
  assertEquals(parseNotification(possible, parseMessage(possible)), {
    type: "send-possible",
    name: 0x1203,
  });
  const dead = notification(72, 0x99, 0x1307);
  assertEquals(parseNotification(dead, parseMessage(dead)), {
    type: "dead-name",
    name: 0x1307,
  });
  const once = notification(71, 0x99, 0);
  assertEquals(parseNotification(once, parseMessage(once)), {
    type: "send-once",
  });
  // One of ours is not a notification.
  const ours = new Uint8Array(40);
  buildMessage(ours, {
    remotePort: 1,
    remoteDisposition: MACH_MSG_TYPE_COPY_SEND,
    id: MSG_ID_DATA,
    ports: [],
    body: { inline: new Uint8Array(0) },
  });
  equal(parseNotification(ours, parseMessage(ours)), undefined);
  // A truncated no-senders notification
  const short = notification(70, 1, 1);
  view(short).setUint32(4, 32, true);
  throws(() => parseNotification(short, parseMessage(short)), malformed);
});

Deno.test("the audit trailer gives pid, euid and egid", () => {
  // A 40-byte message (header + frame) followed by mach_msg_audit_trailer_t:
  // msgh_trailer_type at +0, msgh_trailer_size at +4 (52), msgh_seqno at +8,
  // msgh_sender (security_token_t) at +12, msgh_audit (audit_token_t) at +20.
  // bsm/libbsm.h: audit_token_to_euid = val[1], _to_egid = val[2],
  // _to_pid = val[5].
  const bytes = new Uint8Array(40 + AUDIT_TRAILER_SIZE);
  buildMessage(bytes, {
    remotePort: 1,
    remoteDisposition: MACH_MSG_TYPE_COPY_SEND,
    id: MSG_ID_DATA,
    ports: [],
    body: { inline: new Uint8Array(0) },
  });
  const v = view(bytes);
  v.setUint32(40 + 4, AUDIT_TRAILER_SIZE, true);
  const token = 40 + 20;
  const values = [501, 502, 20, 503, 21, 4242, 100007, 9];
  values.forEach((value, i) => v.setUint32(token + 4 * i, value, true));
  assertEquals(parseAuditTrailer(bytes, parseMessage(bytes)), {
    pid: 4242,
    uid: 502,
    gid: 20,
  });
  // A format-0 trailer (8 bytes) has no audit token.
  v.setUint32(40 + 4, 8, true);
  throws(() => parseAuditTrailer(bytes, parseMessage(bytes)), malformed);
});

Deno.test("receive options and MACH_RCV_LARGE sizes", () => {
  // mach/message.h: MACH_RCV_MSG 0x2, MACH_RCV_LARGE 0x4, MACH_RCV_TIMEOUT
  // 0x100; MACH_RCV_TRAILER_ELEMENTS(MACH_RCV_TRAILER_AUDIT=3) = 3 << 24.
  equal(receiveOptions(false, false), 0x6);
  equal(receiveOptions(true, false), 0x106);
  equal(receiveOptions(true, true), 0x0300_0106);
  equal(MACH_RCV_TRAILER_AUDIT_ELEMENTS, 0x0300_0000);
  // After MACH_RCV_TOO_LARGE the header's msgh_size holds the queued size.
  const header = new Uint8Array(24);
  view(header).setUint32(4, 70_001, true);
  equal(sizeNeeded(header), 70_004 + 68);
});

Deno.test("a pseudo-received message shows PORT_SEND as its remote disposition", () => {
  const bytes = new Uint8Array(40);
  buildMessage(bytes, {
    remotePort: 1,
    remoteDisposition: MACH_MSG_TYPE_COPY_SEND,
    id: MSG_ID_DATA,
    ports: [],
    body: { inline: new Uint8Array(0) },
  });
  ok(!wasPseudoReceived(bytes));
  // ipc_kmsg_copyin_header turns COPY_SEND (19) into PORT_SEND (17), and
  // ipc_kmsg_copyout_pseudo writes that back.
  view(bytes).setUint32(0, 17, true);
  ok(wasPseudoReceived(bytes));
});

Deno.test("buildMessage refuses a buffer that is too small", () => {
  throws(
    () =>
      buildMessage(new Uint8Array(40), {
        remotePort: 1,
        remoteDisposition: MACH_MSG_TYPE_COPY_SEND,
        id: MSG_ID_DATA,
        ports: [],
        body: { inline: new Uint8Array(100) },
      }),
    RangeError,
  );
});

Deno.test("a reply right in the header counts among the resources", () => {
  const bytes = new Uint8Array(40);
  buildMessage(bytes, {
    remotePort: 1,
    remoteDisposition: MACH_MSG_TYPE_COPY_SEND,
    id: MSG_ID_DATA,
    ports: [],
    body: { inline: new Uint8Array(0) },
  });
  asReceived(bytes, 0x33);
  // A peer that sets a reply port hands us a right we must release:
  // msgh_remote_port at 8, its type in msgh_bits & MACH_MSGH_BITS_REMOTE_MASK.
  const v = view(bytes);
  v.setUint32(0, v.getUint32(0, true) | MACH_MSG_TYPE_PORT_SEND_ONCE, true);
  v.setUint32(8, 0x5503, true);
  assertEquals(resourcesOf(parseMessage(bytes)).rights, [
    { name: 0x5503, disposition: MACH_MSG_TYPE_PORT_SEND_ONCE },
  ]);
});

Deno.test("the selector picks the backend of each OS, and none for others", async () => {
  const { selectBackend } = await import("../platform/mod.ts");
  const { macos } = await import("../platform/macos.ts");
  const { linux } = await import("../platform/linux.ts");
  const { windows } = await import("../platform/windows.ts");
  equal(selectBackend("darwin"), macos);
  equal(selectBackend("linux"), linux);
  equal(selectBackend("windows"), windows);
  equal(selectBackend("freebsd"), undefined);
  ok(macos !== linux && macos !== windows);
});

Deno.test("only a message through a send-once right can be a notification", () => {
  // mach/message.h MACH_MSGH_BITS_LOCAL(bits) = (bits & 0x1f00) >> 8: the
  // right the sender used, PORT_SEND_ONCE (18) for a kernel notification.
  const kernelMade = notification(70, 0x4403, 1);
  ok(viaSendOnce(parseMessage(kernelMade)));
  const forged = notification(70, 0x4403, 1);
  view(forged).setUint32(0, MACH_MSG_TYPE_PORT_SEND << 8, true);
  ok(!viaSendOnce(parseMessage(forged)));
});

Deno.test("mach_msg return codes are mach/message.h's", () => {
  // mach/message.h "Send errors" and "Receive errors", in header order;
  // MACH_SEND_TOO_LARGE was once written as 0x1000000a, which is
  // MACH_SEND_INVALID_RIGHT.
  equal(MACH_SEND_INVALID_DEST, 0x10000003);
  equal(MACH_SEND_TIMED_OUT, 0x10000004);
  equal(MACH_SEND_INTERRUPTED, 0x10000007);
  equal(MACH_SEND_INVALID_RIGHT, 0x1000000a);
  equal(MACH_SEND_NO_BUFFER, 0x1000000d);
  equal(MACH_SEND_TOO_LARGE, 0x1000000e);
  equal(MACH_RCV_TIMED_OUT, 0x10004003);
  equal(MACH_RCV_TOO_LARGE, 0x10004004);
  equal(MACH_RCV_INTERRUPTED, 0x10004005);
});
