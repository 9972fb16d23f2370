// The child forked by spawn_compare_node.mjs: echoes pings, or counts the
// next n of them and answers { done: n }.

let sinking = 0;
let expected = 0;
process.on("message", (message) => {
  if (message.op === "sink") {
    sinking = expected = message.n;
  } else if (message.op === "exit") {
    process.disconnect();
  } else if (message.op === "echo") {
    // Echoing is the default.
  } else if (sinking > 0) {
    if (--sinking === 0) process.send({ done: expected });
  } else {
    process.send(message);
  }
});
