//! walcast: PostgreSQL logical replication → permission-filtered WebSocket events, over the
//! StaticBackend realtime protocol.
//!
//! Data path (`a → b` meaning a uses b: `ws → hub → event → permission`, `event → replication`,
//! and `ws`, `hub` → `protocol` → `permission`, `event`, `livequery`; `livequery` is the one
//! module used both ways, see docs/ARCHITECTURE.md):
//!
//! ```text
//! PostgreSQL WAL
//!   → walcast_replication   walsender stream, pgoutput decoder, whole committed transactions
//!   → event                 relation shapes → DocumentEvent{app, repo, id, change}
//!   → permission            read level of the repo × row account/owner × reader
//!   → hub                   channel index → subscribers; each frame encoded once into Bytes
//!   → ws                    per-connection bounded outbox → one writer task per socket
//! client frames → ws → protocol (parse, validate) → hub (join / leave / chan_in)
//! acknowledgement: the window log made a transaction durable → its end LSN is confirmed to
//! PostgreSQL (with resume off: once the hub accepted it)
//! ```
//!
//! Public modules: what the `walcast` binary (`src/cli/`), the integration tests, benches,
//! examples and fuzz targets use. Inside them, items only the library uses are `pub(crate)` unless
//! a public signature names them (`hub` and `protocol` keep their vocabulary public whole).
//! - [`protocol`]: the wire vocabulary, parsed once at the edge: [`protocol::Request`],
//!   [`protocol::Channel`], [`protocol::CloseReason`]; server envelopes; WebSocket frame bytes.
//! - [`event`]: transactions → document events ([`event::DocumentEvent`]); the one repo rule
//!   ([`event::repo`]).
//! - [`permission`]: read levels and who may read a row.
//! - [`hub`]: channel membership, custom-channel publish, db event dispatch, outboxes, the resume
//!   window (recent transactions replayed to `join` with `since`).
//! - [`ws`]: socket reader/writer tasks, the protocol session (shared by both transports), limits;
//!   public only its frame reader ([`ws::inbound`]), permessage-deflate ([`ws::deflate`]) and
//!   [`ws::WsConfig`].
//! - [`auth`]: session JWT verification against the app's `sb_tokens`; public only
//!   [`auth::issue_token`].
//! - [`db`]: the gateway's ordinary PostgreSQL connection.
//! - [`schema`]: embedded SQL (StaticBackend layout, gateway preparation, demo app).
//! - [`gateway`]: wiring and ordered shutdown.
//! - [`config`]: `serve` settings (flags over env over TOML file).
//! - [`rules`]: per-channel access rules (join, write, read, presence, history, room metadata).
//! - [`telemetry`]: Prometheus metrics; public only [`telemetry::render`].
//! - [`tls`]: rustls on the listener, certificate re-read on SIGHUP.
//! - [`tail`]: `walcast tail`, document events as JSON lines from a temporary slot.
//!
//! Private modules:
//! - `sse`: the Server-Sent Events transport (`/sse/connect`, `/sse/msg`) over the same session.
//! - `publish`: custom-channel publishing for `chan_in` and the server publish API (data
//!   limit, idempotency keys) behind the traits a cluster implementation fills.
//! - `livequery`: `join` with a subscription filter and/or a snapshot consistent with the
//!   stream by xid; members grouped by filter.
//! - `cluster`: cluster mode: slot lease, transactions through NATS JetStream, custom
//!   channels across nodes.
//! - `http`: routes: `/ws`, `/sse/*`, `/publish`, `/healthz`, `/readyz`, `/metrics`,
//!   `/client.js`, `/`, `/dashboard`, `/demo/*`.
//! - `journal`: the resume window's durable log (on one node, checksummed segment files in the
//!   data directory).
//! - `pipeline`: slot → events → hub and window log → slot confirmed once durable.
//! - `allocator`: hands heap a burst freed back to the OS (periodic `malloc_trim` on glibc).

mod allocator;
pub mod auth;
mod cluster;
pub mod config;
pub mod db;
pub mod event;
pub mod gateway;
mod http;
pub mod hub;
mod journal;
mod livequery;
pub mod permission;
mod pipeline;
pub mod protocol;
mod publish;
pub mod rules;
pub mod schema;
mod sse;
pub mod tail;
pub mod telemetry;
pub mod tls;
pub mod ws;
