//! The subcommands: `watch` (and `debug`), `status` and `ui`, `down`, `sessions` and `gc`.

pub mod down;
pub mod sessions;
pub mod status;
pub mod watch;
