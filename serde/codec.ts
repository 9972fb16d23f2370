/**
 * The message codec: MessagePack through msgpackr, plus OS handles.
 *
 * A value becomes bytes and a list of handles. Each endpoint inside the value
 * is written as a MessagePack extension holding its index in that list, the
 * way servo/ipc-channel writes an index into its side vectors.
 *
 * msgpackr is used with records off, so every message decodes on its own
 * (its record mode keeps structure definitions across messages). Before
 * packing, {@linkcode prepare} walks the value once: it refuses what cannot
 * be carried (functions, symbols, unknown classes, cycles) and rewrites the
 * two things msgpackr would silently change: `-0` (packed as the integer 0)
 * and `Map` (unpacked as a plain object without records).
 *
 * @module
 */

// An inline npm: specifier (not an import-map entry) so that the module
// resolves the same from JSR, from a URL, or from a local path.
import { addExtension, Packr } from "npm:msgpackr@^1.12.1/pack";

import { intrinsicGetter, IpcError, typedArrayTag } from "../platform/types.ts";

/** msgpackr's pack() flag: rewind after packing, so the next message reuses
 * the same buffer (its value, 1024, is exported but not in its types). */
const RESET_BUFFER_MODE = 1024;

/** How one endpoint class travels: as which OS handle, and back. */
export interface HandleType<Endpoint, Outgoing, Incoming> {
  /** The endpoint class; instances of it are encoded as handles. */
  readonly Class: { readonly prototype: Endpoint };
  /** The OS handle to send (throws if the endpoint is unusable). */
  toHandle(endpoint: Endpoint): Outgoing;
  /** The endpoint for a received handle. */
  fromHandle(handle: Incoming): Endpoint;
}

/** Encoded form of a value. */
export interface Encoded<Outgoing> {
  /** MessagePack bytes, valid until the next `encode`. */
  readonly bytes: Uint8Array;
  /** The handles the bytes refer to by index. */
  readonly handles: Outgoing[];
}

/** A received handle the decoder may adopt once, or close. */
export interface Closeable {
  /** Releases the handle. */
  close(): void;
}

const MAX_DEPTH = 256;
const NO_HANDLES: never[] = [];
const EXTENSION_NEGATIVE_ZERO = 0x10;
const EXTENSION_MAP = 0x11;
const EXTENSION_FLOAT16 = 0x1f;
const EXTENSION_PROTO_KEYED = 0x1e;
const EXTENSION_FIRST_HANDLE = 0x12;

// Float16Array is newer than msgpackr's typed-array table: it travels as its
// bytes under an extension of our own.
// deno-lint-ignore no-explicit-any
const Float16 = (globalThis as any).Float16Array as
  | (new (buffer: ArrayBuffer) => ArrayBufferView)
  | undefined;

/** A plain object with an own "__proto__" key, which msgpackr renames. */
class ProtoKeyed {
  constructor(readonly entries: unknown[]) {}
}

class Float16Bytes {
  constructor(readonly array: ArrayBufferView) {}
}

class NegativeZero {}
const NEGATIVE_ZERO = new NegativeZero();

class MapEntries {
  constructor(readonly entries: unknown[]) {}
}

const TypedArray = Object.getPrototypeOf(Uint8Array);
/** The typed array kinds, in the order of msgpackr's wire codes. */
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
const PLAIN_VIEWS = new Set<unknown>([
  DataView.prototype,
  ...TYPED_ARRAYS.map((c) => c.prototype),
]);
/** msgpackr's extension for typed arrays, ArrayBuffer and DataView. */
const EXTENSION_TYPED_ARRAY = 0x74;
/** msgpackr's extensions for undefined, bigints, Set and Date. */
const EXTENSION_UNDEFINED = 0x00;
const EXTENSION_BIGINT = 0x42;
const EXTENSION_SET = 0x73;
const EXTENSION_TIMESTAMP = 0xff;

