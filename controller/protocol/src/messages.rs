//! Message types. Client → server: [`ClientMessage`]; server → client: [`ServerMessage`].
//!
//! JSON shape: both enums are internally tagged by `"type"` (snake_case), e.g.
//! `{"type":"ping","id":3}`; [`Event`]s are tagged by `"kind"`. Durations are milliseconds in
//! fields ending in `_ms`; wall-clock times are Unix milliseconds in fields ending in `_at_ms`.
//! Paths on the wire are relative to the sync root, `/`-separated, never `..` or absolute (see
//! [`crate::paths`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error_code::ErrorCode;
use crate::status::AppStatus;
use crate::wire::{CodecError, WireMessage};

// ---------------------------------------------------------------------------------------------
// Client → server
// ---------------------------------------------------------------------------------------------

/// Everything the client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// First message of a session.
    Hello(Hello),
    /// Ask for the listing of the sync root.
    Reconcile(Reconcile),
    /// After a [`ServerMessage::ListingDigest`]: send the listing it describes, or drop it.
    ReconcileContinue(ReconcileContinue),
    /// Deletions plus a tar of added/changed files (the tar is the frame's binary body).
    Patch(Patch),
    /// Build now, whatever changed (e.g. the user pressed "rebuild").
    Build(BuildRequest),
    /// Restart the app without building (protocol 5: the status page's "restart" button).
    Restart(RestartRequest),
    /// Liveness check; answered by [`ServerMessage::Pong`].
    Ping(Ping),
    /// The answer to a [`ServerMessage::ModuleRequest`], in one or more parts (the body is the
    /// frame's binary body).
    ModuleResponse(ModuleResponse),
    /// End the session cleanly (closing stdin does the same).
    Bye,
}

/// The handshake request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Must equal the server's [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The client's version string (e.g. `kdev 0.3.1`), shown in mismatch errors.
    pub client_version: String,
    #[serde(default)]
    pub config: SessionConfig,
}

/// Per-session settings chosen by the CLI (from kdev.yaml). Every field has a default, so `{}`
/// is valid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionConfig {
    /// Absolute sync root in the pod; `None` = the controller's `--src-dir` (default `/kdev/src`).
    pub sync_root: Option<String>,
    pub build: BuildConfig,
    /// The app's TCP port; when set, `Ready` is reported once `127.0.0.1:<port>` accepts.
    pub app_port: Option<u16>,
    /// How long to wait for the port after a restart before reporting `NotReady` (default 60 s).
    pub ready_timeout_ms: Option<u64>,
    /// Which changed paths trigger a build in [`BuildMode::Auto`]: each pattern is either a
    /// suffix starting with `.` (`.go`), or a file name (`go.mod`) matched against the last path
    /// component, or a directory prefix ending in `/` (`assets/`). `None` = every change
    /// triggers a build (the safe default: `//go:embed` can pull in any file).
    pub build_inputs: Option<Vec<String>>,
    /// Forward the app's stdout/stderr lines as [`Event::AppOutput`] (default true).
    pub forward_app_output: bool,
    /// Serve the pod's go commands a module proxy over this session (protocol 4): `None` =
    /// no proxy, go uses the image's settings (and `build.env`'s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module_proxy: Option<ModuleProxyConfig>,
}

/// The module proxy's settings, from the developer's machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModuleProxyConfig {
    /// `GONOSUMDB` for the pod's go commands: the developer's `go env GONOSUMDB` (their
    /// `GOPRIVATE` unless set), so go never asks a public checksum database about their
    /// private modules.
    pub nosumdb: String,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            sync_root: None,
            build: BuildConfig::default(),
            app_port: None,
            ready_timeout_ms: None,
            build_inputs: None,
            forward_app_output: true,
            module_proxy: None,
        }
    }
}

/// How to build the app. The default command is
/// `go build -o <bin-dir>/app.next <flags...> <package>` run in the sync root with
/// `CGO_ENABLED=0` and GOCACHE/GOMODCACHE on the cache volume.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BuildConfig {
    /// Replace the whole command (argv, no shell). `{output}` and `{package}` in any argument are
    /// replaced by the output path (`app.next`) and the package. The command must write the
    /// binary to `{output}`.
    pub command: Option<Vec<String>>,
    /// Package to build, relative to the sync root (default `.`).
    pub package: Option<String>,
    /// Extra flags for `go build` (e.g. `-gcflags=all=-N -l`, `-tags=dev`), inserted before the
    /// package. Ignored when `command` is set.
    pub flags: Vec<String>,
    /// Extra environment for the build; overrides the controller's defaults.
    pub env: BTreeMap<String, String>,
    /// Shell commands run in the sync root before each build, in order (e.g. `go generate ./...`);
    /// the first that fails fails the build, with its output, and the old app keeps running.
    /// They run in the build's process group, so a newer patch cancels them too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub before: Vec<String>,
}

