//! The part of a Go source file that decides how `go build` treats it: its effective build
//! constraint ([`super::build_constraint`]), the directives before the package clause
//! (`//go:build`, `// +build`, `//go:debug`, …), the package name, the imports and the
//! `//go:embed` patterns.
//! If none of it changed, recompiling the file with the last build's compiler flags gives what
//! `go build` would; if any of it changed, only the go command can say what to do.

use super::build_constraint::Constraint;

/// A Go file's prologue, as far as the build is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GoHeader {
    /// `//go:…` and `// +build` comment lines before the package clause, trimmed.
    pub directives: Vec<String>,
    pub package: String,
    /// `(name, "path")` in order; the name is empty when the spec has none, and the path is the
    /// literal as written (quotes included).
    pub imports: Vec<(String, String)>,
    /// Every `//go:embed` line of the file, trimmed (the go command reads them all to find the
    /// files it embeds; a line in a string literal counts too, which only errs on go's side).
    pub embeds: Vec<String>,
    /// `None` when go would refuse the file's constraint.
    pub constraint: Option<Constraint>,
}

#[derive(Debug, PartialEq, Eq)]
enum Token<'a> {
    Ident(&'a str),
    Str(&'a str),
    Punct(u8),
}

/// Tokens of Go source, comments skipped; directive comments met before the package clause
/// are kept in `directives`.
struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    in_prologue: bool,
    directives: Vec<String>,
}

impl<'a> Lexer<'a> {
    /// The next token; `Ok(None)` at the end, `Err(())` on an unterminated comment or string.
    fn next(&mut self) -> Result<Option<Token<'a>>, ()> {
        let b = self.src.as_bytes();
        loop {
            while self.pos < b.len() && b[self.pos].is_ascii_whitespace() {
                self.pos += 1;
            }
            let rest = &self.src[self.pos..];
            if let Some(body) = rest.strip_prefix("//") {
                let end = body.find('\n').unwrap_or(body.len());
                let text = body[..end].trim_end_matches('\r');
                if self.in_prologue
                    && (text.starts_with("go:") || text.trim_start().starts_with("+build"))
                {
                    self.directives.push(text.trim().to_string());
                }
                self.pos += 2 + end;
                continue;
            }
            if let Some(body) = rest.strip_prefix("/*") {
                let end = body.find("*/").ok_or(())?;
                self.pos += 2 + end + 2;
                continue;
            }
            break;
        }
        let Some(&c) = b.get(self.pos) else {
            return Ok(None);
        };
        let start = self.pos;
        if c == b'"' || c == b'`' {
            let mut i = start + 1;
            while i < b.len() && b[i] != c {
                if c == b'"' && b[i] == b'\\' {
                    i += 1;
                }
                if c == b'"' && b.get(i) == Some(&b'\n') {
                    return Err(());
                }
                i += 1;
            }
            if i >= b.len() {
                return Err(());
            }
            self.pos = i + 1;
            return Ok(Some(Token::Str(&self.src[start..self.pos])));
        }
        // Go identifiers are letters (any Unicode letter), digits and `_`.
        let ident_char = |ch: char| ch == '_' || ch.is_alphanumeric();
        let len: usize = self.src[start..]
            .chars()
            .take_while(|&ch| ident_char(ch))
            .map(char::len_utf8)
            .sum();
        if len > 0 {
            self.pos += len;
            return Ok(Some(Token::Ident(&self.src[start..self.pos])));
        }
        self.pos += self.src[start..].chars().next().map_or(1, char::len_utf8);
        Ok(Some(Token::Punct(c)))
    }
}

/// The file's header, or `None` if it does not start like a Go file (no package clause, an
/// unterminated comment or string in the header, a malformed import).
pub(crate) fn parse(src: &str) -> Option<GoHeader> {
    let mut lx = Lexer {
        src,
        pos: 0,
        in_prologue: true,
        directives: Vec::new(),
    };
    if lx.next().ok()? != Some(Token::Ident("package")) {
        return None;
    }
    lx.in_prologue = false;
    let Some(Token::Ident(package)) = lx.next().ok()? else {
        return None;
    };
    let mut imports = Vec::new();
    loop {
        match lx.next().ok()? {
            Some(Token::Punct(b';')) => continue,
            Some(Token::Ident("import")) => {}
            // The first declaration that is not an import ends the header.
            _ => break,
        }
        match lx.next().ok()? {
            Some(Token::Punct(b'(')) => loop {
                match lx.next().ok()? {
                    Some(Token::Punct(b')')) => break,
                    Some(Token::Punct(b';')) => continue,
                    Some(t) => imports.push(import_spec(t, &mut lx)?),
                    None => return None,
                }
            },
            Some(t) => imports.push(import_spec(t, &mut lx)?),
            None => return None,
        }
    }
    let embeds = src
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("//go:embed"))
        .map(str::to_string)
        .collect();
    Some(GoHeader {
        directives: lx.directives,
        package: package.to_string(),
        imports,
        embeds,
        constraint: Constraint::of(src.as_bytes()).ok(),
    })
}

