//! The machine-readable codes of [`crate::ErrorMessage`].
//!
//! On the wire a code is a snake_case string (`"bad_frame"`). A code this crate does not know
//! (sent by a newer controller) decodes as [`ErrorCode::Other`] rather than failing the whole
//! message, so an older CLI still shows the error.

use serde::{Deserialize, Serialize};

/// Why a request failed or a session ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // Fatal: the session ends (`serve`'s exit code in brackets).
    /// The hello's protocol version is not the server's (3).
    ProtocolVersionMismatch,
    /// The first message was not a usable hello (3).
    BadHello,
    /// Garbage, a truncated frame or one over the size limit (2).
    BadFrame,
    /// A well-formed frame that is not a client message (2).
    BadMessage,
    /// `hello.config.sync_root` is relative or overlaps kdev's own directories (4).
    BadSyncRoot,
    /// The kdev directory, the session lock or the sync root could not be set up (4).
    SetupFailed,
    /// `serve` got SIGTERM/SIGINT (a newer session took over, or the pod is stopping) (0).
    Terminated,

    // Not fatal: the request (`id`) failed, the session goes on.
    /// Listing the sync root failed.
    ReconcileFailed,
    /// Applying a patch failed as a whole.
    PatchFailed,
    /// A patch carried more than `limits.max_deletes` deletions; nothing was applied.
    TooManyDeletes,
    /// A message that is not valid at this point (a second hello).
    UnexpectedMessage,
    /// A reply did not fit in one frame.
    MessageTooLarge,

    /// A code this version does not know, as sent.
    #[serde(untagged)]
    Other(String),
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::ProtocolVersionMismatch => "protocol_version_mismatch",
            ErrorCode::BadHello => "bad_hello",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::BadSyncRoot => "bad_sync_root",
            ErrorCode::SetupFailed => "setup_failed",
            ErrorCode::Terminated => "terminated",
            ErrorCode::ReconcileFailed => "reconcile_failed",
            ErrorCode::PatchFailed => "patch_failed",
            ErrorCode::TooManyDeletes => "too_many_deletes",
            ErrorCode::UnexpectedMessage => "unexpected_message",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::Other(code) => code,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: [ErrorCode; 12] = [
        ErrorCode::ProtocolVersionMismatch,
        ErrorCode::BadHello,
        ErrorCode::BadFrame,
        ErrorCode::BadMessage,
        ErrorCode::BadSyncRoot,
        ErrorCode::SetupFailed,
        ErrorCode::Terminated,
        ErrorCode::ReconcileFailed,
        ErrorCode::PatchFailed,
        ErrorCode::TooManyDeletes,
        ErrorCode::UnexpectedMessage,
        ErrorCode::MessageTooLarge,
    ];

    #[test]
    fn codes_are_the_strings_of_protocol_2() {
        for code in KNOWN {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{code}\""));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
        assert_eq!(
            serde_json::to_string(&ErrorCode::TooManyDeletes).unwrap(),
            r#""too_many_deletes""#
        );
    }

    #[test]
    fn an_unknown_code_is_kept() {
        let c: ErrorCode = serde_json::from_str(r#""disk_on_fire""#).unwrap();
        assert_eq!(c, ErrorCode::Other("disk_on_fire".into()));
        assert_eq!(serde_json::to_string(&c).unwrap(), r#""disk_on_fire""#);
        assert_eq!(c.to_string(), "disk_on_fire");
    }
}
