//! What a request's URL path asks for: the session's token first, then a path of Go's module
//! proxy protocol ([`ProxyPath::parse`] refuses every other one).

use kdev_protocol::module_proxy::ProxyPath;

/// A request path, sorted out.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Module(ProxyPath),
    /// The first segment is not the token: someone else in the pod's network namespace.
    NoToken,
    /// Not a request of the protocol (why, for the log).
    Refused(String),
}

pub(crate) fn route(token: &str, uri_path: &str) -> Route {
    let Some((first, rest)) = uri_path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return Route::NoToken;
    };
    if !same(first.as_bytes(), token.as_bytes()) {
        return Route::NoToken;
    }
    // go escapes what URL paths do not allow (`!` of an escaped capital becomes `%21`).
    let Some(path) = percent_decode(rest) else {
        return Route::Refused(format!("{rest:?}: bad percent-encoding"));
    };
    match ProxyPath::parse(&path) {
        Ok(p) => Route::Module(p),
        Err(e) => Route::Refused(e.to_string()),
    }
}

/// Equal, in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `%XX` decoded; `None` for a bad escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_protocol_paths_below_the_token_are_served() {
        let t = "0123abcd";
        assert_eq!(
            route(t, "/0123abcd/github.com/%21azure/x/@v/v1.0.0.mod"),
            Route::Module(ProxyPath::parse("github.com/!azure/x/@v/v1.0.0.mod").unwrap())
        );
        assert_eq!(
            route(t, "/0123abcd/m.io/a/@v/v1.0.0+incompatible.zip"),
            Route::Module(ProxyPath::parse("m.io/a/@v/v1.0.0+incompatible.zip").unwrap())
        );
        for no_token in [
            "/m.io/a/@v/list",
            "/0123abce/m.io/a/@v/list",
            "/0123abcd",
            "/",
            "",
            "/0123abc/m.io/a/@v/list",
        ] {
            assert_eq!(route(t, no_token), Route::NoToken, "{no_token}");
        }
        for refused in [
            "/0123abcd/",
            "/0123abcd/../etc/passwd",
            "/0123abcd/%2e%2e/%2e%2e/etc/passwd",
            "/0123abcd/m.io/a/@v/%2e%2e%2fx.zip",
            "/0123abcd/m.io/a/@v/v1.0.0.zip%",
            "/0123abcd/m.io/a/@v/v1.0.0%zz.zip",
            "/0123abcd/m.io/%ff/@v/list",
            "/0123abcd/M.io/a/@v/list",
        ] {
            assert!(matches!(route(t, refused), Route::Refused(_)), "{refused}");
        }
    }
}