/// One import spec whose first token is `first`: `"path"`, `name "path"`, `. "path"`.
fn import_spec(first: Token<'_>, lx: &mut Lexer<'_>) -> Option<(String, String)> {
    let name = match first {
        Token::Str(path) => return Some((String::new(), path.to_string())),
        Token::Ident(name) => name.to_string(),
        Token::Punct(b'.') => ".".to_string(),
        Token::Punct(_) => return None,
    };
    match lx.next().ok()? {
        Some(Token::Str(path)) => Some((name, path.to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imports(h: &GoHeader) -> Vec<(&str, &str)> {
        h.imports
            .iter()
            .map(|(n, p)| (n.as_str(), p.as_str()))
            .collect()
    }

    #[test]
    fn reads_directives_package_and_every_form_of_import() {
        let src = "// Copyright notice\n\n//go:build linux && !race\n// +build linux\n\n\
                   //go:debug panicnil=1\n/* block */ package main // trailing\n\n\
                   import \"fmt\"\nimport (\n\t\"net/http\"; _ \"embed\"\n\t. \"strings\"\n\
                   \tgin \"github.com/gin-gonic/gin\" // why\n\t/* c */ `raw/path`\n)\n\
                   import \"os\"\n\n//go:embed static\nvar static embed.FS\n\
                   import \"never/reached\"\n";
        let h = parse(src).unwrap();
        assert_eq!(
            h.directives,
            [
                "go:build linux && !race",
                "+build linux",
                "go:debug panicnil=1"
            ]
        );
        assert_eq!(h.package, "main");
        assert_eq!(
            imports(&h),
            [
                ("", "\"fmt\""),
                ("", "\"net/http\""),
                ("_", "\"embed\""),
                (".", "\"strings\""),
                ("gin", "\"github.com/gin-gonic/gin\""),
                ("", "`raw/path`"),
                ("", "\"os\""),
            ]
        );
    }

    #[test]
    fn the_body_does_not_count_and_every_header_change_does() {
        let a = "package main\n\nimport \"fmt\"\n\nconst msg = \"a\"\nfunc main() { fmt.Println(msg) }\n";
        let body = a.replace("\"a\"", "\"b\"").replace("Println", "Print");
        assert_eq!(parse(a), parse(&body));
        for changed in [
            a.replace("import \"fmt\"", "import \"os\""),
            a.replace("import \"fmt\"", "import f \"fmt\""),
            a.replace("import \"fmt\"", "import (\"fmt\"; \"C\")"),
            a.replace("package main", "package other"),
            format!("//go:build ignore\n\n{a}"),
            format!("//go:debug http2client=0\n{a}"),
            format!("{a}\n//go:embed x.txt\nvar x string\n"),
            format!("// +build ignore\n\n{a}"),
        ] {
            assert_ne!(parse(a), parse(&changed), "{changed}");
        }
        // A `// +build` line right above the package clause is documentation; with a blank line
        // between them it is a constraint: the directives read the same, the constraint not.
        let doc = format!("// +build ignore\n{a}");
        let constraint = format!("// +build ignore\n\n{a}");
        assert_eq!(
            parse(&doc).unwrap().directives,
            parse(&constraint).unwrap().directives
        );
        assert_ne!(parse(&doc), parse(&constraint));
        // A directive after the package clause is not a file directive.
        assert_eq!(
            parse(a),
            parse(&a.replace("func main", "//go:noinline\nfunc main"))
        );
    }

    #[test]
    fn what_is_not_a_go_header_is_none() {
        for bad in [
            "",
            "func main() {}",
            "/* unterminated",
            "package",
            "package main\nimport (\"fmt\"",
            "package main\nimport \"unterminated\n\"",
            "package main\nimport ( 42 )",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(parse("package main").unwrap().imports, []);
        assert_eq!(
            parse("package héllo\nimport \"é\"").unwrap().package,
            "héllo"
        );
    }
}