/** How an extension type may appear in a message; see {@linkcode checkClaims}. */
const REFUSED = 0;
/** Its data is all there is. */
const PAYLOAD = 1;
/** A tag: one more value follows it (a `write`/`read` extension, Set). */
const TAG = 2;
const CODE_ARRAY_BUFFER = 16;
const CODE_DATA_VIEW = 17;

/**
 * msgpackr's reader for its typed-array extension, but copying through the
 * Uint8Array constructor (into uninitialised memory) where msgpackr's
 * `slice()` zeroes the new buffer first: that memset was the largest single
 * cost of receiving a typed message holding 64 KiB. Same wire format, same
 * result: a copy at offset 0 of its own buffer.
 */
function readTypedArray(data: Uint8Array): unknown {
  const code = data[0];
  const buffer = new Uint8Array(data.subarray(1)).buffer;
  const Kind = TYPED_ARRAYS[code];
  if (Kind !== undefined) return new Kind(buffer);
  if (code === CODE_ARRAY_BUFFER) return buffer;
  if (code === CODE_DATA_VIEW) return new DataView(buffer);
  throw new Error(`Could not find typed array for code ${code}`);
}

const dataViewLength = intrinsicGetter(DataView.prototype, "byteLength");
const arrayBufferLength = intrinsicGetter(ArrayBuffer.prototype, "byteLength");
/** What msgpackr reads of a typed array, DataView or ArrayBuffer it writes. */
const BINARY_KEYS = ["constructor", "buffer", "byteOffset", "byteLength"];

/**
 * Refuses a binary value that only looks plain: msgpackr sizes the frame from
 * `byteLength` but copies the real bytes, so an own property (or a Proxy)
 * that lies would leave earlier messages' bytes of the reused encode buffer
 * in this one. The intrinsic getters throw for, or see through, imitations.
 */
function checkGenuineBinary(object: object, prototype: object): void {
  let genuine: boolean;
  try {
    if (prototype === ArrayBuffer.prototype) {
      arrayBufferLength.call(object);
      genuine = true;
    } else if (prototype === DataView.prototype) {
      dataViewLength.call(object);
      genuine = true;
    } else {
      genuine = typedArrayTag.call(object) !== undefined;
    }
  } catch {
    genuine = false;
  }
  const what = (prototype.constructor as { name?: string }).name ?? "binary";
  if (!genuine) throw unsupported(`an imitation (or a Proxy) of ${what}`);
  for (const key of BINARY_KEYS) {
    if (Object.hasOwn(object, key)) {
      throw unsupported(`this ${what}, which has its own "${key}" property`);
    }
  }
}

function unsupported(what: string): IpcError {
  return new IpcError(
    "Serialization",
    `cannot send ${what}: messages carry null, undefined, booleans, numbers, bigints, strings, arrays, plain objects, Map, Set, Date, ArrayBuffer, typed arrays and endpoints`,
  );
}

function at(error: unknown, key: string): unknown {
  if (error instanceof IpcError && error.kind === "Serialization") {
    const path = /^(.*?) \(at (\S*)\)$/s.exec(error.message);
    return new IpcError(
      "Serialization",
      path
        ? `${path[1]} (at ${key}${path[2]})`
        : `${error.message} (at ${key})`,
    );
  }
  return error;
}

/** Encodes values and their endpoints; one per process (extensions are global). */
export class Codec<Outgoing, Incoming extends Closeable> {
  readonly #packr: Packr;
  readonly #endpointPrototypes = new Set<unknown>();
  #outgoing: Outgoing[] | undefined;
  #incoming: (Incoming | undefined)[] | undefined;
  #adopted: Closeable[] = [];
  /** A view over the whole buffer the last batched message came in. */
  #whole: Uint8Array | undefined;
  /** What each extension type is, for the walk before decoding. */
  readonly #extensions = new Uint8Array(256);

