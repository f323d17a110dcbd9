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

pub use hub::{Command, Hub, ServiceHandle, write_stderr};

/// `tracing`'s writer: each event's text goes through [`write_stderr`] as one piece.
pub struct StderrLines;

/// One event's text, written when dropped.
pub struct StderrLine(Vec<u8>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for StderrLines {
    type Writer = StderrLine;

    fn make_writer(&'a self) -> StderrLine {
        StderrLine(Vec::new())
    }
}

impl std::io::Write for StderrLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for StderrLine {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            write_stderr(&String::from_utf8_lossy(&self.0));
        }
    }
}
pub use model::State;
