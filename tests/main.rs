//! Integration tests: real PostgreSQL (private, per test), real gateway, real WebSocket clients.

mod support;

mod cli;
mod db_events;
mod http;
mod protocol;
mod tail;
