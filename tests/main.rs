//! Integration tests: real PostgreSQL (private, per test), real gateway, real WebSocket clients.

mod support;

mod bench;
mod browser;
mod cli;
mod cluster;
mod crash;
mod db_events;
mod durability;
mod flood;
mod framing;
mod http;
mod lifecycle;
mod livequery;
mod permissions;
mod protocol;
mod publish;
mod repo_rule;
mod resume;
mod rooms;
mod sb_layout;
mod sse;
mod startup;
mod staticbackend_js;
mod tail;
mod transport;
