/**
 * Issue 2, point 1: what a message can hold, and what it refuses.
 */

import { deepStrictEqual, equal, ok, throws } from "node:assert/strict";
import {
  bytesChannel,
  channel,
  IpcBytesReceiver,
  IpcBytesSender,
  IpcReceiver,
  IpcSender,
  OpaqueIpcReceiver,
  OpaqueIpcSender,
} from "../mod.ts";
import { fdBaseline, fdTest, ipcError, openFds, settled } from "./helpers.ts";

/** Sends `value` through a fresh channel and returns what arrives. */
async function roundTrip<T>(value: T): Promise<T> {
  const [tx, rx] = channel<T>();
  try {
    tx.send(value);
    return await rx.recv();
  } finally {
    tx.close();
    rx.close();
  }
}

Deno.test("primitives round-trip", async () => {
  for (
    const value of [
      null,
      true,
      false,
      0,
      1,
      -1,
      255,
      256,
      65_536,
      2 ** 31,
      2 ** 32 + 1,
      Number.MAX_SAFE_INTEGER,
      Number.MIN_SAFE_INTEGER,
      -(2 ** 31),
      0.5,
      Math.PI,
      -1e-300,
      Number.MAX_VALUE,
      Number.MIN_VALUE,
      "",
      "hello",
      "ünïcødé 🦕 \u0000 nul",
      "x".repeat(100_000),
    ]
  ) {
    const back = await roundTrip(value);
    ok(
      Object.is(back, value),
      `${String(value).slice(0, 40)} came back as ${String(back).slice(0, 40)}`,
    );
  }
  await settled();
});

Deno.test("undefined round-trips, alone and inside objects and arrays", async () => {
  equal(await roundTrip(undefined), undefined);
  const back = await roundTrip({ a: undefined, b: [undefined, 1] });
  ok("a" in back, "the key holding undefined survives");
  equal(back.a, undefined);
  deepStrictEqual(back.b, [undefined, 1]);
  await settled();
});

Deno.test("NaN, -0, +Infinity and -Infinity survive (Object.is)", async () => {
  for (const value of [NaN, -0, Infinity, -Infinity]) {
    const back = await roundTrip(value);
    ok(
      Object.is(back, value),
      `${Object.is(value, -0) ? "-0" : value} came back as ${
        Object.is(back, -0) ? "-0" : back
      }`,
    );
  }
  const nested = await roundTrip({
    z: -0,
    list: [-0, 0, NaN],
    m: new Map([[-0, -0]]),
  });
  ok(Object.is(nested.z, -0), "-0 inside an object");
  ok(Object.is(nested.list[0], -0), "-0 inside an array");
  ok(Object.is(nested.list[1], 0), "0 stays +0");
  ok(Number.isNaN(nested.list[2]));
  ok(Object.is([...nested.m.values()][0], -0), "-0 as a Map value");
  await settled();
});

Deno.test("bigints round-trip, small and beyond 64 bits", async () => {
  for (
    const value of [
      0n,
      1n,
      -1n,
      2n ** 53n + 1n,
      2n ** 63n - 1n,
      -(2n ** 63n),
      2n ** 64n - 1n,
      2n ** 64n,
      2n ** 100n + 12345n,
      -(2n ** 100n) - 7n,
      3n ** 300n,
    ]
  ) {
    const back = await roundTrip(value);
    equal(typeof back, "bigint", `${value} came back as ${typeof back}`);
    equal(back, value);
  }
  // Numbers must stay numbers even when they are large integers.
  equal(typeof await roundTrip(2 ** 60), "number");
  await settled();
});

