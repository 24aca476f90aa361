// Reference broadcast server on Bun for `walcast bench --scenario channel --url ws://127.0.0.1:PORT/ws`.
// The same protocol subset as server.js (init on connect, auth with any token, join, chan_in → ok
// to the sender and chan_out to every member), written the way a Bun user would: Bun.serve with
// its built-in WebSocket (uWebSockets underneath), channel membership as Bun topics, and
// `server.publish` for the fanout (one shared frame, corked per socket by Bun itself).
//
//   npm install && node_modules/@oven/bun-linux-x64/bin/bun bun-server.js [port]
//   (prints "listening <port> pid <pid>")

const port = Number(process.argv[2] || process.env.PORT || 8099);

function envelope(sid, type, data, channel = '', token = '') {
  return JSON.stringify({ sid, type, data, channel, token });
}

const server = Bun.serve({
  hostname: '127.0.0.1',
  port,
  fetch(req, server) {
    if (new URL(req.url).pathname !== '/ws') return new Response('not found', { status: 404 });
    const data = { sid: crypto.randomUUID(), token: '' };
    if (server.upgrade(req, { data })) return;
    return new Response('upgrade required', { status: 426 });
  },
  websocket: {
    perMessageDeflate: false,
    maxPayloadLength: 64 * 1024,
    // The Node reference has no send-side bound either; Bun's default (16 MiB) stays.
    open(ws) {
      ws.send(envelope('', 'init', ws.data.sid));
    },
    message(ws, raw) {
      const { sid } = ws.data;
      const reply = (type, data) => ws.send(envelope(sid, type, data));
      let msg;
      try {
        msg = JSON.parse(raw);
      } catch {
        return reply('error', 'invalid message');
      }
      if (msg === null || typeof msg !== 'object') return reply('error', 'invalid message');
      if (msg.sid !== sid) return reply('error', 'invalid sid');
      if (msg.type === 'auth') {
        ws.data.token = Buffer.from(crypto.getRandomValues(new Uint8Array(24))).toString('hex');
        return reply('token', ws.data.token);
      }
      if (!ws.data.token || msg.token !== ws.data.token) return reply('error', 'invalid token');
      switch (msg.type) {
        case 'join':
          ws.subscribe(msg.data);
          return reply('joined', msg.data);
        case 'chan_in':
          reply('ok', '');
          // server.publish (not ws.publish) so the sender, a member too, gets its copy as with
          // the Node reference.
          server.publish(msg.channel, envelope(sid, 'chan_out', msg.data, msg.channel));
          return;
        default:
          return reply('error', `${msg.type} command not found`);
      }
    },
    // Topics are left by Bun when a socket closes.
  },
});

console.log(`listening ${server.port} pid ${process.pid}`);
