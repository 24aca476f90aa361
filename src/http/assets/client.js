/*
 * walcast client — a small, dependency-free client for the walcast / StaticBackend realtime
 * WebSocket protocol (see docs: PROTOCOL.md). Works as a classic <script> (defines
 * window.Walcast) and under CommonJS (module.exports).
 *
 *   const c = new Walcast.Client({ url, sessionToken, appKey, minBackoffMs, maxBackoffMs,
 *                                  connectTimeoutMs, authTimeoutMs, WebSocket });
 *   c.onStatus((status, detail) => ...);   // connecting | open | authenticated | closed | reconnecting
 *   c.onMessage(msg => ...);               // every server message (parsed envelope)
 *   await c.join("db-tasks_760_");         // remembered, re-joined after every reconnect
 *   await c.join("db-tasks_760_", {        // [ext] live query: readable rows, then changes
 *     snapshot: true,
 *     filter: [["status", "eq", "open"], ["priority", "gte", 3]],
 *     onSnapshot: (docs, info) => ...      // each page's documents; then ([], {end: true, lsn});
 *   });                                    //   on a refused snapshot ([], {error})
 *   await c.send("room1", { text: "hi" }); // chan_in, resolved on "ok"
 *   c.leave("room1"); c.close();
 *
 * Every attempt ends in exactly one way: authenticated, or dropped (close, error, connect timeout,
 * auth timeout, refused auth) — and every drop schedules the next attempt, whichever WebSocket
 * implementation reports it (browsers, Node's built-in WebSocket, the `ws` package).
 *
 * Requests are answered in order by the server, one reply per request; replies are matched to
 * requests by type where possible (token, joined, left, ok, echo) and an "error" reply goes to the
 * oldest outstanding request.
 */
