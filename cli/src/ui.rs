//! What the user sees: compact, one line per reload, colours on a terminal, plain when piped.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use crate::status::Hub;
use crate::status::log::{Level, Source};

#[derive(Clone)]
pub struct Ui {
    color: bool,
    /// With several services, each line starts with the service's name (in a colour of its
    /// own on a terminal), padded so the lines align.
    prefix: Option<(String, &'static str)>,
    /// The session's status: every line also goes to its log (for the page), and through it to
    /// the terminal, above the status block.
    hub: Option<Arc<Hub>>,
    /// The service this output is about (for the log), with or without a prefix.
    service: Option<String>,
}

impl std::fmt::Debug for Ui {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ui")
            .field("color", &self.color)
            .field("prefix", &self.prefix)
            .field("service", &self.service)
            .field("status", &self.hub.is_some())
            .finish()
    }
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
            hub: None,
            service: None,
        }
    }

    /// Whether lines are coloured (a terminal without `NO_COLOR`).
    pub fn color(&self) -> bool {
        self.color
    }

    /// The same output, kept in `hub` too (and drawn above its status block).
    pub fn with_hub(&self, hub: Arc<Hub>) -> Ui {
        Ui {
            hub: Some(hub),
            ..self.clone()
        }
    }

    /// The session's status, when kept.
    pub fn hub(&self) -> Option<&Arc<Hub>> {
        self.hub.as_ref()
    }

    /// The same output, about service `name` (the log says so; no prefix).
    pub fn about(&self, name: &str) -> Ui {
        Ui {
            service: Some(name.to_string()),
            ..self.clone()
        }
    }

    /// Whether something else may draw on the terminal (a progress bar): not under the
    /// status block.
    pub fn may_draw_progress(&self) -> bool {
        !self.hub.as_ref().is_some_and(|h| h.has_block())
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
            hub: self.hub.clone(),
            service: Some(name.to_string()),
        }
    }

    /// No colours (tests).
    pub fn plain() -> Ui {
        Ui {
            color: false,
            prefix: None,
            hub: None,
            service: None,
        }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("{code}{s}{RESET}")
        } else {
            s.to_string()
        }
    }

    /// One line: `text` as the log keeps it, `shown` as the terminal shows it.
    fn line(&self, source: Source, level: Level, text: &str, shown: &str) {
        let line = match &self.prefix {
            Some((name, color)) => format!("{} {shown}", self.paint(color, &format!("{name} │"))),
            None => shown.to_string(),
        };
        match &self.hub {
            Some(hub) => hub.print(self.service.as_deref(), source, level, text, &line),
            None => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        }
    }

    fn marked(&self, level: Level, mark: &str, code: &str, s: &str) {
        let shown = format!("{} {s}", self.paint(code, mark));
        self.line(Source::Kdev, level, &format!("{mark} {s}"), &shown);
    }

    /// A step of setting up (`→ applying manifests`).
    pub fn step(&self, s: &str) {
        self.marked(Level::Info, "→", DIM, s);
    }

    pub fn ok(&self, s: &str) {
        self.marked(Level::Info, "✓", GREEN, s);
    }

    pub fn fail(&self, s: &str) {
        self.marked(Level::Error, "✗", RED, s);
    }

    pub fn warn(&self, s: &str) {
        self.marked(Level::Warn, "!", YELLOW, s);
    }

    /// A line of the app's own output.
    pub fn app(&self, stderr: bool, s: &str) {
        let (prefix, level) = if stderr {
            ("app!", Level::Warn)
        } else {
            ("app ", Level::Info)
        };
        let shown = format!("{} {s}", self.paint(DIM, &format!("{prefix}│")));
        self.line(Source::App, level, s, &shown);
    }

    /// Compiler output, indented.
    pub fn build_output(&self, s: &str) {
        for l in s.lines() {
            self.line(Source::Build, Level::Error, l, &format!("    {l}"));
        }
    }

    /// Indented detail (the last lines of a crashed app).
    pub fn detail(&self, s: &str) {
        for l in s.lines() {
            self.line(Source::App, Level::Error, l, &format!("    {l}"));
        }
    }

    /// Lines of text as they are (an editor configuration to copy).
    pub fn text(&self, s: &str) {
        for l in s.lines() {
            self.line(Source::Kdev, Level::Info, l, l);
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
