// Runs the bundled walcast client under one WebSocket implementation and prints every status
// change as a JSON line; the Rust test stops and restarts the gateway and reads the lines.
//
//   node reconnect.js <builtin|ws> <client.js path> <ws url> <session jwt>
// Exits when stdin closes.
"use strict";

const [impl, clientPath, url, jwt] = process.argv.slice(2);
const Walcast = require(clientPath);
const WebSocketImpl = impl === "ws" ? require("ws") : globalThis.WebSocket;
if (typeof WebSocketImpl !== "function") {
  console.error(`no WebSocket implementation for ${impl}`);
  process.exit(2);
}

const client = new Walcast.Client({
  url,
  sessionToken: jwt,
  WebSocket: WebSocketImpl,
  minBackoffMs: 100,
  maxBackoffMs: 400,
  connectTimeoutMs: 3000,
});
client.onStatus((status, detail) => {
  console.log(JSON.stringify({ status, detail: detail || null }));
});
process.stdin.on("end", () => {
  client.close();
  process.exit(0);
});
process.stdin.resume();
