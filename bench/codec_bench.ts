/**
 * The message codec against the alternatives, encode and decode apart:
 * our `Codec` (msgpackr plus the checking walk and endpoint extensions),
 * msgpackr's `Packr` with the same options, JSON (through UTF-8 bytes, as a
 * channel would carry it) and `node:v8` structured serialization.
 *
 * Run: `deno bench bench/codec_bench.ts`
 *
 * @module
 */

// The same specifier as serde/codec.ts, so both share one msgpackr instance.
// deno-lint-ignore no-import-prefix
import { Packr } from "npm:msgpackr@^1.12.1/pack";
import { deserialize, serialize } from "node:v8";
import { Codec } from "../serde/codec.ts";

// Codec registers msgpackr extensions globally in its constructor: one only.
const codec = new Codec<never, { close(): void }>([]);
// The options Codec uses, without its walk and extensions.
const packr = new Packr({
  useRecords: false,
  moreTypes: true,
  int64AsType: "bigint",
  copyBuffers: true,
});

const encoder = new TextEncoder();
const decoder = new TextDecoder();

interface Small {
  id: number;
  name: string;
  ok: boolean;
  ratio: number;
  bytes: Uint8Array;
}

const SMALL: Small = {
  id: 42,
  name: "sensor-7",
  ok: true,
  ratio: 0.25,
  bytes: new Uint8Array(64).map((_, i) => i),
};

const BIG = { id: 1, data: new Uint8Array(64 * 1024).map((_, i) => i & 0xff) };

// JSON cannot carry a Uint8Array as such: the small object's 64 bytes go as a
// number array (what a naive port does), the 64 KiB payload as base64.
function jsonEncodeSmall(value: Small): Uint8Array {
  return encoder.encode(
    JSON.stringify({ ...value, bytes: Array.from(value.bytes) }),
  );
}

function jsonDecodeSmall(bytes: Uint8Array): Small {
  const parsed = JSON.parse(decoder.decode(bytes));
  parsed.bytes = new Uint8Array(parsed.bytes);
  return parsed;
}

function jsonEncodeBig(value: typeof BIG): Uint8Array {
  return encoder.encode(
    JSON.stringify({ id: value.id, data: value.data.toBase64() }),
  );
}

function jsonDecodeBig(bytes: Uint8Array): typeof BIG {
  const parsed = JSON.parse(decoder.decode(bytes));
  return { id: parsed.id, data: Uint8Array.fromBase64(parsed.data) };
}

const NO_HANDLES: { close(): void }[] = [];

// Encoded forms, made once for the decode cases. Codec and Packr reuse their
// output buffer, so keep copies.
const encodedSmall = {
  codec: codec.encode(SMALL).bytes.slice(),
  packr: packr.pack(SMALL).slice(),
  json: jsonEncodeSmall(SMALL),
  v8: serialize(SMALL),
};
const encodedBig = {
  codec: codec.encode(BIG).bytes.slice(),
  packr: packr.pack(BIG).slice(),
  json: jsonEncodeBig(BIG),
  v8: serialize(BIG),
};

function sameSmall(value: unknown): void {
  const got = value as Small;
  if (got.id !== 42 || got.bytes.length !== 64 || got.bytes[63] !== 63) {
    throw new Error("small object did not survive the round trip");
  }
}

function sameBig(value: unknown): void {
  const got = value as typeof BIG;
  if (got.data.length !== BIG.data.length || got.data[1000] !== (1000 & 0xff)) {
    throw new Error("64 KiB payload did not survive the round trip");
  }
}

// Check every decoder once before timing anything.
sameSmall(codec.decode(encodedSmall.codec, NO_HANDLES));
sameSmall(packr.unpack(encodedSmall.packr));
sameSmall(jsonDecodeSmall(encodedSmall.json));
sameSmall(deserialize(encodedSmall.v8));
sameBig(codec.decode(encodedBig.codec, NO_HANDLES));
sameBig(packr.unpack(encodedBig.packr));
sameBig(jsonDecodeBig(encodedBig.json));
sameBig(deserialize(encodedBig.v8));

const CASES: {
  label: string;
  value: Small | typeof BIG;
  encoded: typeof encodedSmall;
}[] = [
  {
    label: "small object (5 fields, 64 B Uint8Array)",
    value: SMALL,
    encoded: encodedSmall,
  },
  { label: "{ id, data: 64 KiB Uint8Array }", value: BIG, encoded: encodedBig },
];

for (const { label, value, encoded } of CASES) {
  const small = value === SMALL;
  Deno.bench({
    name: "msgpackr Packr.pack",
    group: `encode ${label}`,
    baseline: true,
    fn() {
      packr.pack(value);
    },
  });
  Deno.bench({
    name: "Codec.encode (ours)",
    group: `encode ${label}`,
    fn() {
      codec.encode(value);
    },
  });
  Deno.bench({
    name: "JSON.stringify + TextEncoder",
    group: `encode ${label}`,
    fn() {
      if (small) jsonEncodeSmall(value as Small);
      else jsonEncodeBig(value as typeof BIG);
    },
  });
  Deno.bench({
    name: "node:v8 serialize",
    group: `encode ${label}`,
    fn() {
      serialize(value);
    },
  });

  Deno.bench({
    name: "msgpackr Packr.unpack",
    group: `decode ${label}`,
    baseline: true,
    fn() {
      packr.unpack(encoded.packr);
    },
  });
  Deno.bench({
    name: "Codec.decode (ours)",
    group: `decode ${label}`,
    fn() {
      codec.decode(encoded.codec, NO_HANDLES);
    },
  });
  Deno.bench({
    name: "TextDecoder + JSON.parse",
    group: `decode ${label}`,
    fn() {
      if (small) jsonDecodeSmall(encoded.json);
      else jsonDecodeBig(encoded.json);
    },
  });
  Deno.bench({
    name: "node:v8 deserialize",
    group: `decode ${label}`,
    fn() {
      deserialize(encoded.v8);
    },
  });
}
