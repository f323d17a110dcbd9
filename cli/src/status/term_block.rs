//! The live status block at the bottom of a terminal: one row per service, redrawn in place.
//!
//! Every line kdev prints goes through [`TermBlock::print`], which erases the block, writes the
//! line and draws the block again in one write, so log lines and rows never interleave. Rows
//! are cut to the terminal's width: a wrapped row would break the count of lines to erase.

use std::io::Write;

use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

use super::model::{ServiceStatus, SessionStatus, State};
use crate::ui::fmt_duration;

const RESET: &str = "\x1b[0m";
const DIM: &str = "\x1b[2m";

/// The block as drawn on the terminal.
#[derive(Debug, Default)]
pub struct TermBlock {
    /// Rows drawn last (erased before anything else is written).
    drawn: usize,
    /// Erased for good (the session ends): lines go out as they are.
    closed: bool,
}

impl TermBlock {
    /// Write `text` (whole lines) above the block, then the block's `rows`.
    pub fn print(&mut self, text: &str, rows: &[String]) {
        let mut out = String::with_capacity(text.len() + 512);
        self.erase_into(&mut out);
        out.push_str(text);
        self.draw_into(&mut out, rows);
        write_all(&out);
    }

    /// Erase the block and stop drawing it.
    pub fn close(&mut self) {
        let mut out = String::new();
        self.erase_into(&mut out);
        self.closed = true;
        write_all(&out);
    }

    fn erase_into(&mut self, out: &mut String) {
        if self.drawn > 0 {
            // To the start of the block's first row, then clear to the end of the screen.
            out.push_str(&format!("\x1b[{}F\x1b[J", self.drawn));
            self.drawn = 0;
        }
    }

    fn draw_into(&mut self, out: &mut String, rows: &[String]) {
        if self.closed {
            return;
        }
        for r in rows {
            out.push_str(r);
            out.push('\n');
        }
        self.drawn = rows.len();
    }
}

fn write_all(s: &str) {
    if s.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

/// The terminal's size: columns and lines (80×24 when it cannot be asked).
pub fn terminal_size() -> (usize, usize) {
    // SAFETY: TIOCGWINSZ writes a `winsize` into the struct we pass, nothing else.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    let cols = if ok && ws.ws_col > 0 {
        ws.ws_col as usize
    } else {
        80
    };
    let lines = if ok && ws.ws_row > 0 {
        ws.ws_row as usize
    } else {
        24
    };
    (cols, lines)
}

/// The block's rows for `status` on a terminal `width` columns wide and `height` lines high: a
/// header, then one row per service (as many as fit below one line of log). Empty until the
/// session has services.
pub fn render(status: &SessionStatus, width: usize, height: usize, color: bool) -> Vec<String> {
    if status.services.is_empty() {
        return Vec::new();
    }
    let width = width.max(20) - 1;
    let mut header = format!("── kdev {} · {}", status.command, status.project);
    if let (Some(url), true) = (&status.ui_url, status.ui_url_shown) {
        header.push_str(&format!(" · {url}"));
    }
    header.push(' ');
    let pad = width.saturating_sub(UnicodeWidthStr::width(header.as_str()));
    header.push_str(&"─".repeat(pad));
    let mut rows = vec![paint(color, DIM, &cut(&header, width))];
    let name_width = status
        .services
        .iter()
        .map(|s| UnicodeWidthStr::width(s.name.as_str()))
        .max()
        .unwrap_or(0);
    // A block taller than the screen would scroll its top into the scrollback on every line.
    let room = height.saturating_sub(2).max(2);
    let fits = if status.services.len() < room {
        status.services.len()
    } else {
        room - 1
    };
    for s in &status.services[..fits] {
        rows.push(service_row(s, name_width, width, color));
    }
    if fits < status.services.len() {
        let more = status.services.len() - fits;
        rows.push(cut(
            &format!(" … and {more} more services (`kdev status` lists them all)"),
            width,
        ));
    }
    rows
}

fn service_row(s: &ServiceStatus, name_width: usize, width: usize, color: bool) -> String {
    let state = s.shown_state();
    let (icon, code) = match state {
        State::Ready => ("●", "\x1b[32m"),
        State::Failed => ("✗", "\x1b[31m"),
        State::Paused => ("‖", "\x1b[33m"),
        State::Connecting => ("○", DIM),
        State::Syncing | State::Building | State::Restarting => ("◐", "\x1b[36m"),
    };
    let head = format!("{} {icon} {:<10}", pad(&s.name, name_width), state.as_str());
    let head_len = head.chars().count() + 1;
    let mut parts: Vec<String> = Vec::new();
    match (&s.detail, state) {
        (Some(d), State::Failed | State::Syncing | State::Building | State::Connecting) => {
            parts.push(d.clone())
        }
        _ => {
            if let Some(r) = &s.last_reload {
                parts.push(format!("last {}", reload_summary(r)));
            }
        }
    }
    if let (Some(p50), Some(p95)) = (s.p50_ms, s.p95_ms) {
        parts.push(format!("p50 {} p95 {}", ms(p50), ms(p95)));
    }
    parts.push(format!("restarts {}", s.restarts));
    if s.pending > 0 {
        parts.push(format!("{} pending", s.pending));
    }
    if let Some(url) = &s.url {
        parts.push(url.clone());
    }
    if let Some(d) = &s.debugger {
        parts.push(format!("debugger {d} ({} attached)", s.debugger_clients));
    }
    let plain = cut(&sanitize(&format!(" {head} {}", parts.join(" · "))), width);
    if !color {
        return plain;
    }
    // Colour the state word (it is within the row's start, which the cut keeps first).
    let (start, rest): (String, String) = (
        plain.chars().take(head_len).collect(),
        plain.chars().skip(head_len).collect(),
    );
    format!("{code}{start}{RESET}{rest}")
}

