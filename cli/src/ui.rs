//! What the user sees: compact, one line per reload, colours on a terminal, plain when piped.

use std::io::{IsTerminal, Write};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Ui {
    color: bool,
    /// With several services, each line starts with the service's name (in a colour of its
    /// own on a terminal), padded so the lines align.
    prefix: Option<(String, &'static str)>,
}

/// Colours for service names, in kdev.yaml's order.
const SERVICE_COLORS: [&str; 6] = [
    "\x1b[36m", "\x1b[35m", "\x1b[34m", "\x1b[33m", "\x1b[32m", "\x1b[31m",
];

const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

impl Ui {
    /// Colours when stdout is a terminal and `NO_COLOR` is not set.
    pub fn detect() -> Ui {
        Ui {
            color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            prefix: None,
        }
    }

    /// The same output, each line prefixed with service `name` (the `index`-th service),
    /// padded to `width`.
    pub fn for_service(&self, name: &str, index: usize, width: usize) -> Ui {
        Ui {
            color: self.color,
            prefix: Some((
                format!("{name:<width$}"),
                SERVICE_COLORS[index % SERVICE_COLORS.len()],
            )),
        }
    }

    /// No colours (tests).
    pub fn plain() -> Ui {
        Ui {
            color: false,
            prefix: None,
        }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("{code}{s}{RESET}")
        } else {
            s.to_string()
        }
    }

    fn line(&self, s: &str) {
        let line = match &self.prefix {
            Some((name, color)) => format!("{} {s}", self.paint(color, &format!("{name} │"))),
            None => s.to_string(),
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// A step of setting up (`→ applying manifests`).
    pub fn step(&self, s: &str) {
        self.line(&format!("{} {s}", self.paint(DIM, "→")));
    }

    pub fn ok(&self, s: &str) {
        self.line(&format!("{} {s}", self.paint(GREEN, "✓")));
    }

    pub fn fail(&self, s: &str) {
        self.line(&format!("{} {s}", self.paint(RED, "✗")));
    }

    pub fn warn(&self, s: &str) {
        self.line(&format!("{} {s}", self.paint(YELLOW, "!")));
    }

    /// A line of the app's own output.
    pub fn app(&self, stderr: bool, s: &str) {
        let prefix = if stderr { "app!" } else { "app " };
        self.line(&format!("{} {s}", self.paint(DIM, &format!("{prefix}│"))));
    }

    /// Indented detail (compiler output, last lines of a crashed app).
    pub fn detail(&self, s: &str) {
        for l in s.lines() {
            self.line(&format!("    {l}"));
        }
    }
}

/// `0.61s`, `35ms`.
pub fn fmt_duration(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// `main.go`, `main.go, handlers/ping.go`, `main.go and 12 more`.
pub fn summarize_paths(paths: &[String]) -> String {
    match paths.len() {
        0 => "(nothing)".into(),
        1..=3 => paths.join(", "),
        n => format!("{}, {} and {} more", paths[0], paths[1], n - 2),
    }
}

/// A byte count for people: `1.5 MB`, `12.0 KB`.
pub fn fmt_bytes(n: u64) -> String {
    if n >= 1024 * 1024 {
        format!("{:.1} MB", n as f64 / 1048576.0)
    } else {
        format!("{:.1} KB", n as f64 / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt_duration(Duration::from_millis(35)), "35ms");
        assert_eq!(fmt_duration(Duration::from_millis(1610)), "1.61s");
        let p: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        assert_eq!(summarize_paths(&p), "a, b and 3 more");
        assert_eq!(summarize_paths(&p[..2]), "a, b");
    }
}