Deno.test("nested arrays and plain objects round-trip", async () => {
  const value = {
    a: [1, [2, [3, [4, { deep: ["x", { deeper: [null, true] }] }]]]],
    empty: {},
    emptyArray: [],
    "key with spaces": 1,
    "123": "numeric-looking key",
    nested: { nested: { nested: { nested: { leaf: "ok" } } } },
  };
  deepStrictEqual(await roundTrip(value), value);
  const nullProto = Object.assign(Object.create(null), { x: 1 });
  deepStrictEqual({ ...(await roundTrip(nullProto)) }, { x: 1 });
  // A deep but finite structure (well under any depth limit) is not "circular".
  let chain: unknown = "bottom";
  for (let i = 0; i < 100; i++) chain = [chain];
  deepStrictEqual(await roundTrip(chain), chain);
  await settled();
});

Deno.test("Map, Set and Date round-trip with their types", async () => {
  const map = new Map<unknown, unknown>([
    ["s", 1],
    [2, "two"],
    [true, null],
    ["nested", new Map([["k", new Set([1, 2])]])],
  ]);
  const back = await roundTrip(map);
  ok(back instanceof Map, "a Map comes back as a Map");
  deepStrictEqual(back, map);
  equal(back.get(2), "two", "a number key stays a number");

  const emptyMap = await roundTrip(new Map());
  ok(emptyMap instanceof Map && emptyMap.size === 0);

  const set = new Set<unknown>([1, "a", null, 2n]);
  const setBack = await roundTrip(set);
  ok(setBack instanceof Set);
  deepStrictEqual(setBack, set);

  for (const date of [new Date(0), new Date(1_700_000_000_123), new Date(-1)]) {
    const dateBack = await roundTrip(date);
    ok(dateBack instanceof Date);
    equal(dateBack.getTime(), date.getTime());
  }
  const invalid = await roundTrip(new Date(NaN));
  ok(invalid instanceof Date && Number.isNaN(invalid.getTime()));

  const mixed = await roundTrip({
    when: new Date(5),
    tags: new Set(["x"]),
    index: new Map([["a", [new Date(7)]]]),
  });
  ok(mixed.when instanceof Date && mixed.when.getTime() === 5);
  ok(mixed.tags instanceof Set && mixed.tags.has("x"));
  ok(mixed.index.get("a")![0] instanceof Date);
  await settled();
});

const TYPED_ARRAYS = [
  Int8Array,
  Uint8Array,
  Uint8ClampedArray,
  Int16Array,
  Uint16Array,
  Int32Array,
  Uint32Array,
  Float32Array,
  Float64Array,
  BigInt64Array,
  BigUint64Array,
] as const;

function filled(Kind: (typeof TYPED_ARRAYS)[number], length: number) {
  const array = new Kind(length);
  for (let i = 0; i < length; i++) {
    const n = (i * 37 + 11) % 251 - 100;
    if (array instanceof BigInt64Array) array[i] = BigInt(n) * 2n ** 40n;
    else if (array instanceof BigUint64Array) {
      array[i] = BigInt(Math.abs(n)) * 2n ** 50n;
    } else {(array as Float64Array)[i] = n /
        (Kind === Float32Array || Kind === Float64Array ? 4 : 1);}
  }
  return array;
}

Deno.test("every typed array kind round-trips with its type and contents", async () => {
  for (const Kind of TYPED_ARRAYS) {
    for (const length of [0, 1, 7, 1000]) {
      const array = filled(Kind, length);
      const back = await roundTrip(array);
      equal(
        Object.getPrototypeOf(back),
        Kind.prototype,
        `${Kind.name}(${length}) came back as ${back?.constructor?.name}`,
      );
      deepStrictEqual(back, array);
    }
  }
  await settled();
});

Deno.test("a typed array that is a view into a larger buffer sends only its view", async () => {
  const buffer = new ArrayBuffer(64);
  new Uint8Array(buffer).fill(0xee);
  const view = new Uint16Array(buffer, 8, 4);
  view.set([1, 2, 3, 4]);
  const back = await roundTrip({ view });
  ok(back.view instanceof Uint16Array);
  deepStrictEqual([...back.view], [1, 2, 3, 4]);
  const bytes = new Uint8Array(buffer, 3, 5);
  const bytesBack = await roundTrip(bytes);
  deepStrictEqual([...bytesBack], [0xee, 0xee, 0xee, 0xee, 0xee]);
  await settled();
});

