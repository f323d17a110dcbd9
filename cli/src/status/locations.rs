//! The `file:line:column` places a Go build error names, as links that open the editor there.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// One place in the developer's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// Absolute, on this machine.
    pub file: String,
    pub line: u32,
    pub column: Option<u32>,
    pub message: String,
    /// Opens VS Code at the place.
    pub vscode: String,
    /// Opens GoLand at the place (its `goland://` handler).
    pub goland: String,
}

/// At most this many places per build error (go stops at 10 errors per package anyway).
const MAX_LOCATIONS: usize = 50;

/// The places named in compiler `output` (`path.go:12:5: message`, paths as the reload line
/// shows them: relative to `cwd`, or absolute).
pub fn parse(output: &str, cwd: &Path) -> Vec<Location> {
    output
        .lines()
        .filter_map(|l| parse_line(l.trim_start(), cwd))
        .take(MAX_LOCATIONS)
        .collect()
}

fn parse_line(line: &str, cwd: &Path) -> Option<Location> {
    let (file, rest) = line.split_once(".go:")?;
    // `# package` headers and prose that mentions a file are not places.
    if file.is_empty() || file.starts_with('#') || file.contains(": ") {
        return None;
    }
    let file = format!("{file}.go");
    let (line_no, rest) = rest.split_once(':').unwrap_or((rest, ""));
    let line_no: u32 = line_no.parse().ok()?;
    let (column, message) = match rest.split_once(':') {
        Some((c, m)) if c.parse::<u32>().is_ok() => (c.parse().ok(), m),
        _ => (None, rest),
    };
    let abs = if Path::new(&file).is_absolute() {
        file
    } else {
        cwd.join(file.strip_prefix("./").unwrap_or(&file))
            .display()
            .to_string()
    };
    let col = column.map(|c| format!(":{c}")).unwrap_or_default();
    Some(Location {
        vscode: format!("vscode://file{}:{line_no}{col}", encode_path(&abs)),
        goland: format!("goland://open?file={}&line={line_no}", encode_query(&abs)),
        file: abs,
        line: line_no,
        column,
        message: message.trim().to_string(),
    })
}

/// Percent-encode a path for a URL's path (slashes stay).
fn encode_path(p: &str) -> String {
    encode(p, |b| b == b'/')
}

/// Percent-encode a path for a query value.
fn encode_query(p: &str) -> String {
    encode(p, |_| false)
}

fn encode(s: &str, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') || keep(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiler_lines_become_links() {
        let out = "# example.com/shop\nservices/orders/main.go:12:5: undefined: foo\n\
                   /abs/x y/a.go:3: syntax error: unexpected }\nnot a location\n";
        let locs = parse(out, Path::new("/home/me/shop"));
        assert_eq!(locs.len(), 2, "{locs:?}");
        let a = &locs[0];
        assert_eq!(a.file, "/home/me/shop/services/orders/main.go");
        assert_eq!((a.line, a.column), (12, Some(5)));
        assert_eq!(a.message, "undefined: foo");
        assert_eq!(
            a.vscode,
            "vscode://file/home/me/shop/services/orders/main.go:12:5"
        );
        assert_eq!(
            a.goland,
            "goland://open?file=%2Fhome%2Fme%2Fshop%2Fservices%2Forders%2Fmain.go&line=12"
        );
        let b = &locs[1];
        assert_eq!((b.line, b.column), (3, None));
        assert_eq!(b.vscode, "vscode://file/abs/x%20y/a.go:3");
        assert_eq!(b.message, "syntax error: unexpected }");
    }

    #[test]
    fn a_message_with_colons_is_kept_whole() {
        let locs = parse("main.go:7:2: cannot use x (type T): wrong", Path::new("/r"));
        assert_eq!(locs[0].message, "cannot use x (type T): wrong");
    }
}
