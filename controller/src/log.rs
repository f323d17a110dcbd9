//! Lines on stderr, each prefixed with the role that wrote it (`kdev-serve:`,
//! `kdev-supervise:`): the pod's logs show which process said what. Quick rebuilds run inside
//! `serve` and write as it.

/// A line from `serve` (and what it runs: builds, quick rebuilds).
pub(crate) fn serve(msg: impl AsRef<str>) {
    eprintln!("kdev-serve: {}", msg.as_ref());
}

/// A line from `supervise`.
pub(crate) fn supervise(msg: impl AsRef<str>) {
    eprintln!("kdev-supervise: {}", msg.as_ref());
}