Deno.test("Float16Array round-trips (a typed array kind of this runtime)", async () => {
  // deno-lint-ignore no-explicit-any
  const Float16 = (globalThis as any).Float16Array;
  if (Float16 === undefined) return;
  const array = new Float16([0.5, -2, 1024, Infinity]);
  const back = await roundTrip(array);
  equal(Object.getPrototypeOf(back), Float16.prototype);
  deepStrictEqual([...back], [0.5, -2, 1024, Infinity]);
  await settled();
});

Deno.test("ArrayBuffer and DataView round-trip", async () => {
  const buffer = new Uint8Array([1, 2, 3, 250]).buffer;
  const back = await roundTrip(buffer);
  ok(
    back instanceof ArrayBuffer,
    `ArrayBuffer came back as ${back?.constructor?.name}`,
  );
  deepStrictEqual([...new Uint8Array(back)], [1, 2, 3, 250]);
  const empty = await roundTrip(new ArrayBuffer(0));
  ok(empty instanceof ArrayBuffer && empty.byteLength === 0);

  const dv = new DataView(new ArrayBuffer(16), 4, 8);
  dv.setFloat64(0, -1.5);
  const dvBack = await roundTrip({ dv });
  ok(
    dvBack.dv instanceof DataView,
    `DataView came back as ${dvBack.dv?.constructor?.name}`,
  );
  equal(dvBack.dv.byteLength, 8);
  equal(dvBack.dv.getFloat64(0), -1.5);
  await settled();
});

Deno.test("received buffers are independent copies the receiver owns", async () => {
  const [tx, rx] = channel<Uint8Array>();
  const data = new Uint8Array([1, 2, 3]);
  tx.send(data);
  data[0] = 99; // the caller may reuse its buffer at once
  tx.send(new Uint8Array([4, 5, 6]));
  const first = await rx.recv();
  const second = await rx.recv();
  deepStrictEqual([...first], [1, 2, 3]);
  deepStrictEqual([...second], [4, 5, 6]);
  first[0] = 7;
  equal(second[0], 4, "two messages do not share memory");
  tx.close();
  rx.close();
  await settled();
});

Deno.test("what recvSync and tryRecv decode outlives the next receive", async () => {
  // Bodies above the batching size arrive one per packet, each decoded
  // straight from the receive buffer: nothing decoded may alias it.
  interface Big {
    bytes: Uint8Array;
    floats: Float64Array;
    raw: ArrayBuffer;
    text: string;
  }
  const big = (fill: number): Big => ({
    bytes: new Uint8Array(16 * 1024).fill(fill),
    floats: new Float64Array(1024).fill(fill),
    raw: new Uint8Array(4096).fill(fill).buffer,
    text: String.fromCharCode(0x61 + fill).repeat(10_000),
  });
  const check = (got: Big, fill: number) => {
    equal(got.bytes.byteOffset, 0);
    equal(got.bytes.buffer.byteLength, got.bytes.length);
    ok(got.bytes.every((b) => b === fill));
    ok(got.floats.every((f) => f === fill));
    ok(new Uint8Array(got.raw).every((b) => b === fill));
    equal(got.text, String.fromCharCode(0x61 + fill).repeat(10_000));
  };
  const [tx, rx] = channel<Big>();
  for (let i = 1; i <= 4; i++) tx.send(big(i));
  const first = rx.recvSync();
  const second = rx.tryRecv();
  const third = rx.recvSync();
  const fourth = rx.tryRecv();
  check(first, 1);
  check(second, 2);
  check(third, 3);
  check(fourth, 4);
  tx.close();
  rx.close();
  await settled();
});

