import {
  deepStrictEqual as assertEquals,
  equal,
  ok,
  throws,
} from "node:assert/strict";
import {
  channel,
  IpcError,
  IpcOneShotServer,
  type IpcSender,
  IpcSharedMemory,
} from "../mod.ts";
import {
  cString,
  F_ADD_SEALS,
  F_SEAL_GROW,
  libc,
  MFD_ALLOW_SEALING,
  MFD_CLOEXEC,
} from "../ffi/libc.ts";
import { LinuxSharedMemory } from "../platform/linux_shm.ts";
import { fixture, onLinux, runFixture, settled } from "./helpers.ts";

function isClosed(error: unknown): boolean {
  return error instanceof IpcError && error.kind === "Closed";
}

Deno.test("fromBytes, fromByte, length and a live bytes view", () => {
  using a = IpcSharedMemory.fromBytes(new Uint8Array([1, 2, 3]));
  equal(a.length, 3);
  assertEquals([...a.bytes], [1, 2, 3]);
  a.bytes[1] = 20;
  equal(a.bytes[1], 20);
  using b = IpcSharedMemory.fromByte(0xab, 10000);
  equal(b.length, 10000);
  ok(b.bytes.every((x) => x === 0xab));
  using z = IpcSharedMemory.fromByte(0, 5);
  ok(z.bytes.every((x) => x === 0));
  throws(() => IpcSharedMemory.fromByte(256, 1), RangeError);
  throws(() => IpcSharedMemory.fromByte(1, -1), RangeError);
});

Deno.test("take() copies and releases; close() makes bytes throw Closed", () => {
  const shm = IpcSharedMemory.fromBytes(new Uint8Array([4, 5, 6]));
  const view = shm.bytes;
  const copy = shm.take();
  assertEquals([...copy], [4, 5, 6]);
  throws(() => shm.bytes, isClosed);
  throws(() => shm.take(), isClosed);
  // A view kept from before stays readable (the mapping outlives it).
  assertEquals([...view], [4, 5, 6]);
  view[0] = 1; // not the channel's business any more, but no crash
  equal(copy[0], 4);
  shm.close();

  const other = IpcSharedMemory.fromByte(9, 4);
  const kept = other.bytes;
  other.close();
  other.close();
  throws(() => other.bytes, isClosed);
  equal(kept[3], 9);
  equal(other.length, 4);
});

Deno.test("fromBytes sizes the region from the real bytes, and refuses what is not usable bytes", () => {
  const small = new Uint8Array([1, 2, 3]);
  Object.defineProperty(small, "length", { get: () => 1 << 20 });
  using shm = IpcSharedMemory.fromBytes(small);
  equal(shm.length, 3, "not the 1 MiB its length property claims");
  assertEquals(shm.take(), new Uint8Array([1, 2, 3]));
  const detached = new Uint8Array(4);
  structuredClone(detached.buffer, { transfer: [detached.buffer] });
  const notBytes = [
    [1, 2],
    new Uint16Array(2),
    new Proxy(new Uint8Array(2), {}),
    detached,
  ];
  for (const [index, bad] of notBytes.entries()) {
    throws(
      () => IpcSharedMemory.fromBytes(bad as Uint8Array),
      (error: unknown) => error instanceof TypeError,
      `bad bytes ${index}`,
    );
  }
});

Deno.test("zero-length regions work and travel", async () => {
  const [tx, rx] = channel<IpcSharedMemory>();
  using empty = IpcSharedMemory.fromBytes(new Uint8Array(0));
  equal(empty.length, 0);
  equal(empty.bytes.length, 0);
  tx.send(empty);
  using got = await rx.recv();
  equal(got.length, 0);
  equal(got.bytes.length, 0);
  assertEquals(got.take(), new Uint8Array(0));
  tx.close();
  rx.close();
  await settled();
});

Deno.test("shared memory travels at any depth and shares its pages", async () => {
  const [tx, rx] = channel<{ a: [{ b: Map<string, IpcSharedMemory> }] }>();
  const shm = IpcSharedMemory.fromByte(1, 65536);
  tx.send({ a: [{ b: new Map([["x", shm]]) }] });
  // Still usable here after sending.
  shm.bytes[0] = 2;
  const got = (await rx.recv()).a[0].b.get("x")!;
  equal(got.length, 65536);
  equal(got.bytes[0], 2);
  got.bytes[65535] = 77;
  equal(shm.bytes[65535], 77);
  // The same region twice in one message arrives as two handles.
  tx.send({ a: [{ b: new Map([["x", shm], ["y", shm]]) }] });
  const twice = (await rx.recv()).a[0].b;
  twice.get("x")!.bytes[5] = 55;
  equal(twice.get("y")!.bytes[5], 55);
  for (const end of [shm, got, twice.get("x")!, twice.get("y")!, tx, rx]) {
    end.close();
  }
  await settled();
});

