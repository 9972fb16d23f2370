/**
 * Splits a byte stream into text lines (what `TextLineStream` from
 * `@std/streams` does, without needing JSR).
 *
 * @module
 */

/** Yields each `\n`-terminated line of `stream`, without the newline. */
export async function* lines(
  stream: ReadableStream<Uint8Array>,
): AsyncGenerator<string, void, undefined> {
  const decoder = new TextDecoder();
  let rest = "";
  for await (const chunk of stream) {
    rest += decoder.decode(chunk, { stream: true });
    let start = 0;
    for (;;) {
      const end = rest.indexOf("\n", start);
      if (end < 0) break;
      yield rest.slice(start, end);
      start = end + 1;
    }
    rest = rest.slice(start);
  }
  if (rest.length > 0) yield rest;
}