Deno.test("endpoints of all six kinds travel at depth and work on arrival", async () => {
  const [tx, rx] = channel<{
    level: {
      list: [IpcSender<string>, IpcReceiver<string>];
      map: Map<string, unknown>;
    };
    bytes: { s: IpcBytesSender; r: IpcBytesReceiver };
    opaque: [[OpaqueIpcSender, OpaqueIpcReceiver]];
  }>();
  const [aTx, aRx] = channel<string>();
  const [bTx, bRx] = channel<string>();
  const [cTx, cRx] = bytesChannel();
  const [dTx, dRx] = bytesChannel();
  const [eTx, eRx] = channel<number>();
  const [fTx, fRx] = channel<number>();
  tx.send({
    level: {
      list: [aTx, bRx],
      map: new Map<string, unknown>([["deep", {
        s: new Set([0]),
        e: [[[cTx]]],
      }]]),
    },
    bytes: { s: dTx, r: cRx },
    opaque: [[eTx.toOpaque(), fRx.toOpaque()]],
  });
  const got = await rx.recv();
  const [gotA, gotBRx] = got.level.list;
  ok(gotA instanceof IpcSender);
  ok(gotBRx instanceof IpcReceiver);
  ok(got.bytes.s instanceof IpcBytesSender);
  ok(got.bytes.r instanceof IpcBytesReceiver);
  ok(got.opaque[0][0] instanceof OpaqueIpcSender);
  ok(got.opaque[0][1] instanceof OpaqueIpcReceiver);
  const deep = got.level.map.get("deep") as { e: IpcBytesSender[][][] };
  ok(deep.e[0][0][0] instanceof IpcBytesSender);

  gotA.send("via received sender");
  equal(await aRx.recv(), "via received sender");
  bTx.send("into received receiver");
  equal(await gotBRx.recv(), "into received receiver");
  deep.e[0][0][0].send(new Uint8Array([9]));
  deepStrictEqual([...(await got.bytes.r.recv())], [9]);
  got.bytes.s.send(new Uint8Array([8]));
  deepStrictEqual([...(await dRx.recv())], [8]);
  const typedE = got.opaque[0][0].to<number>();
  typedE.send(5);
  equal(await eRx.recv(), 5);
  const typedF = got.opaque[0][1].to<number>();
  fTx.send(6);
  equal(await typedF.recv(), 6);

  for (
    const end of [
      tx,
      rx,
      aTx,
      aRx,
      bTx,
      bRx,
      cTx,
      cRx,
      dTx,
      dRx,
      eTx,
      eRx,
      fTx,
      fRx,
      gotA,
      gotBRx,
      got.bytes.s,
      got.bytes.r,
      deep.e[0][0][0],
      typedE,
      typedF,
    ]
  ) end.close();
  await settled();
});

class Point {
  constructor(public x: number) {}
}

/** `binary` with an own `byteLength` that claims 200 bytes. */
function lying<T extends object>(binary: T): T {
  return Object.defineProperty(binary, "byteLength", { get: () => 200 });
}