Deno.test("sending a closed region throws Closed and sends nothing", async () => {
  const [tx, rx] = channel<IpcSharedMemory>();
  const shm = IpcSharedMemory.fromByte(1, 8);
  shm.close();
  throws(() => tx.send(shm), isClosed);
  throws(
    () => rx.tryRecv(),
    (e) => e instanceof IpcError && e.kind === "Empty",
  );
  tx.close();
  rx.close();
  await settled();
});

Deno.test("a queued send owns a duplicate: closing the region after send is fine", async () => {
  const [tx, rx] = channel<Uint8Array | IpcSharedMemory>();
  const filler = new Uint8Array(60000);
  while (tx.bufferedAmount === 0) tx.send(filler);
  const shm = IpcSharedMemory.fromByte(42, 3000);
  tx.send(shm);
  ok(tx.bufferedAmount > 0);
  shm.close();
  let region: IpcSharedMemory | undefined;
  while (region === undefined) {
    const value = await rx.recv();
    if (value instanceof IpcSharedMemory) region = value;
  }
  equal(region.length, 3000);
  ok(region.bytes.every((x) => x === 42));
  region.close();
  tx.close();
  rx.close();
  await settled();
});

// Linux only: memfd seals (Windows sections carry their size in the frame).
Deno.test({
  ...onLinux(
    "a received descriptor must be a memfd sealed against shrinking",
    "memfd seals (Windows sections carry their size in the frame)",
  ),
}, () => {
  const lc = libc();
  const fd = lc.memfd_create(
    cString("unsealed"),
    MFD_CLOEXEC | MFD_ALLOW_SEALING,
  );
  lc.ftruncate(fd, 4096n);
  throws(
    () => LinuxSharedMemory.adopt(fd),
    (e) => e instanceof IpcError && e.kind === "Io",
  );
  const sealed = lc.memfd_create(
    cString("sealed"),
    MFD_CLOEXEC | MFD_ALLOW_SEALING,
  );
  lc.ftruncate(sealed, 4096n);
  lc.fcntl(sealed, F_ADD_SEALS, 2 /* SHRINK */ | F_SEAL_GROW);
  const adopted = LinuxSharedMemory.adopt(sealed);
  equal(adopted.length, 4096);
  adopted.close();
  const pair = new Int32Array(2);
  lc.socketpair(1, 5, 0, new Uint8Array(pair.buffer));
  throws(() => LinuxSharedMemory.adopt(pair[0]));
  lc.close(pair[1]);
});

Deno.test("another process maps the region: writes are seen both ways", async () => {
  type Down = {
    regions: [
      IpcSharedMemory,
      { deep: { shm: IpcSharedMemory } },
      IpcSharedMemory,
    ];
  };
  type Up =
    | { kind: "hello"; down: IpcSender<Down> }
    | {
      kind: "done";
      lengths: number[];
      first: number[];
      fresh: IpcSharedMemory;
    };
  using server = new IpcOneShotServer<Up>();
  const child = runFixture("shm_child.ts", { args: [server.name] });
  const [upRx, hello] = await server.accept();
  if (hello.kind !== "hello") throw new Error("expected hello");
  const a = IpcSharedMemory.fromByte(10, 1 << 20);
  const b = IpcSharedMemory.fromBytes(new Uint8Array([3, 1, 4, 1, 5]));
  const empty = IpcSharedMemory.fromByte(0, 0);
  hello.down.send({ regions: [a, { deep: { shm: b } }, empty] });
  const done = await upRx.recv();
  if (done.kind !== "done") throw new Error("expected done");
  assertEquals(done.lengths, [1 << 20, 5, 0]);
  assertEquals(done.first, [3, 5]);
  ok(a.bytes.every((x) => x === 11), "the child's writes are visible here");
  assertEquals([...done.fresh.bytes], [7, 7, 7]);
  const status = await child.output();
  equal(status.code, 0, new TextDecoder().decode(status.stderr));
  for (const end of [a, b, empty, done.fresh, hello.down, upRx]) end.close();
  await settled();
});

// Linux only: the child reads /proc/self/maps.
Deno.test({
  ...onLinux(
    "mappings are released once no view can reach them",
    "the child reads /proc/self/maps",
  ),
}, async () => {
  const output = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      // Deno asks for --allow-all to read /proc/self/maps.
      "--allow-all",
      "--v8-flags=--expose-gc",
      fixture("shm_gc_child.ts"),
    ],
    stdin: "null",
  }).output();
  const stderr = new TextDecoder().decode(output.stderr);
  equal(output.code, 0, stderr);
  const result = JSON.parse(new TextDecoder().decode(output.stdout));
  equal(result.before, 8); // nothing is unmapped at close()
  equal(result.keptByte, 4);
  equal(result.transferredByte, 6);
  equal(result.after, 0);
  equal(result.reread, 0);
});
