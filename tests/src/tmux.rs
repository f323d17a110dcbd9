//! A command on a pseudo-terminal, as a person's terminal runs it: a tmux server of the test's
//! own (its own socket, in a temporary directory), whose screen the test reads with
//! `capture-pane`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};

/// One tmux server with one window running a command; killed on drop.
pub struct Tmux {
    /// The server's socket, in a directory of its own (removed with it).
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmux {
    /// Run `command` (a shell command line) in `dir` on a `width`×`height` terminal. The
    /// environment is the test's: tmux starts its server from this process.
    pub fn start(dir: &Path, command: &str, width: u16, height: u16) -> Result<Tmux> {
        let dir_of_socket = tempfile::tempdir()?;
        let tmux = Tmux {
            socket: dir_of_socket.path().join("tmux"),
            _dir: dir_of_socket,
        };
        let out = tmux
            .cmd()
            .args(["new-session", "-d", "-s", "main", "-x"])
            .arg(width.to_string())
            .arg("-y")
            .arg(height.to_string())
            .arg("-c")
            .arg(dir)
            .arg(command)
            .output()
            .context("running tmux (Debian package tmux)")?;
        ensure!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Keep the window when the command ends, so its last screen can still be read.
        let _ = tmux
            .cmd()
            .args(["set-option", "-t", "main", "remain-on-exit", "on"])
            .output();
        Ok(tmux)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket);
        c
    }

    /// The screen as a person sees it (no colours), wrapped lines joined.
    pub fn screen(&self) -> Result<String> {
        self.capture(&[])
    }

    /// Everything the terminal showed: the scrollback, then the screen.
    pub fn history(&self) -> Result<String> {
        self.capture(&["-S", "-"])
    }

    fn capture(&self, extra: &[&str]) -> Result<String> {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-J", "-t", "main"])
            .args(extra)
            .output()?;
        ensure!(
            out.status.success(),
            "tmux capture-pane: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Press keys (tmux key names, e.g. `C-c`).
    pub fn send_keys(&self, keys: &str) -> Result<()> {
        let out = self
            .cmd()
            .args(["send-keys", "-t", "main", keys])
            .output()?;
        ensure!(out.status.success(), "tmux send-keys failed");
        Ok(())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Our own server (its own socket): this ends exactly what the test started.
        let _ = self.cmd().arg("kill-server").output();
    }
}