/// Request the sync root listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reconcile {
    pub id: u64,
    /// Answer with the listing's digest first ([`ServerMessage::ListingDigest`]) and keep the
    /// listing until a [`ReconcileContinue`] with this id says whether to send it: a client
    /// whose own listing has the same digest needs none of it (a restart on an unchanged tree).
    #[serde(default)]
    pub digest_first: bool,
}

/// Whether the listing kept after a [`ListingDigest`] is wanted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReconcileContinue {
    pub id: u64,
    /// `true`: send it as [`ReconcileResult`] parts with the same id; `false`: drop it. A
    /// patch since the digest makes the kept listing out of date: `true` is then answered
    /// with a non-fatal `reconcile_failed` error (with the id), and the client lists again.
    pub send: bool,
}

/// The digest of a listing ([`crate::listing_digest`]), sent before the listing itself when
/// [`Reconcile::digest_first`] asked for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListingDigest {
    pub id: u64,
    pub digest: String,
    /// Entries in the listing.
    pub entries: u32,
    pub elapsed_ms: u64,
    /// Files whose hash came from the cache rather than being read.
    pub cached: u32,
}

/// The most deletions one patch may carry (the server advertises its own limit, at most this,
/// in [`PatchLimits::max_deletes`]).
pub const MAX_DELETES: u32 = 100_000;

/// A change set. Deletions are applied first, then the tar's entries in order, so a rename is a
/// delete plus an add and a file can be replaced by a directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Patch {
    pub id: u64,
    /// Paths to delete (files, symlinks, or whole directories). Missing paths are not errors.
    /// At most [`PatchLimits::max_deletes`]; decoding keeps at most [`MAX_DELETES`] + 1 of them
    /// (the rest is parsed and dropped), so a receiver sees that a list is over the limit
    /// without holding millions of strings.
    #[serde(default, deserialize_with = "bounded_deletes")]
    pub deletes: Vec<String>,
    #[serde(default)]
    pub build: BuildMode,
    /// An uncompressed tar (ustar/GNU/PAX) of regular files, directories and in-root symlinks.
    /// Travels as the frame's binary body, not in the JSON.
    #[serde(skip)]
    pub tar: Vec<u8>,
}

fn bounded_deletes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Bounded;
    impl<'de> serde::de::Visitor<'de> for Bounded {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of paths")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let keep = MAX_DELETES as usize + 1;
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(keep));
            while v.len() < keep {
                match seq.next_element::<String>()? {
                    Some(p) => v.push(p),
                    None => return Ok(v),
                }
            }
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(v)
        }
    }
    d.deserialize_seq(Bounded)
}

/// Whether a patch should be followed by a build.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildMode {
    /// Build if the patch touched a build input, or if the tree is still unbuilt (a previous
    /// build failed or was cancelled, or no app binary exists). An empty patch in this mode means
    /// "build if needed" (send it after the initial reconcile).
    #[default]
    Auto,
    /// Build even if nothing relevant changed.
    Always,
    /// Do not build (the tree is still marked as needing one).
    Never,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildRequest {
    pub id: u64,
}

/// Restart the running app as a reload would; its `Restarted`/`Ready` events carry `id` as
/// their `build_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestartRequest {
    pub id: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    pub id: u64,
}

/// The most body bytes one [`ModuleResponse`] part carries: a module zip (up to 500 MB) comes
/// in parts, so other messages are not stuck behind one giant frame.
pub const MODULE_RESPONSE_PART: usize = 1 << 20;

/// A part of the answer to [`ModuleRequest`] `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleResponse {
    pub id: u64,
    pub status: ModuleStatus,
    /// Why it failed, from the developer's machine (go's own error, or the cache's): shown to
    /// the pod's go command as the response body, so it lands in the build's output.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The total size of the body (every part), known before the first part.
    #[serde(default)]
    pub size: u64,
    /// More parts follow (same id); the body is their concatenation.
    #[serde(default)]
    pub more: bool,
    /// Up to [`MODULE_RESPONSE_PART`] bytes of the file. Travels as the frame's binary body.
    #[serde(skip)]
    pub body: Vec<u8>,
}

