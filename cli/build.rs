//! Embeds the static `kdev-controller` in release builds of `kdev`, so that one command,
//! `cargo install --path cli`, yields a kdev that can start a session: the controller cannot be
//! left behind, found in the wrong place or be of another version than the kdev carrying it.
//!
//! For every target whose Rust standard library is installed (`x86_64-unknown-linux-gnu`,
//! `aarch64-unknown-linux-gnu`), it builds `kdev-controller` statically (`+crt-static`, as
//! `controller/build-static` does) with the same cargo, in its own target directory (the outer
//! build holds the lock on ours), and writes `embedded_controllers.rs` for `include!`.
//! Debug builds embed nothing (the tests point `KDEV_CONTROLLER_BIN` at a controller built once);
//! `KDEV_EMBED_CONTROLLER=0` turns it off, `=1` turns it on in any profile.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGETS: &[(&str, &str)] = &[
    ("amd64", "x86_64-unknown-linux-gnu"),
    ("arm64", "aarch64-unknown-linux-gnu"),
];

fn main() {
    println!("cargo:rerun-if-env-changed=KDEV_EMBED_CONTROLLER");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let embed = match std::env::var("KDEV_EMBED_CONTROLLER").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => std::env::var("PROFILE").as_deref() == Ok("release"),
    };
    let mut entries = Vec::new();
    if embed {
        let workspace = manifest.parent().expect("cli/ is in the workspace");
        // Relative to cli/, so they name this checkout's files: absolute paths were those of
        // whichever checkout last ran this script, and a second checkout sharing the target
        // directory (a global CARGO_TARGET_DIR) embedded that one's older controller.
        for path in [
            "../controller/src",
            "../controller/protocol/src",
            "../controller/Cargo.toml",
            "../controller/protocol/Cargo.toml",
            "../Cargo.lock",
        ] {
            println!("cargo:rerun-if-changed={path}");
        }
        // target/<profile>/build/kdev-<hash>/out → target/embedded-controller
        let target_dir = out
            .ancestors()
            .nth(4)
            .map(|t| t.join("embedded-controller"))
            .unwrap_or_else(|| out.join("embedded-controller"));
        for (arch, triple) in TARGETS {
            if !std_installed(triple) {
                println!(
                    "cargo:warning=no Rust standard library for {triple} (rustup target add \
                     {triple}): this kdev carries no linux/{arch} controller"
                );
                continue;
            }
            let host = std::env::var("HOST").unwrap_or_default() == *triple;
            match build_controller(workspace, &target_dir, triple) {
                Ok(bin) => entries.push(format!(
                    "(\"{arch}\", include_bytes!({:?}))",
                    bin.display().to_string()
                )),
                Err(e) if host => panic!("{e}"),
                // A cross build needs a linker for the target too; without one, say so.
                Err(e) => {
                    println!("cargo:warning={e}: this kdev carries no linux/{arch} controller")
                }
            }
        }
        if entries.is_empty() {
            panic!("no controller could be embedded: install a Linux target with rustup");
        }
    }
    std::fs::write(
        out.join("embedded_controllers.rs"),
        format!("&[{}]", entries.join(", ")),
    )
    .expect("writing embedded_controllers.rs");
}

/// Whether rustup (or the toolchain) has the standard library for `triple`.
fn std_installed(triple: &str) -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Path::new(&sysroot)
        .join("lib/rustlib")
        .join(triple)
        .join("lib")
        .is_dir()
}

/// `cargo build --release -p kdev-controller --target TRIPLE`, static; the binary's path.
fn build_controller(workspace: &Path, target_dir: &Path, triple: &str) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "kdev-controller",
            "--target",
            triple,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static");
    // What the outer build set for itself must not leak into this one.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run cargo to build kdev-controller: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building kdev-controller for {triple} failed ({status})"
        ));
    }
    Ok(target_dir.join(triple).join("release/kdev-controller"))
}
