//! The module proxy over the session: which request paths exist, so both sides refuse the same
//! ones.
//!
//! The pod's go commands use `GOPROXY=http://127.0.0.1:PORT/TOKEN/` served by `serve`; each
//! request below that root travels as a [`crate::ModuleRequest`] to the CLI, which answers from
//! the developer's module cache or their own `go mod download`. Only Go's module proxy
//! protocol (<https://go.dev/ref/mod#goproxy-protocol>) and the checksum database proxied
//! through it (<https://go.dev/ref/mod#checksum-database>) are served; every other path is
//! refused by both sides ([`ProxyPath::parse`]), so the stream can never be used to read other
//! files of the developer's machine.
//!
//! Module paths and versions stay in their escaped form (`github.com/!azure/x`: each capital
//! letter is `!` plus the lower-case letter), exactly as go sends them and as Go's module cache
//! names its files (`GOMODCACHE/cache/download/<escaped module>/@v/<escaped version>.zip`).

use std::fmt;

/// One request the proxy serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyPath {
    /// `<module>/@v/list`: the known versions, one per line.
    List { module: String },
    /// `<module>/@latest`: the latest version's info.
    Latest { module: String },
    /// `<module>/@v/<version>.info`, `.mod` or `.zip`.
    File {
        module: String,
        version: String,
        kind: FileKind,
    },
    /// `sumdb/<name>/supported`: whether the checksum database `name` is proxied.
    SumdbSupported { name: String },
    /// `sumdb/<name>/lookup/...`, `sumdb/<name>/tile/...`, `sumdb/<name>/latest`: a request
    /// to the checksum database `name`, `rest` being the part after `sumdb/<name>/`.
    Sumdb { name: String, rest: String },
}

/// The three files of a module version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Info,
    Mod,
    Zip,
}

impl FileKind {
    /// The file name's extension (`info`, `mod`, `zip`).
    pub fn extension(self) -> &'static str {
        match self {
            FileKind::Info => "info",
            FileKind::Mod => "mod",
            FileKind::Zip => "zip",
        }
    }
}

/// Why a path is not one the proxy serves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a module proxy request: {path:?} ({why})")]
pub struct ProxyPathError {
    pub path: String,
    pub why: &'static str,
}

/// The longest request path served (module paths are far shorter in practice).
const MAX_PATH_LEN: usize = 1024;

impl ProxyPath {
    /// Parse a request path relative to the proxy root (no leading `/`, no query).
    pub fn parse(path: &str) -> Result<ProxyPath, ProxyPathError> {
        let err = |why| ProxyPathError {
            path: path.chars().take(200).collect(),
            why,
        };
        if path.len() > MAX_PATH_LEN {
            return Err(err("too long"));
        }
        if let Some(sumdb) = path.strip_prefix("sumdb/") {
            let (name, rest) = sumdb
                .split_once('/')
                .ok_or_else(|| err("no sumdb request"))?;
            if !valid_sumdb_name(name) {
                return Err(err("bad checksum database name"));
            }
            if rest == "supported" {
                return Ok(ProxyPath::SumdbSupported { name: name.into() });
            }
            let known =
                rest == "latest" || rest.starts_with("lookup/") || rest.starts_with("tile/");
            if !known || !valid_sumdb_rest(rest) {
                return Err(err("not a checksum database request"));
            }
            return Ok(ProxyPath::Sumdb {
                name: name.into(),
                rest: rest.into(),
            });
        }
        if let Some(module) = path.strip_suffix("/@latest") {
            check_module(module).map_err(err)?;
            return Ok(ProxyPath::Latest {
                module: module.into(),
            });
        }
        let (module, file) = path
            .rsplit_once("/@v/")
            .ok_or_else(|| err("neither @v/ nor @latest"))?;
        check_module(module).map_err(err)?;
        if file == "list" {
            return Ok(ProxyPath::List {
                module: module.into(),
            });
        }
        let (version, ext) = file.rsplit_once('.').ok_or_else(|| err("no extension"))?;
        let kind = match ext {
            "info" => FileKind::Info,
            "mod" => FileKind::Mod,
            "zip" => FileKind::Zip,
            _ => return Err(err("not .info, .mod or .zip")),
        };
        check_version(version).map_err(err)?;
        Ok(ProxyPath::File {
            module: module.into(),
            version: version.into(),
            kind,
        })
    }

    /// The module this request is about (escaped), if any.
    pub fn module(&self) -> Option<&str> {
        match self {
            ProxyPath::List { module }
            | ProxyPath::Latest { module }
            | ProxyPath::File { module, .. } => Some(module),
            ProxyPath::SumdbSupported { .. } | ProxyPath::Sumdb { .. } => None,
        }
    }
}

impl fmt::Display for ProxyPath {
    /// The request path again (escaped, as go sent it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyPath::List { module } => write!(f, "{module}/@v/list"),
            ProxyPath::Latest { module } => write!(f, "{module}/@latest"),
            ProxyPath::File {
                module,
                version,
                kind,
            } => write!(f, "{module}/@v/{version}.{}", kind.extension()),
            ProxyPath::SumdbSupported { name } => write!(f, "sumdb/{name}/supported"),
            ProxyPath::Sumdb { name, rest } => write!(f, "sumdb/{name}/{rest}"),
        }
    }
}

/// An escaped module path: `/`-separated elements of lower-case letters, digits, `-._~` and
/// `!` (escaping the next letter); no element empty, `.` or `..`, or starting with a dot.
fn check_module(m: &str) -> Result<(), &'static str> {
    if m.is_empty() {
        return Err("empty module path");
    }
    for elem in m.split('/') {
        if elem.is_empty() || elem.starts_with('.') || elem.ends_with('.') {
            return Err("bad module path element");
        }
        check_escaped(elem, b"-._~")?;
    }
    Ok(())
}

