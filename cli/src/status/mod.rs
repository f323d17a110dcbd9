//! Seeing the loop: a session's state (each service's state, reload history with phases,
//! percentiles, build errors with their places, logs), kept in one [`Hub`] and shown three
//! ways:
//!
//! - on a terminal, a live block below the log lines ([`term_block`]);
//! - in a browser, `kdev watch --ui` or `kdev ui`: a page and its JSON API on 127.0.0.1 behind
//!   a token ([`server`], `API.md`), whose buttons rebuild, restart and pause a service;
//! - `kdev status [-o json]` from any terminal, through the same API ([`client`]), finding
//!   running sessions in the [`registry`].

pub mod client;
pub mod hub;
pub mod locations;
pub mod log;
pub mod model;
pub mod registry;
pub mod server;
pub mod term_block;

pub use hub::{Command, Hub, ServiceHandle};
pub use model::State;