/// How a module request ended on the developer's machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleStatus {
    /// The body is the file.
    Ok,
    /// No such module or version (HTTP 404 to go, which then says "not found").
    NotFound,
    /// It could not be had (no network, no credential, a bad zip): HTTP 502 to go.
    Failed,
}

impl WireMessage for ClientMessage {
    fn body(&self) -> &[u8] {
        match self {
            ClientMessage::Patch(p) => &p.tar,
            ClientMessage::ModuleResponse(r) => &r.body,
            _ => &[],
        }
    }
    fn set_body(&mut self, body: Vec<u8>) -> Result<(), CodecError> {
        match self {
            ClientMessage::Patch(p) => {
                p.tar = body;
                Ok(())
            }
            ClientMessage::ModuleResponse(r) => {
                r.body = body;
                Ok(())
            }
            _ if body.is_empty() => Ok(()),
            other => Err(CodecError::UnexpectedBody(other.kind())),
        }
    }
    fn from_header(header: &[u8]) -> Result<Self, serde_json::Error> {
        // Read the tag first (every other field is skipped, not stored), then decode the
        // variant's own struct, streaming: the same result as the derived decoding, without
        // buffering a hostile frame's fields.
        #[derive(Deserialize)]
        struct Tag {
            #[serde(rename = "type")]
            ty: String,
        }
        const VARIANTS: &[&str] = &[
            "hello",
            "reconcile",
            "reconcile_continue",
            "patch",
            "build",
            "restart",
            "ping",
            "module_response",
            "bye",
        ];
        let Tag { ty } = serde_json::from_slice(header)?;
        let h = header;
        Ok(match ty.as_str() {
            "hello" => ClientMessage::Hello(serde_json::from_slice(h)?),
            "reconcile" => ClientMessage::Reconcile(serde_json::from_slice(h)?),
            "reconcile_continue" => ClientMessage::ReconcileContinue(serde_json::from_slice(h)?),
            "patch" => ClientMessage::Patch(serde_json::from_slice(h)?),
            "build" => ClientMessage::Build(serde_json::from_slice(h)?),
            "restart" => ClientMessage::Restart(serde_json::from_slice(h)?),
            "ping" => ClientMessage::Ping(serde_json::from_slice(h)?),
            "module_response" => ClientMessage::ModuleResponse(serde_json::from_slice(h)?),
            "bye" => ClientMessage::Bye,
            other => return Err(serde::de::Error::unknown_variant(other, VARIANTS)),
        })
    }
    fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Hello(_) => "hello",
            ClientMessage::Reconcile(_) => "reconcile",
            ClientMessage::ReconcileContinue(_) => "reconcile_continue",
            ClientMessage::Patch(_) => "patch",
            ClientMessage::Build(_) => "build",
            ClientMessage::Restart(_) => "restart",
            ClientMessage::Ping(_) => "ping",
            ClientMessage::ModuleResponse(_) => "module_response",
            ClientMessage::Bye => "bye",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server → client
// ---------------------------------------------------------------------------------------------

/// Everything the server sends.
// The Welcome is the large variant and comes once per session: not worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Welcome(Welcome),
    /// A request failed (`fatal == false`, the session goes on) or the session ends
    /// (`fatal == true`, the server exits non-zero after sending it).
    Error(ErrorMessage),
    ReconcileResult(ReconcileResult),
    ListingDigest(ListingDigest),
    PatchResult(PatchResult),
    /// Something happened; `at_ms` is milliseconds since `serve` started (just before the
    /// handshake), on its monotonic clock, so phases can be laid out on one time line.
    Event {
        at_ms: u64,
        event: Event,
    },
    Pong(Ping),
    /// A go command in the pod asked the module proxy for `path`: answer with
    /// [`ClientMessage::ModuleResponse`] parts carrying the same id.
    ModuleRequest(ModuleRequest),
}

/// One request to the module proxy ([`crate::module_proxy`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRequest {
    pub id: u64,
    /// Below the proxy's root, escaped as go sent it; the controller only sends paths that
    /// [`crate::module_proxy::ProxyPath::parse`] accepts (the CLI checks again).
    pub path: String,
}

