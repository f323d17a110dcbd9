//! The wire protocol between the `kdev` CLI and the in-pod `kdev-controller serve`.
//!
//! Both sides depend on this crate, so it stays light: serde, serde_json, thiserror, blake3
//! and (behind the `tokio` feature) tokio's I/O traits. It holds no process handling.
//!
//! # Modules
//!
//! * The protocol: [`wire`] (the bytes: frames and payloads, one encoder and one decoder),
//!   [`messages`] (what is said), [`codec`] (typed by direction: [`ClientCodec`] and
//!   [`ServerCodec`]; async with the `tokio` feature, blocking `std::io` with the `blocking`
//!   feature), [`handshake`], [`error_code`], [`status`] (the supervisor's status, also sent
//!   in the Welcome), [`hash`] and [`paths`] (what both sides must agree on about files).
//! * Values both sides share outside the stream: [`layout`] (the pod's `/kdev`), [`labels`]
//!   (Kubernetes label and annotation keys), [`signal`] and [`duration`] (how users write
//!   them).
//!
//! # Transport
//!
//! One long-lived byte stream (the exec stream's stdin/stdout). The stream carries **frames**:
//! a `u32` big-endian length followed by that many payload bytes. A frame larger than
//! [`MAX_FRAME_SIZE`] is refused *before* anything is allocated for it ([`wire`]).
//!
//! # Message encoding
//!
//! A frame's payload is one message: a `u32` big-endian header length, the header as JSON
//! (UTF-8), then an optional raw binary body ([`ClientMessage::Patch`]: its tar;
//! [`ClientMessage::ModuleResponse`]: a part of a module file).
//! See [`wire`].
//!
//! Why JSON plus raw bytes rather than a compact binary serde format (postcard, bincode):
//!
//! * The only bulky data is file content, and it travels as raw bytes in the body, never
//!   through serde, so JSON's size overhead only applies to small control messages (a
//!   reconcile listing of 10 000 files is about 1.5 MB, once per session, split into several
//!   messages when larger).
//! * JSON is self-describing: a newer peer can add fields and an older one ignores them, and the
//!   handshake can read `protocol_version` out of a `Hello` whose other fields it does not
//!   understand, so a version mismatch always produces the clear error rather than a decode
//!   failure. Positional formats cannot do that.
//! * It is debuggable (`kdev-controller serve` logs and test failures show readable messages),
//!   and `serde_json` is already a dependency of the CLI.
//!
//! # Conversation
//!
//! 1. Client → [`ClientMessage::Hello`] (protocol version, client version, [`SessionConfig`]).
//!    Server → [`ServerMessage::Welcome`], or [`ServerMessage::Error`] with
//!    [`ErrorCode::ProtocolVersionMismatch`] and exits non-zero. `handshake::client_handshake`
//!    (feature `tokio`) does this step.
//! 2. Client → [`ClientMessage::Reconcile`] with [`Reconcile::digest_first`]; server →
//!    [`ServerMessage::ListingDigest`] and keeps the listing. The client compares the digest
//!    with its own listing's ([`listing_digest`]) and sends [`ClientMessage::ReconcileContinue`]:
//!    `send: false` when they are equal (nothing more), `send: true` for
//!    [`ServerMessage::ReconcileResult`] with every entry under the sync root ([`Entry`]: path,
//!    kind, size, mode, BLAKE3 hash), in several messages for a large tree (`more: true` on all
//!    but the last). Without `digest_first` the listing comes at once.
//! 3. Client → [`ClientMessage::Patch`] (deletions + a tar of changed files); server →
//!    [`ServerMessage::PatchResult`], then, if a build runs, [`Event`]s: `BuildStarted`,
//!    `BuildFinished`, `Restarted`, `Ready` (and `AppStarted`, `AppExited`, `AppOutput`,
//!    `Warning` at any time). A build whose binary is byte-identical to the one the app is
//!    running ends with `BuildFinished` `unchanged: true` and nothing after it (no install, no
//!    restart). [`ClientMessage::Build`] builds whatever changed. A quick rebuild is later
//!    proven by an idle shadow `go build`: `BuildVerified`, or a `Warning`
//!    (`quick_build_differs`).
//! 4. With [`SessionConfig::module_proxy`], [`ServerMessage::ModuleRequest`] at any time (a go
//!    command in the pod asked the proxy, [`module_proxy`]); the client answers with
//!    [`ClientMessage::ModuleResponse`] parts, out of order with anything else.
//! 5. [`ClientMessage::Ping`] at any time (answered by [`ServerMessage::Pong`] as soon as it is
//!    read). The client closes stdin (or sends [`ClientMessage::Bye`]) to end the session.
//!
//! Every message with its fields and when it is sent: `controller/README.md`, "Protocol".
//!
//! Requests carry a client-chosen `id` that the matching response echoes.

pub mod codec;
pub mod duration;
pub mod error_code;
pub mod handshake;
pub mod hash;
pub mod hash_cache;
pub mod labels;
pub mod layout;
pub mod messages;
pub mod module_proxy;
pub mod paths;
pub mod relay;
pub mod signal;
pub mod status;
pub mod wire;

pub use codec::{ClientCodec, Codec, ServerCodec};
pub use duration::{DurationError, parse_duration};
pub use error_code::ErrorCode;
pub use handshake::{HandshakeError, check_hello};
pub use hash::{ContentHash, hash_bytes, hash_file, hash_reader, listing_digest};
pub use layout::Layout;
pub use messages::*;
pub use paths::{PathError, normalize_wire_path, wire_path_from_relative};
pub use signal::{Signal, SignalError};
pub use status::{AppState, AppStatus, ExitInfo, FileId, RestartInfo};
pub use wire::{CodecError, Frame, FrameError, MAX_FRAME_SIZE, WireMessage};

/// The protocol version this crate speaks. Bump it on any incompatible change to the framing
/// or to the meaning of existing messages; additive fields do not need a bump.
///
/// 2: `reconcile_result` comes in parts (`more`); `patch_result` lists are capped (counts in
/// `*_count`); `deletes` are limited (`limits.max_deletes`).
/// 3: `reconcile` may ask for the listing's digest first (`listing_digest`, then
/// `reconcile_continue`). Later, without a bump: the client message `restart` is gone (no
/// kdev ever sent it, so no session of protocol 3 between kdev and its controller changes).
/// 4: the module proxy (`config.module_proxy`, `module_request`, `module_response`,
/// `welcome.module_env`).
/// 5: the client message `restart` again, now sent (the status page's restart button).
pub const PROTOCOL_VERSION: u32 = 5;

/// The version of this crate (and of the controller and CLI built with it).
pub const CRATE_VERSION: &str = env!("CARGO_PKG_VERSION");