/// `1.02s (sync 12ms · build 410ms · restart 9ms · ready 20ms)`, or how it failed.
fn reload_summary(r: &super::model::ReloadEntry) -> String {
    use super::model::Outcome;
    let p = &r.phases;
    let phases: Vec<String> = [
        ("sync", p.sync_ms),
        ("build", p.build_ms),
        ("restart", p.restart_ms),
        ("ready", p.ready_ms),
    ]
    .iter()
    .filter_map(|(n, v)| v.map(|v| format!("{n} {}", ms(v))))
    .collect();
    let outcome = match r.outcome {
        Outcome::Served => "",
        Outcome::InitialSync => "first sync ",
        Outcome::BuildFailed => "build failed ",
        Outcome::Unchanged => "unchanged ",
        Outcome::RestartFailed => "restart failed ",
        Outcome::NotReady => "not ready ",
    };
    format!("{outcome}{} ({})", ms(r.total_ms), phases.join(", "))
}

fn ms(v: u64) -> String {
    fmt_duration(std::time::Duration::from_millis(v))
}

/// `s` padded with spaces to `width` columns.
fn pad(s: &str, width: usize) -> String {
    let fill = width.saturating_sub(UnicodeWidthStr::width(s));
    format!("{s}{}", " ".repeat(fill))
}

/// Control characters (a tab, a carriage return, an escape in a build error) as spaces: the
/// terminal would move the cursor for them.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// At most `width` columns of the terminal (wide characters count two).
fn cut(s: &str, width: usize) -> String {
    if UnicodeWidthStr::width(s) <= width {
        return s.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = UnicodeWidthChar::width(c).unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        used += w;
        out.push(c);
    }
    out.push('…');
    out
}

fn paint(color: bool, code: &str, s: &str) -> String {
    if color {
        format!("{code}{s}{RESET}")
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::{Outcome, Phases, ReloadEntry};
    use super::*;

    fn session() -> SessionStatus {
        let mut api = ServiceStatus::new("api", 0);
        api.set_state(State::Ready, None, 1);
        api.url = Some("http://127.0.0.1:8080".into());
        api.record(ReloadEntry {
            id: 1,
            at_ms: 1,
            paths: vec!["main.go".into()],
            outcome: Outcome::Served,
            total_ms: 520,
            phases: Phases {
                sync_ms: Some(12),
                build_ms: Some(410),
                restart_ms: Some(9),
                ready_ms: Some(20),
            },
        });
        let mut worker = ServiceStatus::new("worker", 0);
        worker.set_state(
            State::Failed,
            Some("build failed: main.go:3:1: syntax error".into()),
            2,
        );
        SessionStatus {
            kdev_version: "0".into(),
            pid: 1,
            command: "watch".into(),
            project: "shop".into(),
            root: "/r".into(),
            namespace: "dev".into(),
            owner: "me".into(),
            started_at_ms: 0,
            ui_url: None,
            ui_url_shown: false,
            services: vec![api, worker],
        }
    }

    #[test]
    fn a_row_per_service_with_its_state_and_last_reload() {
        let rows = render(&session(), 200, 40, false);
        assert_eq!(rows.len(), 3, "{rows:#?}");
        assert!(rows[0].starts_with("── kdev watch · shop"), "{}", rows[0]);
        assert!(
            rows[1].starts_with(" api    ● ready      last 520ms (sync 12ms, build 410ms"),
            "{}",
            rows[1]
        );
        assert!(rows[1].contains("p50 520ms p95 520ms"), "{}", rows[1]);
        assert!(rows[1].contains("http://127.0.0.1:8080"), "{}", rows[1]);
        assert!(
            rows[2].starts_with(" worker ✗ failed     build failed: main.go:3:1"),
            "{}",
            rows[2]
        );
    }

    #[test]
    fn rows_never_wrap() {
        let mut s = session();
        s.services[1].detail = Some("build failed: main.go:3:1: undefined: 用户\tand\rmore".into());
        for width in [20, 40, 79] {
            for row in render(&s, width, 40, false) {
                assert!(
                    UnicodeWidthStr::width(row.as_str()) < width,
                    "{width}: {row}"
                );
                assert!(!row.chars().any(char::is_control), "{row:?}");
            }
        }
        let coloured = render(&session(), 40, 40, true);
        assert!(coloured[1].starts_with("\x1b[32m api"), "{:?}", coloured[1]);
    }

    #[test]
    fn nothing_before_the_services_are_known() {
        let mut s = session();
        s.services.clear();
        assert!(render(&s, 80, 24, false).is_empty());
    }

    #[test]
    fn a_block_taller_than_the_screen_is_cut_with_a_count() {
        let mut s = session();
        let more: Vec<ServiceStatus> = (0..30)
            .map(|i| ServiceStatus::new(&format!("svc{i}"), 0))
            .collect();
        s.services.extend(more);
        let rows = render(&s, 100, 12, false);
        assert_eq!(rows.len(), 11, "{rows:#?}");
        assert_eq!(
            rows.last().unwrap(),
            " … and 23 more services (`kdev status` lists them all)"
        );
    }
}