/// The handshake answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol_version: u32,
    /// e.g. `0.1.0`.
    pub controller_version: String,
    /// The effective sync root (absolute path in the pod).
    pub sync_root: String,
    /// Where the built app lives (`/kdev/bin/app`).
    pub app_binary: String,
    pub app_binary_present: bool,
    /// True when the tree has changes that were never built successfully, or no app binary
    /// exists. A `Patch` with `build: auto` (possibly empty) will build.
    pub needs_build: bool,
    /// PID of `kdev-controller supervise` (from its PID file), if one is running.
    pub supervisor_pid: Option<u32>,
    /// The supervisor's last status report, if any.
    pub app_status: Option<AppStatus>,
    /// Largest frame the server accepts.
    pub max_frame_size: u32,
    pub limits: PatchLimits,
    /// What the controller sets for its go commands when `config.module_proxy` asked for the
    /// proxy (`GOPROXY`, `GONOPROXY`, …); empty without it. Other go commands the CLI runs in
    /// the pod during the session (building Delve) use them too.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub module_env: BTreeMap<String, String>,
}

/// Limits the server enforces on one patch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchLimits {
    pub max_entries: u32,
    pub max_file_size: u64,
    pub max_total_size: u64,
    /// Largest PAX extended header or GNU long name/link the server accepts.
    pub max_extension_header: u64,
    /// Most deletions in one patch; a patch with more is refused as a whole (error
    /// `too_many_deletes`): split it.
    pub max_deletes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// Stable machine-readable code (see [`ErrorCode`] for which are fatal).
    pub code: ErrorCode,
    /// Human-readable, says what to do.
    pub message: String,
    pub fatal: bool,
    /// The request this answers, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
}

/// The sync root listing, in one or more messages (a large tree does not fit in one frame):
/// every message but the last has `more: true`; the listing is the concatenation of their
/// `entries` and `skipped` ([`ReconcileResult::absorb`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReconcileResult {
    pub id: u64,
    pub root: String,
    /// Every file, directory (empty or not) and symlink under the root, sorted by path. The
    /// root itself is not listed.
    pub entries: Vec<Entry>,
    /// Names that cannot be represented (not UTF-8) or could not be read, with the reason.
    #[serde(default)]
    pub skipped: Vec<Refused>,
    pub elapsed_ms: u64,
    /// Files whose hash came from the cache rather than being read.
    pub cached: u32,
    /// More of this listing follows in the next `reconcile_result` with the same id.
    #[serde(default)]
    pub more: bool,
}

impl ReconcileResult {
    /// Append the next part of the same listing.
    pub fn absorb(&mut self, next: ReconcileResult) {
        self.entries.extend(next.entries);
        self.skipped.extend(next.skipped);
        self.elapsed_ms = next.elapsed_ms;
        self.cached = next.cached;
        self.more = next.more;
    }
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative, `/`-separated.
    pub path: String,
    pub kind: EntryKind,
    /// Bytes for files, target length for symlinks, 0 for directories.
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// BLAKE3 of the content, lowercase hex (files only); see [`crate::hash`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// Symlink target as stored (symlinks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// The [`Refused::path`] of a refusal that concerns a whole patch's archive (nothing of that
/// patch was applied).
pub const ARCHIVE_PATH: &str = "<archive>";

/// A path that was not applied (or not listed), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// The entry's path as given (may be unsafe, e.g. `../x`; `<archive>` for archive-level
    /// errors).
    pub path: String,
    pub reason: String,
}

/// The outcome of one patch. Valid entries are applied even when others are refused; `complete`
/// says whether everything was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchResult {
    pub id: u64,
    /// True when every deletion and every tar entry was applied.
    pub complete: bool,
    /// Paths written (files, symlinks) or created (directories), in archive order: the first
    /// ones only (the server caps each list, 1000 today); `applied_count` counts them all.
    pub applied: Vec<String>,
    /// Deletion paths handled (including ones that were already absent); capped the same way.
    pub deleted: Vec<String>,
    /// Entries and deletions that were not applied, with the reason; capped the same way.
    pub refused: Vec<Refused>,
    #[serde(default)]
    pub applied_count: u64,
    #[serde(default)]
    pub deleted_count: u64,
    #[serde(default)]
    pub refused_count: u64,
    /// Regular files written and their total bytes.
    pub files: u32,
    pub bytes: u64,
    /// Time to apply, from receipt of the frame.
    pub elapsed_ms: u64,
    /// The build this patch cancelled (it was running when the patch arrived).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_build: Option<u64>,
    /// The build started after this patch, if any (its events follow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<u64>,
}