  /** @param types the endpoint classes, in a fixed order (it is the wire tag) */
  constructor(
    // deno-lint-ignore no-explicit-any
    types: readonly HandleType<any, Outgoing, Incoming>[],
  ) {
    this.#packr = new Packr({
      useRecords: false,
      moreTypes: true,
      int64AsType: "bigint",
      // Decoded byte arrays are copies, aligned at offset 0 of their own
      // buffer: views into the message would save a copy but surprise
      // anyone who reinterprets `.buffer` (measured: a test did). Receivers
      // rely on it too: a decoded value never aliases the message bytes,
      // so they may lend their receive buffer for a decode.
      copyBuffers: true,
      writeFunction: () => {
        throw unsupported("a function");
      },
    });
    addExtension({ type: EXTENSION_TYPED_ARRAY, unpack: readTypedArray });
    addExtension({
      Class: NegativeZero,
      type: EXTENSION_NEGATIVE_ZERO,
      write: () => 0,
      read: () => -0,
    });
    addExtension({
      Class: MapEntries,
      type: EXTENSION_MAP,
      write: (map: MapEntries) => map.entries,
      read: (entries: unknown) => {
        if (!Array.isArray(entries) || entries.length % 2 !== 0) {
          throw new IpcError("Serialization", "a malformed Map");
        }
        const map = new Map();
        for (let i = 0; i < entries.length; i += 2) {
          map.set(entries[i], entries[i + 1]);
        }
        return map;
      },
    });
    addExtension({
      Class: Float16Bytes,
      type: EXTENSION_FLOAT16,
      write: (box: Float16Bytes) =>
        new Uint8Array(
          box.array.buffer,
          box.array.byteOffset,
          box.array.byteLength,
        ),
      read: (bytes: unknown) => {
        if (
          Float16 === undefined || !(bytes instanceof Uint8Array) ||
          bytes.length % 2 !== 0
        ) {
          throw new IpcError("Serialization", "a malformed Float16Array");
        }
        return new Float16(bytes.slice().buffer);
      },
    });
    addExtension({
      Class: ProtoKeyed,
      type: EXTENSION_PROTO_KEYED,
      write: (keyed: ProtoKeyed) => keyed.entries,
      read: (entries: unknown) => {
        if (!Array.isArray(entries) || entries.length % 2 !== 0) {
          throw new IpcError("Serialization", "a malformed object");
        }
        const object: Record<string, unknown> = {};
        for (let i = 0; i < entries.length; i += 2) {
          // defineProperty: an own data property, never the prototype setter.
          Object.defineProperty(object, String(entries[i]), {
            value: entries[i + 1],
            enumerable: true,
            writable: true,
            configurable: true,
          });
        }
        return object;
      },
    });
    for (
      const type of [
        EXTENSION_UNDEFINED,
        EXTENSION_BIGINT,
        EXTENSION_TIMESTAMP,
        EXTENSION_TYPED_ARRAY,
      ]
    ) this.#extensions[type] = PAYLOAD;
    for (
      const type of [
        EXTENSION_SET,
        EXTENSION_NEGATIVE_ZERO,
        EXTENSION_MAP,
        EXTENSION_FLOAT16,
        EXTENSION_PROTO_KEYED,
      ]
    ) this.#extensions[type] = TAG;
    types.forEach((type, i) => {
      this.#extensions[EXTENSION_FIRST_HANDLE + i] = TAG;
      this.#endpointPrototypes.add(type.Class.prototype);
      addExtension({
        // msgpackr only tests `instanceof`, which a private constructor passes.
        Class: type.Class as unknown as new () => unknown,
        type: EXTENSION_FIRST_HANDLE + i,
        write: (endpoint: unknown) => this.#writeHandle(type, endpoint),
        read: (index: unknown) => this.#readHandle(type, index),
      });
    });
  }

  // deno-lint-ignore no-explicit-any
  #writeHandle(type: HandleType<any, Outgoing, Incoming>, endpoint: unknown) {
    if (this.#outgoing === undefined) {
      throw new IpcError(
        "Serialization",
        "endpoints can only be packed by the channel codec",
      );
    }
    return this.#outgoing.push(type.toHandle(endpoint)) - 1;
  }

  // deno-lint-ignore no-explicit-any
  #readHandle(type: HandleType<any, Outgoing, Incoming>, index: unknown) {
    const incoming = this.#incoming;
    if (
      incoming === undefined || typeof index !== "number" ||
      !Number.isInteger(index) || index < 0 || index >= incoming.length
    ) {
      throw new IpcError(
        "Serialization",
        `the message refers to handle ${
          String(index)
        }, which it does not carry`,
      );
    }
    const handle = incoming[index];
    if (handle === undefined) {
      throw new IpcError(
        "Serialization",
        `the message uses handle ${index} twice`,
      );
    }
    incoming[index] = undefined;
    const endpoint = type.fromHandle(handle);
    this.#adopted.push(endpoint as Closeable);
    return endpoint;
  }

  /** Checks `value` and rewrites what msgpackr would change; see the module doc. */
  #prepare(value: unknown, depth: number): unknown {
    switch (typeof value) {
      case "number":
        return Object.is(value, -0) ? NEGATIVE_ZERO : value;
      case "string":
      case "boolean":
      case "undefined":
      case "bigint":
        return value;
      case "function":
        throw unsupported("a function");
      case "symbol":
        throw unsupported("a symbol");
    }
    if (value === null) return null;
    if (depth > MAX_DEPTH) {
      throw new IpcError(
        "Serialization",
        `cannot send a value nested deeper than ${MAX_DEPTH} levels (or a circular one)`,
      );
    }
    const object = value as object;
    const prototype = Object.getPrototypeOf(object);
    if (prototype === Object.prototype || prototype === null) {
      const record = object as Record<string, unknown>;
      let copy: Record<string, unknown> | undefined;
      for (const key in record) {
        const child = record[key];
        let prepared: unknown;
        try {
          prepared = this.#prepare(child, depth + 1);
        } catch (error) {
          throw at(error, `.${key}`);
        }
        if (prepared !== child) copy ??= { ...record };
        if (copy !== undefined) {
          Object.defineProperty(copy, key, {
            value: prepared,
            enumerable: true,
            writable: true,
            configurable: true,
          });
        }
      }
      if (Object.hasOwn(record, "__proto__")) {
        const source = copy ?? record;
        return new ProtoKeyed(
          Object.keys(source).flatMap((key) => [key, source[key]]),
        );
      }
      return copy ?? value;
    }
    if (prototype === Array.prototype) {
      const array = object as unknown[];
      let copy: unknown[] | undefined;
      for (let i = 0; i < array.length; i++) {
        const child = array[i];
        let prepared: unknown;
        try {
          prepared = this.#prepare(child, depth + 1);
        } catch (error) {
          throw at(error, `[${i}]`);
        }
        if (prepared !== child) copy ??= array.slice();
        if (copy !== undefined) copy[i] = prepared;
      }
      return copy ?? value;
    }
    if (prototype === Map.prototype) {
      const entries: unknown[] = [];
      for (const [key, child] of object as Map<unknown, unknown>) {
        try {
          entries.push(
            this.#prepare(key, depth + 1),
            this.#prepare(child, depth + 1),
          );
        } catch (error) {
          throw at(error, `.get(${String(key)})`);
        }
      }
      return new MapEntries(entries);
    }
    if (prototype === Set.prototype) {
      const set = object as Set<unknown>;
      let changed = false;
      const members: unknown[] = [];
      for (const member of set) {
        const prepared = this.#prepare(member, depth + 1);
        changed ||= prepared !== member;
        members.push(prepared);
      }
      return changed ? new Set(members) : value;
    }
    if (Float16 !== undefined && prototype === Float16.prototype) {
      checkGenuineBinary(object, prototype);
      return new Float16Bytes(object as ArrayBufferView);
    }
    if (prototype === ArrayBuffer.prototype || PLAIN_VIEWS.has(prototype)) {
      checkGenuineBinary(object, prototype);
      return value;
    }
    if (
      prototype === Date.prototype || this.#endpointPrototypes.has(prototype)
    ) {
      return value;
    }
    if (object instanceof TypedArray || ArrayBuffer.isView(object)) {
      throw unsupported(`a subclass of ${prototype.constructor?.name}`);
    }
    const name = prototype?.constructor?.name;
    throw unsupported(name ? `an instance of class ${name}` : "this object");
  }

  /**
   * Encodes `value`. Throws kind "Serialization" for what cannot be sent;
   * nothing is retained from a failed call.
   */
  encode(value: unknown): Encoded<Outgoing> {
    const prepared = this.#prepare(value, 0);
    this.#outgoing = [];
    try {
      // The bytes are sent (or copied into a queue) before the next encode,
      // so one reused buffer serves every message: no garbage per send.
      // msgpackr hands out a Node Buffer, whose slice() is a view: platforms
      // copy a body they keep with the Uint8Array constructor.
      return {
        bytes: this.#packr.pack(prepared, RESET_BUFFER_MODE),
        handles: this.#outgoing,
      };
    } catch (error) {
      if (error instanceof IpcError) throw error;
      throw new IpcError("Serialization", `cannot encode the value: ${error}`, {
        cause: error,
      });
    } finally {
      this.#outgoing = undefined;
    }
  }

  /**
   * msgpackr on `bytes`. A message that is a view into a larger buffer (the
   * messages of one batch packet share one) is read as a range of a view
   * over the whole buffer, kept while the buffer is: msgpackr makes and
   * attaches a DataView to every source it is given, which was most of its
   * cost per small message.
   */
  #unpack(bytes: Uint8Array): unknown {
    const { buffer, byteOffset, byteLength } = bytes;
    if (byteOffset === 0 && byteLength === buffer.byteLength) {
      return this.#packr.unpack(bytes);
    }
    if (this.#whole?.buffer !== buffer) {
      this.#whole = new Uint8Array(buffer);
    }
    return this.#packr.unpack(this.#whole, {
      start: byteOffset,
      end: byteOffset + byteLength,
    });
  }

  /**
   * Decodes `bytes`, adopting the handles the value refers to and closing the
   * rest. On failure every handle, adopted or not, is released.
   */
  decode(bytes: Uint8Array, handles: readonly Incoming[]): unknown {
    this.#incoming = handles.length === 0 ? NO_HANDLES : [...handles];
    this.#adopted = [];
    try {
      checkClaims(bytes, this.#extensions);
      return this.#unpack(bytes);
    } catch (error) {
      for (const endpoint of this.#adopted) endpoint.close();
      if (error instanceof IpcError) throw error;
      throw new IpcError(
        "Serialization",
        `cannot decode the message: ${
          error instanceof Error ? error.message : error
        }`,
        { cause: error },
      );
    } finally {
      for (const handle of this.#incoming) handle?.close();
      this.#incoming = undefined;
      this.#adopted = [];
    }
  }
}

/**
 * Walks the MessagePack in `bytes` before msgpackr sees it, and refuses what
 * it must not be given:
 *
 * - headers that claim more than the bytes hold. msgpackr preallocates
 *   `new Array(count)` for an array header (and, in a short input, an array
 *   of a string's code units) before it reads one element: five bytes
 *   claiming 30 million elements cost 150 MiB and 170 ms (measured). Every
 *   item takes at least one byte, so the items still owed never outnumber
 *   the bytes left;
 * - extension types this codec never writes (msgpackr's records, bundled
 *   strings, errors, regular expressions…), some of which read at positions
 *   taken from the data, and tags (`extensions[type] === TAG`) are counted
 *   with the value that follows them. msgpackr therefore never reads past the
 *   message, which matters when it is a range of a larger buffer;
 * - the never-used byte 0xC1 (msgpackr decodes it as a marker object).
 *
 * It visits exactly the type bytes msgpackr will read and skips payloads.
 */
function checkClaims(bytes: Uint8Array, extensions: Uint8Array): void {
  const end = bytes.length;
  let at = 0;
  let owed = 1;
  while (at < end) {
    if (owed === 0) refuse("bytes after the value");
    owed--;
    const byte = bytes[at++];
    let count = 0;
    let extension = -1;
    if (byte < 0x80 || byte >= 0xe0) {
      // fixint
    } else if (byte < 0x90) count = 2 * (byte & 0x0f);
    else if (byte < 0xa0) count = byte & 0x0f;
    else if (byte < 0xc0) at += byte & 0x1f;
    else {
      switch (byte) {
        case 0xc4: // bin 8
        case 0xd9: // str 8
          at += 1 + bytes[at];
          break;
        case 0xc5: // bin 16
        case 0xda: // str 16
          at += 2 + uint16(bytes, at);
          break;
        case 0xc6: // bin 32
        case 0xdb: // str 32
          at += 4 + uint32(bytes, at);
          break;
        case 0xc7: // ext 8: length, type, data
          extension = bytes[at + 1];
          at += 2 + bytes[at];
          break;
        case 0xc8:
          extension = bytes[at + 2];
          at += 3 + uint16(bytes, at);
          break;
        case 0xc9:
          extension = bytes[at + 4];
          at += 5 + uint32(bytes, at);
          break;
        case 0xd4: // fixext 1, 2, 4, 8, 16: type, data
        case 0xd5:
        case 0xd6:
        case 0xd7:
        case 0xd8:
          extension = bytes[at];
          at += 1 + (1 << (byte - 0xd4));
          break;
        case 0xcc: // uint 8, int 8
        case 0xd0:
          at += 1;
          break;
        case 0xcd:
        case 0xd1:
          at += 2;
          break;
        case 0xca: // float 32, uint 32, int 32
        case 0xce:
        case 0xd2:
          at += 4;
          break;
        case 0xcb: // float 64, uint 64, int 64
        case 0xcf:
        case 0xd3:
          at += 8;
          break;
        case 0xdc: // array 16, array 32, map 16, map 32
          count = uint16(bytes, at);
          at += 2;
          break;
        case 0xdd:
          count = uint32(bytes, at);
          at += 4;
          break;
        case 0xde:
          count = 2 * uint16(bytes, at);
          at += 2;
          break;
        case 0xdf:
          count = 2 * uint32(bytes, at);
          at += 4;
          break;
        case 0xc1:
          refuse("the never-used MessagePack byte 0xC1");
          break;
        default: // nil, false, true: the byte alone
      }
    }
    if (extension !== -1) {
      // undefined (a type byte past the end) reads as REFUSED too.
      const kind = extensions[extension] ?? REFUSED;
      if (kind === REFUSED) refuse(`an extension of type ${extension}`);
      if (kind === TAG) count = 1;
    }
    owed += count;
    // NaN (a length byte past the end) fails `at <= end` too.
    if (!(at <= end) || owed > end - at) {
      refuse(`a header that claims more than the ${end} bytes hold`);
    }
  }
  if (owed !== 0) refuse("no complete value");
}

function refuse(what: string): never {
  throw new IpcError(
    "Serialization",
    `cannot decode the message: it holds ${what}`,
  );
}

function uint16(bytes: Uint8Array, at: number): number {
  return (bytes[at] << 8 | bytes[at + 1]) >>> 0;
}

function uint32(bytes: Uint8Array, at: number): number {
  return (bytes[at] * 2 ** 24 + (bytes[at + 1] << 16 | bytes[at + 2] << 8 |
    bytes[at + 3])) >>> 0;
}
