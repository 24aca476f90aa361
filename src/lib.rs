//! walcast
