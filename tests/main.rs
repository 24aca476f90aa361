//! Integration tests: real PostgreSQL (private, per test), real gateway, real WebSocket clients.

mod support;

mod db_events;
mod protocol;
