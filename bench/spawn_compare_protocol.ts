/**
 * Messages shared by `spawn_compare.ts` and its Deno children.
 *
 * @module
 */

/** A small payload, echoed back in round trips and counted in streams. */
export interface Ping {
  i: number;
}

/** What the parent asks a child to do next. */
export interface Command {
  /**
   * `echoAsync`/`echoSync`: echo the next `n` pings (waiting with
   * `await recv()` or `recvSync()`); `sinkAsync`/`sinkSync`: take the next
   * `n` pings and answer `{ done: n }`; `exit`: leave.
   */
  op: "echoAsync" | "echoSync" | "sinkAsync" | "sinkSync" | "exit";
  n: number;
}

/** Parent to child. */
export type Down = Ping | Command;

/** Child to parent. */
export type Up = Ping | { done: number };
