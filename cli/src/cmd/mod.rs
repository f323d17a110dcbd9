//! The subcommands: `watch` (and `debug`), `down`, `sessions` and `gc`.

pub mod down;
pub mod sessions;
pub mod watch;