/// Asynchronous notifications, wrapped in [`ServerMessage::Event`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    BuildStarted {
        build_id: u64,
        /// Patches whose changes this build includes.
        patch_ids: Vec<u64>,
        /// The `Build` request that asked for it, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<u64>,
        command: Vec<String>,
    },
    BuildFinished {
        build_id: u64,
        outcome: BuildOutcome,
        exit_code: Option<i32>,
        elapsed_ms: u64,
        /// Combined stdout+stderr, sync-root prefixes stripped (paths are relative, `./x.go`).
        output: String,
        output_truncated: bool,
        /// The new binary was moved to the app path (only on success; never with `unchanged`).
        installed: bool,
        /// The build succeeded with a binary byte-identical to the installed one, which the
        /// supervisor reports running: it was not installed and the app was not restarted (no
        /// `Restarted` or `Ready` follows), and the tree counts as built. Only when the app is
        /// running its installed binary; otherwise an identical binary is installed and
        /// (re)started as any other (`installed: true`, `unchanged: false`). Absent means false
        /// (added in protocol 2 without a version bump: older clients ignore it).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unchanged: bool,
    },
    /// The supervisor started the new binary after a build (`build_id` names it).
    Restarted {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        build_id: Option<u64>,
        pid: u32,
        /// From sending SIGHUP to seeing the new PID.
        elapsed_ms: u64,
        /// Of that, how long stopping the old process took (from the supervisor's status).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stop_ms: Option<u64>,
        /// The supervisor's forward relay port, as in `AppStarted` (the first start after the
        /// first build is a `Restarted`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay_port: Option<u16>,
    },
    /// The app's port accepts connections.
    Ready {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        build_id: Option<u64>,
        pid: u32,
        port: u16,
        /// From the new process starting to the port accepting.
        elapsed_ms: u64,
        /// From sending SIGHUP to the port accepting.
        since_signal_ms: u64,
    },
    /// The port did not accept in time, or the app exited first.
    NotReady {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        build_id: Option<u64>,
        port: u16,
        waited_ms: u64,
        reason: String,
    },
    /// Restart could not be requested or did not happen (e.g. no supervisor PID file).
    RestartFailed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        build_id: Option<u64>,
        reason: String,
    },
    /// The supervisor started a process that serve did not ask for (crash restart, first start).
    AppStarted {
        pid: u32,
        starts: u64,
        /// The supervisor's forward relay port ([`crate::AppStatus::relay_port`]): a first start
        /// may come after the `Welcome`, and a new supervisor has a new port. Absent from older
        /// controllers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay_port: Option<u16>,
    },
    AppExited {
        pid: u32,
        code: Option<i32>,
        signal: Option<i32>,
        /// True when the supervisor stopped it (restart or shutdown), false for a crash/exit.
        expected: bool,
        runtime_ms: u64,
        /// When the supervisor will start it again (crash backoff).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next_start_in_ms: Option<u64>,
        /// The app's last output lines (up to 20).
        last_output: Vec<OutputLine>,
    },
    AppOutput {
        pid: u32,
        stream: Stream,
        line: String,
    },
    /// Output lines were dropped because the client did not keep up.
    AppOutputDropped {
        lines: u64,
    },
    Warning {
        code: String,
        message: String,
    },
    /// The shadow build of quick rebuild `build_id` (a `go build` of the same tree, run when the
    /// session was idle) gave the same binary: the quick rebuild is proven. A difference is a
    /// `Warning` (code `quick_build_differs`) followed by the restart with go build's binary.
    BuildVerified {
        build_id: u64,
        /// The shadow build's duration.
        elapsed_ms: u64,
        /// Quick rebuilds proven this session so far.
        verified: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildOutcome {
    Succeeded,
    /// The command exited non-zero (compile error).
    Failed,
    /// Killed because a newer patch arrived.
    Cancelled,
    /// Could not run at all (command not found, output missing, rename failed).
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputLine {
    pub stream: Stream,
    pub line: String,
}

impl WireMessage for ServerMessage {
    fn kind(&self) -> &'static str {
        match self {
            ServerMessage::Welcome(_) => "welcome",
            ServerMessage::Error(_) => "error",
            ServerMessage::ReconcileResult(_) => "reconcile_result",
            ServerMessage::ListingDigest(_) => "listing_digest",
            ServerMessage::PatchResult(_) => "patch_result",
            ServerMessage::Event { .. } => "event",
            ServerMessage::Pong(_) => "pong",
            ServerMessage::ModuleRequest(_) => "module_request",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shapes_are_stable() {
        let m = ClientMessage::Ping(Ping { id: 3 });
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"type":"ping","id":3}"#
        );
        let e = ServerMessage::Event {
            at_ms: 5,
            event: Event::AppOutputDropped { lines: 2 },
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"type":"event","at_ms":5,"event":{"kind":"app_output_dropped","lines":2}}"#
        );
        let h: ClientMessage =
            serde_json::from_str(r#"{"type":"hello","protocol_version":1,"client_version":"x"}"#)
                .unwrap();
        match h {
            ClientMessage::Hello(h) => assert!(h.config.forward_app_output),
            _ => panic!(),
        }
        let b: ClientMessage = serde_json::from_str(r#"{"type":"bye"}"#).unwrap();
        assert_eq!(b, ClientMessage::Bye);
    }

    #[test]
    fn build_finished_unchanged_is_omitted_when_false_and_defaults_to_false() {
        let ev = |unchanged: bool| Event::BuildFinished {
            build_id: 2,
            outcome: BuildOutcome::Succeeded,
            exit_code: Some(0),
            elapsed_ms: 9,
            output: String::new(),
            output_truncated: false,
            installed: !unchanged,
            unchanged,
        };
        let old = r#"{"kind":"build_finished","build_id":2,"outcome":"succeeded","exit_code":0,"elapsed_ms":9,"output":"","output_truncated":false,"installed":true}"#;
        assert_eq!(serde_json::to_string(&ev(false)).unwrap(), old);
        assert_eq!(serde_json::from_str::<Event>(old).unwrap(), ev(false));
        let new = serde_json::to_string(&ev(true)).unwrap();
        assert!(
            new.ends_with(r#""installed":false,"unchanged":true}"#),
            "{new}"
        );
        assert_eq!(serde_json::from_str::<Event>(&new).unwrap(), ev(true));
    }

    #[test]
    fn header_decoding_agrees_with_the_derived_one() {
        use crate::wire::WireMessage;
        for json in [
            r#"{"type":"hello","protocol_version":2,"client_version":"x","config":{"app_port":8080}}"#,
            r#"{"id":1,"type":"reconcile"}"#,
            r#"{"type":"patch","id":3,"deletes":["a","b"],"build":"always"}"#,
            r#"{"type":"patch","id":4}"#,
            r#"{"type":"build","id":5}"#,
            r#"{"type":"restart","id":6}"#,
            r#"{"type":"ping","id":7,"future":[1,2]}"#,
            r#"{"type":"bye"}"#,
        ] {
            let derived: ClientMessage = serde_json::from_str(json).unwrap();
            assert_eq!(
                ClientMessage::from_header(json.as_bytes()).unwrap(),
                derived
            );
        }
        for bad in [
            r#"{"type":"format_disk"}"#,
            r#"{"id":1}"#,
            r#"{"type":["ping"]}"#,
            r#"{"type":"ping"}"#,
            "[]",
        ] {
            assert!(serde_json::from_str::<ClientMessage>(bad).is_err());
            assert!(ClientMessage::from_header(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn deletes_are_decoded_up_to_one_over_the_limit() {
        let decode = |n: usize| {
            let list = vec!["\"a\""; n].join(",");
            let json = format!(r#"{{"type":"patch","id":1,"deletes":[{list}],"build":"never"}}"#);
            match serde_json::from_str::<ClientMessage>(&json).unwrap() {
                ClientMessage::Patch(p) => (p.deletes.len(), p.build),
                _ => panic!(),
            }
        };
        let max = MAX_DELETES as usize;
        assert_eq!(decode(3), (3, BuildMode::Never));
        assert_eq!(decode(max).0, max);
        // The rest is skipped, and what follows the list is still read.
        assert_eq!(decode(max + 5), (max + 1, BuildMode::Never));
    }
}