/// An escaped version: one element of lower-case letters, digits, `-._~+` and `!`.
fn check_version(v: &str) -> Result<(), &'static str> {
    if v.is_empty() || v.starts_with('.') || v.contains("..") {
        return Err("bad version");
    }
    check_escaped(v, b"-._~+")
}

/// Go's case escaping: no capital letters, and every `!` is followed by a lower-case letter.
fn check_escaped(s: &str, punct: &[u8]) -> Result<(), &'static str> {
    let b = s.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        let ok = c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || punct.contains(&c)
            || (c == b'!' && b.get(i + 1).is_some_and(u8::is_ascii_lowercase));
        if !ok {
            return Err("a character the module proxy protocol does not allow");
        }
    }
    Ok(())
}

/// A checksum database's name: a host name (`sum.golang.org`).
fn valid_sumdb_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && !n.starts_with('.')
        && !n.contains("..")
        && n.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
}

/// The rest of a checksum database request: `lookup/<escaped module>@<escaped version>`,
/// `tile/...` or `latest`, with no `.`/`..` element.
fn valid_sumdb_rest(r: &str) -> bool {
    r.split('/')
        .all(|e| !e.is_empty() && e != "." && e != ".." && !e.starts_with('.'))
        && r.bytes().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, b'/' | b'-' | b'.' | b'_' | b'~' | b'!' | b'@' | b'+')
        })
}

/// Undo Go's case escaping (`!a` → `A`): the module path or version go commands take.
pub fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut bang = false;
    for c in s.chars() {
        if bang {
            if !c.is_ascii_lowercase() {
                return None;
            }
            out.push(c.to_ascii_uppercase());
            bang = false;
        } else if c == '!' {
            bang = true;
        } else if c.is_ascii_uppercase() {
            return None;
        } else {
            out.push(c);
        }
    }
    (!bang).then_some(out)
}

/// Go's case escaping (`A` → `!a`).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            out.push('!');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_protocol_paths_parse() {
        let p = ProxyPath::parse("github.com/!azure/go-x/@v/v1.2.3-pre.1+incompatible.zip");
        assert_eq!(
            p,
            Ok(ProxyPath::File {
                module: "github.com/!azure/go-x".into(),
                version: "v1.2.3-pre.1+incompatible".into(),
                kind: FileKind::Zip,
            })
        );
        assert_eq!(
            ProxyPath::parse("golang.org/x/sys/@v/list"),
            Ok(ProxyPath::List {
                module: "golang.org/x/sys".into()
            })
        );
        assert_eq!(
            ProxyPath::parse("golang.org/x/sys/@latest"),
            Ok(ProxyPath::Latest {
                module: "golang.org/x/sys".into()
            })
        );
        assert_eq!(
            ProxyPath::parse("sumdb/sum.golang.org/supported"),
            Ok(ProxyPath::SumdbSupported {
                name: "sum.golang.org".into()
            })
        );
        for ok in [
            "sumdb/sum.golang.org/lookup/github.com/!azure/x@v1.0.0",
            "sumdb/sum.golang.org/tile/8/0/x001/234.p/5",
            "sumdb/sum.golang.org/latest",
        ] {
            let p = ProxyPath::parse(ok).unwrap();
            assert!(matches!(p, ProxyPath::Sumdb { .. }), "{ok}");
            assert_eq!(p.to_string(), ok);
        }
        let round = "github.com/!azure/go-x/@v/v1.2.3.mod";
        assert_eq!(ProxyPath::parse(round).unwrap().to_string(), round);
    }

    #[test]
    fn every_path_outside_the_protocol_is_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../../.netrc",
            "github.com/x/../../../.ssh/@v/v1.0.0.zip",
            "github.com/x/./y/@v/v1.0.0.zip",
            "github.com/X/y/@v/v1.0.0.zip",
            "github.com/x//y/@v/v1.0.0.zip",
            "github.com/x/y/@v/../../../../etc/passwd.zip",
            "github.com/x/y/@v/v1.0.0.ziphash",
            "github.com/x/y/@v/v1.0.0.lock",
            "github.com/x/y/@v/v1.0.0",
            "github.com/x/y/@v/..zip",
            "github.com/x/y/@v/v1.0.0/x.zip",
            "github.com/x/y",
            "github.com/x/y/@v/v1!.zip",
            "github.com/x y/@v/v1.0.0.zip",
            "github.com/x%2f/@v/v1.0.0.zip",
            "sumdb/sum.golang.org/../../x",
            "sumdb/sum.golang.org/lookup/../../../etc",
            "sumdb/sum.golang.org/other",
            "sumdb/Sum.golang.org/latest",
            "sumdb/sum.golang.org",
            "cache/download/github.com/x/y/@v/v1.0.0.zip/../../../../../.netrc",
        ] {
            assert!(ProxyPath::parse(bad).is_err(), "accepted {bad:?}");
        }
        assert!(ProxyPath::parse(&"a/".repeat(600)).is_err());
    }

    #[test]
    fn escaping_round_trips_and_rejects_bad_escapes() {
        assert_eq!(escape("github.com/Azure/Go"), "github.com/!azure/!go");
        assert_eq!(
            unescape("github.com/!azure/!go").as_deref(),
            Some("github.com/Azure/Go")
        );
        assert_eq!(unescape("x!"), None);
        assert_eq!(unescape("x!1"), None);
        assert_eq!(unescape("X"), None);
    }
}
