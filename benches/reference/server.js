'use strict';
// Reference broadcast server for `walcast bench --scenario channel --url ws://127.0.0.1:PORT/ws`.
// Speaks the subset of the realtime protocol the bench uses: init on connect, auth (any token is
// accepted), join, chan_in → ok to the sender and chan_out to every member. Written the way a
// typical Node service would be: JSON.parse / JSON.stringify and `ws.send` per member.
//
//   npm install && node server.js [port]    (prints "listening <port> pid <pid>")

const crypto = require('node:crypto');
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || process.env.PORT || 8098);
const channels = new Map(); // name → Set<WebSocket>

function envelope(sid, type, data, channel = '', token = '') {
  return JSON.stringify({ sid, type, data, channel, token });
}

const wss = new WebSocketServer({
  host: '127.0.0.1',
  port,
  path: '/ws',
  perMessageDeflate: false,
  maxPayload: 64 * 1024,
  backlog: 4096,
  clientTracking: false,
});

wss.on('connection', (ws) => {
  const sid = crypto.randomUUID();
  const joined = new Set();
  let token = '';
  const reply = (type, data) => ws.send(envelope(sid, type, data));
  ws.send(envelope('', 'init', sid));

  ws.on('message', (raw) => {
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      return reply('error', 'invalid message');
    }
    if (msg === null || typeof msg !== 'object') return reply('error', 'invalid message');
    if (msg.sid !== sid) return reply('error', 'invalid sid');
    if (msg.type === 'auth') {
      token = crypto.randomBytes(24).toString('hex');
      return reply('token', token);
    }
    if (!token || msg.token !== token) return reply('error', 'invalid token');
    switch (msg.type) {
      case 'join': {
        let members = channels.get(msg.data);
        if (!members) channels.set(msg.data, (members = new Set()));
        members.add(ws);
        joined.add(msg.data);
        return ws.send(JSON.stringify({ sid, type: 'joined', data: msg.data, channel: '', token: '' }));
      }
      case 'chan_in': {
        reply('ok', '');
        const members = channels.get(msg.channel);
        if (!members) return;
        const out = envelope(sid, 'chan_out', msg.data, msg.channel);
        for (const member of members) member.send(out);
        return;
      }
      default:
        return reply('error', `${msg.type} command not found`);
    }
  });

  ws.on('close', () => {
    for (const name of joined) {
      const members = channels.get(name);
      if (!members) continue;
      members.delete(ws);
      if (members.size === 0) channels.delete(name);
    }
  });
});

wss.on('listening', () => console.log(`listening ${port} pid ${process.pid}`));
