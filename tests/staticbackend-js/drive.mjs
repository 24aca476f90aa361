// Drives the published @staticbackend/js client, unpatched, from the integration tests.
//
//   node drive.mjs <base URL> <app public key> <session JWT>
//
// Calls `connect()` (Server-Sent Events, with the `eventsource` polyfill as the browser's
// EventSource) and reports on stdout, one JSON object per line:
//   {"auth": <what onAuth received>}   and   {"message": <what onMessage received>}
// Reads commands on stdin, one JSON array per line: the arguments of `send(type, data, channel)`.
// Closes the stream and exits when stdin ends.

import { EventSource } from "eventsource";
import { createInterface } from "node:readline";

globalThis.EventSource = EventSource;
const { Backend } = await import("@staticbackend/js");

const [base, appKey, jwt] = process.argv.slice(2);
if (!jwt) {
  console.error("usage: node drive.mjs <base URL> <app public key> <session JWT>");
  process.exit(2);
}

const report = (value) => process.stdout.write(JSON.stringify(value) + "\n");
const backend = new Backend(appKey, base);
backend.connect(
  jwt,
  (token) => report({ auth: token }),
  (message) => report({ message }),
);

for await (const line of createInterface({ input: process.stdin })) {
  if (line.trim() === "") continue;
  const [type, data, channel] = JSON.parse(line);
  if (!backend.send(type, data, channel)) report({ error: "send refused: stream closed" });
}
backend.sseClient.close();
