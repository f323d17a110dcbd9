//! The exit codes of `kdev-controller serve` (the CLI reads them when the exec ends).

/// The session ended: stdin closed, `bye`, or SIGTERM.
pub(super) const EXIT_OK: i32 = 0;
/// Bad input on stdin (a frame or message that cannot be read).
pub(super) const EXIT_BAD_INPUT: i32 = 2;
/// The handshake was refused (protocol version mismatch, not a hello).
pub(super) const EXIT_HANDSHAKE: i32 = 3;
/// Setup failed after the handshake (lock, sync root, directories).
pub(super) const EXIT_SETUP: i32 = 4;