(function (root) {
  "use strict";

  var STATUS = ["connecting", "open", "authenticated", "closed", "reconnecting"];

  function str(v) {
    if (v === undefined || v === null) return "";
    return typeof v === "string" ? v : String(v);
  }

  function deriveUrl() {
    var loc = root && root.location;
    if (!loc || !loc.host) throw new Error("walcast: no url given and no location to derive it from");
    return (loc.protocol === "https:" ? "wss://" : "ws://") + loc.host + "/ws";
  }

  function withAppKey(url, appKey) {
    if (!appKey) return url;
    return url + (url.indexOf("?") >= 0 ? "&" : "?") + "sbpk=" + encodeURIComponent(appKey);
  }

  /** Parses a PostgreSQL LSN "X/Y" into a BigInt (or a Number when BigInt is missing); null if invalid. */
  function parseLsn(lsn) {
    if (typeof lsn !== "string") return null;
    var m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(lsn);
    if (!m) return null;
    if (typeof BigInt === "function") {
      return (BigInt("0x" + m[1]) << BigInt(32)) + BigInt("0x" + m[2]);
    }
    return parseInt(m[1], 16) * 4294967296 + parseInt(m[2], 16);
  }

  /**
   * Parses an event position: "X/Y:index" (one event) or "X/Y" (after the whole transaction).
   * Returns { lsn, index } with index Infinity for a bare LSN; null if invalid.
   */
  function parsePos(pos) {
    if (typeof pos !== "string") return null;
    var at = pos.indexOf(":");
    var lsn = parseLsn(at < 0 ? pos : pos.slice(0, at));
    if (lsn === null) return null;
    if (at < 0) return { lsn: lsn, index: Infinity };
    var idx = pos.slice(at + 1);
    if (!/^[0-9]{1,10}$/.test(idx)) return null;
    return { lsn: lsn, index: parseInt(idx, 10) };
  }

  function isDbChannel(ch) {
    return typeof ch === "string" && ch.slice(0, 3).toLowerCase() === "db-";
  }

  function WalcastError(message, reply) {
    var e = new Error(message);
    e.name = "WalcastError";
    e.reply = reply || null;
    return e;
  }

  function Client(opts) {
    if (!(this instanceof Client)) return new Client(opts);
    opts = opts || {};
    this.url = withAppKey(opts.url || deriveUrl(), opts.appKey);
    this.sessionToken = opts.sessionToken || "";
    this.minBackoffMs = opts.minBackoffMs != null ? opts.minBackoffMs : 250;
    this.maxBackoffMs = opts.maxBackoffMs != null ? opts.maxBackoffMs : 10000;
    this.authTimeoutMs = opts.authTimeoutMs != null ? opts.authTimeoutMs : 10000;
    // Bounds the TCP/TLS connect and the upgrade: some implementations never report a refused or
    // black-holed attempt, which would leave the client "connecting" forever.
    this.connectTimeoutMs = opts.connectTimeoutMs != null ? opts.connectTimeoutMs : 10000;
    this.keepaliveMs = opts.keepaliveMs || 0; // 0: off. Otherwise echo every N ms, reconnect if unanswered.
    this.WebSocket = opts.WebSocket || root.WebSocket;
    if (!this.WebSocket) throw new Error("walcast: no WebSocket implementation available");

    this.sid = "";
    this.connected = false; // true once authenticated
    this.status = "";
    this.wsToken = "";

    this._ws = null;
    this._closedByUser = false;
    this._attempt = 0;
    this._reconnectTimer = null;
    this._authTimer = null;
    this._connectTimer = null;
    this._keepaliveTimer = null;
    this._channels = new Map(); // channel -> { since, snapshot, filter, onSnapshot }
    this._lastLsn = new Map(); // db channel -> last position seen ("X/Y:i", or "X/Y")
    this._inflight = []; // requests sent on this socket, awaiting a reply
    this._joinWaiters = new Map(); // channel -> [{resolve, reject}] not yet sent (waiting for auth)
    this._outbox = []; // sends/echos issued before authentication
    this._msgHandlers = [];
    this._statusHandlers = [];

    // Connect on the next microtask, so onStatus/onMessage/join registered right after
    // construction see everything from "connecting" on.
    var self = this;
    this._started = false;
    if (opts.autoConnect !== false) Promise.resolve().then(function () { self.connect(); });
  }

  /** Starts connecting (done automatically unless autoConnect: false). Idempotent. */
  Client.prototype.connect = function () {
    if (this._started || this._closedByUser) return;
    this._started = true;
    this._connect();
  };

  Client.prototype.onMessage = function (fn) {
    var list = this._msgHandlers;
    list.push(fn);
    return function () { var i = list.indexOf(fn); if (i >= 0) list.splice(i, 1); };
  };

  Client.prototype.onStatus = function (fn) {
    var list = this._statusHandlers;
    list.push(fn);
    return function () { var i = list.indexOf(fn); if (i >= 0) list.splice(i, 1); };
  };

  /** Replaces the session JWT used on the next (re)authentication. */
  Client.prototype.setSessionToken = function (t) { this.sessionToken = t; };

  /** Last LSN seen on a db channel ("" if none). */
  Client.prototype.lastLsn = function (channel) { return this._lastLsn.get(channel) || ""; };

  Client.prototype.join = function (channel, opts) {
    var self = this;
    channel = str(channel);
    var since = opts && opts.since ? str(opts.since) : "";
    if (since && isDbChannel(channel)) {
      var prev = this._lastLsn.get(channel);
      if (!prev || posGreater(since, prev)) this._lastLsn.set(channel, since);
    }
    this._channels.set(channel, {
      since: since,
      snapshot: !!(opts && opts.snapshot),
      filter: opts && opts.filter ? opts.filter : null,
      onSnapshot: opts && typeof opts.onSnapshot === "function" ? opts.onSnapshot : null
    });
    // A new snapshot starts from nothing: what was seen before does not count.
    if (opts && opts.snapshot && !since) this._lastLsn.delete(channel);
    if (this._closedByUser) return Promise.reject(WalcastError("client closed"));
    return new Promise(function (resolve, reject) {
      if (self.connected) {
        self._sendJoin(channel, { resolve: resolve, reject: reject });
      } else {
        var w = self._joinWaiters.get(channel) || [];
        w.push({ resolve: resolve, reject: reject });
        self._joinWaiters.set(channel, w);
      }
    });
  };

  Client.prototype.leave = function (channel) {
    var self = this;
    channel = str(channel);
    this._channels.delete(channel);
    this._lastLsn.delete(channel);
    var waiters = this._joinWaiters.get(channel);
    if (waiters) {
      this._joinWaiters.delete(channel);
      waiters.forEach(function (w) { w.reject(WalcastError("left before joined")); });
    }
    if (!this.connected) return Promise.resolve(channel);
    return new Promise(function (resolve, reject) {
      self._request("leave", { type: "leave", data: channel }, { channel: channel, resolve: resolve, reject: reject });
    });
  };

  Client.prototype.send = function (channel, data) {
    var payload = typeof data === "string" ? data : JSON.stringify(data);
    return this._requestWhenReady("chan_in", { type: "chan_in", data: payload, channel: str(channel) });
  };

  Client.prototype.echo = function (data) {
    var payload = typeof data === "string" ? data : JSON.stringify(data);
    return this._requestWhenReady("echo", { type: "echo", data: payload });
  };

  /** Closes the connection for good: no more reconnects; pending requests are rejected. */
  Client.prototype.close = function () {
    if (this._closedByUser) return;
    this._closedByUser = true;
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    var err = WalcastError("client closed");
    this._joinWaiters.forEach(function (ws) { ws.forEach(function (w) { w.reject(err); }); });
    this._joinWaiters.clear();
    this._outbox.splice(0).forEach(function (o) { o.reject(err); });
    var ws = this._ws;
    this._teardown(err);
    if (ws) { try { ws.close(1000, "client closed"); } catch (e) { /* ignore */ } }
    this._setStatus("closed", { code: 1000, reason: "client closed" });
  };

  // ---- internals ---------------------------------------------------------------------------

  /** Whether position a is after position b (an unreadable b counts as before everything). */
  function posGreater(a, b) {
    var x = parsePos(a), y = parsePos(b);
    if (x === null) return false;
    if (y === null) return true;
    if (x.lsn !== y.lsn) return x.lsn > y.lsn;
    return x.index > y.index;
  }

  Client.prototype._emit = function (msg) {
    this._msgHandlers.slice().forEach(function (fn) {
      try { fn(msg); } catch (e) { if (root.console) root.console.error(e); }
    });
  };

  Client.prototype._setStatus = function (status, detail) {
    this.status = status;
    this._statusHandlers.slice().forEach(function (fn) {
      try { fn(status, detail); } catch (e) { if (root.console) root.console.error(e); }
    });
  };

  Client.prototype._connect = function () {
    var self = this;
    if (this._closedByUser) return;
    this._reconnectTimer = null;
    this.sid = "";
    this.wsToken = "";
    this.connected = false;
    this._setStatus("connecting", { url: this.url, attempt: this._attempt });
    var ws;
    try {
      ws = new this.WebSocket(this.url);
    } catch (e) {
      this._setStatus("closed", { code: 0, reason: String(e && e.message || e) });
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    if (this.connectTimeoutMs) {
      this._connectTimer = setTimeout(function () {
        if (self._ws === ws) self._drop({ code: 0, reason: "connect timed out" });
      }, this.connectTimeoutMs);
    }
    ws.onopen = function () {
      if (self._ws !== ws) return;
      clearTimeout(self._connectTimer);
      self._connectTimer = null;
      self._setStatus("open", { url: self.url });
      // The server must say init; if auth does not complete in time, start over.
      self._armAuthTimer(ws);
    };
    ws.onmessage = function (ev) {
      if (self._ws !== ws) return;
      self._onFrame(ev.data);
    };
    // Not every implementation follows an error with a close event (a refused attempt may
    // report only the error): the first of the two ends the attempt; the other finds the socket
    // already abandoned.
    ws.onerror = function () {
      if (self._ws !== ws) return;
      self._drop({ code: 0, reason: "connection error" });
    };
    ws.onclose = function (ev) {
      if (self._ws !== ws) return;
      self._onSocketGone({ code: ev && ev.code || 0, reason: ev && ev.reason || "" });
    };
  };

  Client.prototype._armAuthTimer = function (ws) {
    var self = this;
    clearTimeout(this._authTimer);
    if (!this.authTimeoutMs) return;
    this._authTimer = setTimeout(function () {
      if (self._ws === ws && !self.connected) self._drop({ code: 0, reason: "authentication timed out" });
    }, this.authTimeoutMs);
  };

  /** Abandons the current socket and schedules a reconnect. */
  Client.prototype._drop = function (detail) {
    var ws = this._ws;
    if (!ws) return;
    this._onSocketGone(detail);
    try { ws.close(); } catch (e) { /* ignore */ }
  };

  Client.prototype._teardown = function (err) {
    clearTimeout(this._authTimer);
    clearTimeout(this._connectTimer);
    clearInterval(this._keepaliveTimer);
    this._authTimer = this._connectTimer = this._keepaliveTimer = null;
    var ws = this._ws;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      // A no-op rather than none: closing a socket that is still connecting makes the `ws`
      // package emit "error", which with no listener at all is an uncaught exception.
      ws.onerror = function () {};
    }
    this._ws = null;
    this.connected = false;
    this.wsToken = "";
    this._inflight.splice(0).forEach(function (r) { if (r.reject) r.reject(err); });
  };

  Client.prototype._onSocketGone = function (detail) {
    this._teardown(WalcastError("disconnected" + (detail && detail.reason ? ": " + detail.reason : "")));
    if (this._closedByUser) return;
    this._setStatus("closed", detail);
    this._scheduleReconnect();
  };

  Client.prototype._scheduleReconnect = function () {
    var self = this;
    if (this._closedByUser || this._reconnectTimer) return;
    var base = Math.min(this.maxBackoffMs, this.minBackoffMs * Math.pow(2, this._attempt));
    // "equal jitter": half fixed, half random, never below minBackoffMs.
    var delay = Math.max(this.minBackoffMs, Math.round(base / 2 + Math.random() * base / 2));
    this._attempt = Math.min(this._attempt + 1, 30);
    this._setStatus("reconnecting", { delayMs: delay, attempt: this._attempt });
    this._reconnectTimer = setTimeout(function () { self._connect(); }, delay);
  };

  Client.prototype._write = function (fields) {
    var msg = {
      sid: this.sid,
      type: str(fields.type),
      data: str(fields.data),
      channel: str(fields.channel),
      token: fields.token != null ? str(fields.token) : this.wsToken
    };
    if (fields.since) msg.since = str(fields.since);
    if (fields.snapshot) msg.snapshot = true;
    if (fields.filter) msg.filter = fields.filter;
    this._ws.send(JSON.stringify(msg));
  };

  Client.prototype._request = function (kind, fields, entry) {
    entry.kind = kind;
    this._inflight.push(entry);
    try {
      this._write(fields);
    } catch (e) {
      var i = this._inflight.indexOf(entry);
      if (i >= 0) this._inflight.splice(i, 1);
      if (entry.reject) entry.reject(e);
    }
  };

  Client.prototype._requestWhenReady = function (kind, fields) {
    var self = this;
    if (this._closedByUser) return Promise.reject(WalcastError("client closed"));
    return new Promise(function (resolve, reject) {
      var entry = { resolve: resolve, reject: reject, channel: fields.channel };
      if (self.connected) self._request(kind, fields, entry);
      else self._outbox.push({ kind: kind, fields: fields, entry: entry, reject: reject });
    });
  };

  Client.prototype._sendJoin = function (channel, waiter) {
    var fields = { type: "join", data: channel };
    var entry = this._channels.get(channel);
    var since = (isDbChannel(channel) && this._lastLsn.get(channel)) || (entry && entry.since) || "";
    // Resuming (a position is known) keeps the filter and needs no snapshot; without one, a
    // live query starts with its snapshot.
    if (since) fields.since = since;
    else if (entry && entry.snapshot) fields.snapshot = true;
    if (entry && entry.filter) fields.filter = entry.filter;
    this._request("join", fields, {
      channel: channel,
      snapshot: !!fields.snapshot,
      resolve: waiter ? waiter.resolve : null,
      reject: waiter ? waiter.reject : null
    });
  };

  Client.prototype._takeInflight = function (kind, channel) {
    for (var i = 0; i < this._inflight.length; i++) {
      var r = this._inflight[i];
      if (r.kind === kind && (channel === undefined || r.channel === channel)) {
        this._inflight.splice(i, 1);
        return r;
      }
    }
    return null;
  };

  Client.prototype._onFrame = function (raw) {
    var msg;
    try { msg = JSON.parse(raw); } catch (e) { return; }
    if (!msg || typeof msg !== "object") return;
    var type = msg.type, r;

    switch (type) {
      case "init":
        this.sid = str(msg.data);
        this._request("auth", {
          type: "auth",
          data: typeof this.sessionToken === "function" ? this.sessionToken() : this.sessionToken,
          channel: "",
          token: ""
        }, {});
        break;
      case "token":
        this._takeInflight("auth");
        this._onAuthenticated(str(msg.data));
        break;
      case "joined":
        r = this._takeInflight("join", str(msg.data)) || this._takeInflight("join");
        var joinedEntry = this._channels.get(str(msg.data));
        if (joinedEntry && joinedEntry.snapshot && msg.recovered === false) {
          // The server no longer holds what was missed: start over from a snapshot.
          this._lastLsn.delete(str(msg.data));
          this._sendJoin(str(msg.data), null);
        } else if (r && r.snapshot) {
          // Pages, then snapshot_end or an error, come before any later reply.
          this._inflight.unshift({ kind: "snapshot", channel: r.channel });
        }
        if (r && r.resolve) r.resolve(msg);
        break;
      case "snapshot":
      case "snapshot_end":
        var snapEntry = this._channels.get(str(msg.channel));
        var end = type === "snapshot_end";
        if (end) {
          this._takeInflight("snapshot", str(msg.channel));
          if (msg.lsn) this._lastLsn.set(str(msg.channel), str(msg.lsn));
        }
        if (snapEntry && snapEntry.onSnapshot) {
          var docs = [];
          if (!end) { try { docs = JSON.parse(str(msg.data)); } catch (e) { docs = []; } }
          try {
            snapEntry.onSnapshot(docs, { channel: str(msg.channel), end: end, lsn: end ? str(msg.lsn) : "" });
          } catch (e) { if (root.console) root.console.error(e); }
        }
        break;
      case "left":
        r = this._takeInflight("leave", str(msg.data)) || this._takeInflight("leave");
        if (r && r.resolve) r.resolve(msg);
        break;
      case "ok":
        r = this._takeInflight("chan_in");
        if (r && r.resolve) r.resolve(msg);
        break;
      case "echo":
        r = this._takeInflight("echo");
        if (r && r.resolve) r.resolve(msg);
        break;
      case "error":
        r = this._inflight.shift() || null;
        if (r && r.kind === "auth") {
          this._emit(msg);
          // Bad or not-yet-verifiable token (the server may be starting): report "closed" with the
          // reason, drop this socket and keep retrying with backoff.
          this._drop({ code: 0, reason: str(msg.data), auth: true });
          return;
        }
        if (r && r.kind === "snapshot") {
          var failed = this._channels.get(r.channel);
          if (failed && failed.onSnapshot) {
            try { failed.onSnapshot([], { channel: r.channel, end: false, error: str(msg.data) }); }
            catch (e) { if (root.console) root.console.error(e); }
          }
          break;
        }
        if (r && r.kind === "join") {
          var d = str(msg.data);
          if (d === "invalid channel name" || d === "reserved channel") this._channels.delete(r.channel);
        }
        if (r && r.reject) r.reject(WalcastError(str(msg.data), msg));
        break;
      default:
        // Resume from the exact event (its "pos"), so a transaction cut by a disconnect is
        // completed on rejoin; a bare "lsn" (older gateways) means after its transaction.
        var seen = msg.pos || msg.lsn;
        if (type && type.slice(0, 3) === "db_" && seen && isDbChannel(msg.channel)) {
          var prev = this._lastLsn.get(msg.channel);
          if (!prev || posGreater(seen, prev)) this._lastLsn.set(msg.channel, str(seen));
        }
    }
    this._emit(msg);
  };

  Client.prototype._onAuthenticated = function (wsToken) {
    var self = this;
    clearTimeout(this._authTimer);
    this._authTimer = null;
    this.wsToken = wsToken;
    this.connected = true;
    this._attempt = 0; // reset backoff after a successful auth
    this._setStatus("authenticated", { sid: this.sid });

    // Re-join every remembered channel; resolve callers waiting for their first join.
    this._channels.forEach(function (_v, channel) {
      var waiters = self._joinWaiters.get(channel) || [];
      self._joinWaiters.delete(channel);
      var first = waiters.length ? {
        resolve: function (m) { waiters.forEach(function (w) { w.resolve(m); }); },
        reject: function (e) { waiters.forEach(function (w) { w.reject(e); }); }
      } : null;
      self._sendJoin(channel, first);
    });
    // Then what was queued while offline, in order.
    this._outbox.splice(0).forEach(function (o) { self._request(o.kind, o.fields, o.entry); });

    if (this.keepaliveMs > 0) {
      var ws = this._ws;
      this._keepaliveTimer = setInterval(function () {
        if (self._ws !== ws) return;
        var answered = false;
        self._request("echo", { type: "echo", data: "keepalive" }, {
          resolve: function () { answered = true; }, reject: function () {}
        });
        setTimeout(function () {
          if (!answered && self._ws === ws) self._drop({ code: 0, reason: "keepalive timed out" });
        }, self.keepaliveMs);
      }, this.keepaliveMs);
    }
  };

  var Walcast = { Client: Client, parseLsn: parseLsn, STATUS: STATUS, version: "1" };

  if (typeof module !== "undefined" && module.exports) module.exports = Walcast;
  if (root) root.Walcast = Walcast;
})(typeof window !== "undefined" ? window : typeof globalThis !== "undefined" ? globalThis : this);
