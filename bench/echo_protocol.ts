/**
 * Messages between `cross_process.ts` and its child `echo_child.ts`.
 *
 * @module
 */

import type { IpcBytesReceiver, IpcBytesSender, IpcSender } from "../mod.ts";

/** Parent → child, on the typed command channel. */
export type Command =
  /** Echo `count` pings, waiting with `recvSync()`. */
  | { op: "echoSync"; count: number }
  /** Echo `count` pings, waiting with `await recv()`. */
  | { op: "echoAsync"; count: number }
  /** Stream `count` {@linkcode Small} messages up the typed channel. */
  | { op: "small"; count: number }
  /** Stream `count` typed messages holding a `size`-byte Uint8Array. */
  | { op: "blob"; count: number; size: number }
  /** Stream `count` raw messages of `size` bytes on the bytes channel. */
  | { op: "bytes"; count: number; size: number }
  | { op: "exit" };

/** The small typed message: five fields. */
export interface Small {
  kind: "small";
  seq: number;
  name: string;
  ok: boolean;
  ratio: number;
}

/** Child → parent, on the typed channel the one-shot server accepted. */
export type Up =
  | {
    kind: "hello";
    /** Where the parent sends {@linkcode Command}s. */
    commands: IpcSender<Command>;
    /** Where the parent sends pings. */
    pings: IpcBytesSender;
    /** Where the child echoes pings and streams raw bytes. */
    stream: IpcBytesReceiver;
  }
  | Small
  | { kind: "blob"; seq: number; data: Uint8Array };