Deno.test("unsendable values throw Serialization and send nothing", async () => {
  const circular: Record<string, unknown> = { a: 1 };
  circular.self = circular;
  const circularArray: unknown[] = [];
  circularArray.push({ back: circularArray });
  const cases: [string, unknown][] = [
    ["a function", () => 1],
    ["a function deep inside", {
      a: [{ b: new Map([["c", function named() {}]]) }],
    }],
    ["a symbol", Symbol("s")],
    ["a symbol in an array", [1, Symbol.iterator]],
    ["a class instance", new Point(1)],
    ["a class instance inside a Set", new Set([new Point(2)])],
    ["a circular object", circular],
    ["a circular array", circularArray],
    ["a RegExp", /x/],
    ["a WeakMap", new WeakMap()],
    ["a Promise", Promise.resolve(1)],
    ["an Error", new Error("x")],
    // Binary values that lie about their size, or imitate one: msgpackr
    // would size the frame by the lie and fill it with stale bytes.
    ["an ArrayBuffer with its own byteLength", lying(new ArrayBuffer(1))],
    ["a typed array with its own byteLength", lying(new Int16Array(1))],
    [
      "a DataView with its own byteLength",
      lying(new DataView(new ArrayBuffer(1))),
    ],
    [
      "a Uint8Array with its own constructor",
      Object.defineProperty(new Uint8Array(2), "constructor", {
        value: Float64Array,
      }),
    ],
    ["a Proxy of a typed array", new Proxy(new Float32Array(2), {})],
    ["a Proxy of a DataView", new Proxy(new DataView(new ArrayBuffer(2)), {})],
    ["an imitation of an ArrayBuffer", Object.create(ArrayBuffer.prototype)],
  ];
  const [tx, rx] = channel<unknown>();
  for (const [what, value] of cases) {
    throws(() => tx.send(value), ipcError("Serialization"), what);
    throws(() => rx.tryRecv(), ipcError("Empty"), `${what}: nothing was sent`);
  }
  // The channel still works after all those refusals.
  tx.send("fine");
  equal(await rx.recv(), "fine");
  throws(() => rx.tryRecv(), ipcError("Empty"));
  tx.close();
  rx.close();
  await settled();
});

fdTest(
  import.meta,
  "a refused message leaves the endpoints inside it untouched",
  async () => {
    const before = await fdBaseline();
    const [tx, rx] = channel<unknown>();
    const [innerTx, innerRx] = channel<string>();
    throws(
      () => tx.send({ innerRx, innerTx, bad: () => 0 }),
      ipcError("Serialization"),
    );
    throws(() => rx.tryRecv(), ipcError("Empty"));
    // The receiver was not detached by the failed send.
    innerTx.send("still mine");
    equal(await innerRx.recv(), "still mine");
    for (const end of [tx, rx, innerTx, innerRx]) end.close();
    equal(openFds(), before, "no descriptor was duplicated or leaked");
    await settled();
  },
);

Deno.test("bytes channels refuse what is not a Uint8Array", () => {
  const [tx, rx] = bytesChannel();
  throws(
    () => tx.send("text" as unknown as Uint8Array),
    ipcError("Serialization"),
  );
  throws(
    () => tx.send(new Uint16Array(2) as unknown as Uint8Array),
    ipcError("Serialization"),
  );
  // Passes `instanceof` without being a Uint8Array.
  for (
    const fake of [
      new Proxy(new Uint8Array(2), {}),
      Object.create(Uint8Array.prototype),
    ]
  ) {
    throws(() => tx.send(fake), ipcError("Serialization"));
  }
  const detached = new Uint8Array(8);
  structuredClone(detached.buffer, { transfer: [detached.buffer] });
  throws(() => tx.send(detached), ipcError("Serialization"));
  throws(() => rx.tryRecv(), ipcError("Empty"));
  tx.close();
  rx.close();
});

Deno.test("bytes channels send a Uint8Array's real bytes whatever its length property says", () => {
  const [tx, rx] = bytesChannel();
  // Sizes on both sides of the staging and inline limits: the platform hands
  // the body's address and length to the kernel, which must not read past it.
  for (const size of [16, 5_000, 100_000, 300_000]) {
    const real = new Uint8Array(size).fill(7);
    Object.defineProperty(real, "length", { get: () => size * 3 });
    tx.send(real);
    const got = rx.recvSync();
    equal(got.length, size, `${size}: own length property`);
    ok(got.every((byte) => byte === 7), `${size}: content`);
    class Longer extends Uint8Array {
      override get length(): number {
        return size * 3;
      }
      override subarray(): Uint8Array<ArrayBuffer> {
        return new Uint8Array(size * 3);
      }
    }
    const sub = new Longer(size).fill(9);
    tx.send(sub);
    const again = rx.recvSync();
    equal(again.length, size, `${size}: subclass`);
    ok(again.every((byte) => byte === 9), `${size}: subclass content`);
  }
  tx.close();
  rx.close();
});
