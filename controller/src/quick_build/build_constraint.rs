//! A Go file's build constraint, by go's own rules (`go/build`'s `parseFileHeader` and
//! `go/build/constraint`), ported line for line: a `//go:build` line in the file's leading run
//! of `//` comments and blank lines decides, and without one every `// +build` line there that
//! is followed by a blank line before the package clause must hold.
//!
//! [`Constraint`] is a file's effective constraint: an edit that leaves it as it was leaves the
//! file in or out as it was, whatever the tags ([`super::header`] keeps it with the rest of the
//! file's prologue); [`super::constraints`] evaluates it against the build's tags.

/// A build constraint expression (`go/build/constraint.Expr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expr {
    Tag(String),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

impl Expr {
    fn eval(&self, ok: &dyn Fn(&str) -> bool) -> bool {
        match self {
            Expr::Tag(t) => ok(t),
            Expr::Not(x) => !x.eval(ok),
            // Both sides are evaluated, as go does (it records every tag consulted).
            Expr::And(x, y) => {
                let (a, b) = (x.eval(ok), y.eval(ok));
                a && b
            }
            Expr::Or(x, y) => {
                let (a, b) = (x.eval(ok), y.eval(ok));
                a || b
            }
        }
    }
}

/// Why a file's constraint cannot be read (go reports these as errors of the package).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ConstraintError {
    #[error("multiple //go:build comments")]
    MultipleGoBuild,
    #[error("parsing //go:build line: {0}")]
    Syntax(String),
}

/// What decides whether a file is built: its `//go:build` expression, or (without one) the
/// `// +build` lines go honours, in order; neither means always.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Constraint {
    None,
    GoBuild(Expr),
    /// Each must hold. `None` for a line go skips because it does not parse (too complex).
    PlusBuild(Vec<Option<Expr>>),
}

impl Constraint {
    /// The effective constraint of a Go file's `content`.
    pub(crate) fn of(content: &[u8]) -> Result<Constraint, ConstraintError> {
        // go/build reads a file after a leading byte order mark.
        let content = content
            .strip_prefix("\u{feff}".as_bytes())
            .unwrap_or(content);
        let (trimmed, go_build) = parse_file_header(content)?;
        if let Some(line) = go_build {
            let text = split_go_build(&line).unwrap_or_default();
            return parse_expr(&text).map(Constraint::GoBuild);
        }
        let mut lines = Vec::new();
        for line in trimmed.split(|&b| b == b'\n') {
            let line = trim_space(line);
            if !line.starts_with(b"//") || !contains(line, b"+build") {
                continue;
            }
            let text = String::from_utf8_lossy(line);
            if let Some(expr) = split_plus_build(&text) {
                lines.push(parse_plus_build_expr(&expr));
            }
        }
        Ok(if lines.is_empty() {
            Constraint::None
        } else {
            Constraint::PlusBuild(lines)
        })
    }

    pub(super) fn holds(&self, ok: &dyn Fn(&str) -> bool) -> bool {
        match self {
            Constraint::None => true,
            Constraint::GoBuild(x) => x.eval(ok),
            Constraint::PlusBuild(lines) => lines.iter().flatten().all(|x| x.eval(ok)),
        }
    }
}

pub(super) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `bytes.TrimSpace` for the ASCII white space that matters in Go source.
pub(super) fn trim_space(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_space(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_space(*last) {
            break;
        }
        s = rest;
    }
    s
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// `go/build.parseFileHeader`: the file up to the last blank line of its leading run of `//`
/// comments and blank lines, and its `//go:build` line.
fn parse_file_header(content: &[u8]) -> Result<(&[u8], Option<Vec<u8>>), ConstraintError> {
    let mut end = 0;
    let mut p = content;
    let mut ended = false;
    let mut in_slash_star = false;
    let mut go_build = None;
    'lines: while !p.is_empty() {
        let mut line = match p.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let l = &p[..i];
                p = &p[i + 1..];
                l
            }
            None => std::mem::take(&mut p),
        };
        line = trim_space(line);
        if line.is_empty() && !ended {
            end = content.len() - p.len();
            continue 'lines;
        }
        if !line.starts_with(b"//") {
            ended = true;
        }
        if !in_slash_star && is_go_build_comment(line) {
            if go_build.is_some() {
                return Err(ConstraintError::MultipleGoBuild);
            }
            go_build = Some(line.to_vec());
        }
        while !line.is_empty() {
            if in_slash_star {
                match line.windows(2).position(|w| w == b"*/") {
                    Some(i) => {
                        in_slash_star = false;
                        line = trim_space(&line[i + 2..]);
                        continue;
                    }
                    None => continue 'lines,
                }
            }
            if line.starts_with(b"//") {
                continue 'lines;
            }
            if let Some(rest) = line.strip_prefix(b"/*") {
                in_slash_star = true;
                line = trim_space(rest);
                continue;
            }
            // Non-comment text.
            break 'lines;
        }
    }
    Ok((&content[..end], go_build))
}

fn is_go_build_comment(line: &[u8]) -> bool {
    if !line.starts_with(b"//go:build") {
        return false;
    }
    let line = trim_space(line);
    let rest = &line[b"//go:build".len()..];
    rest.is_empty() || trim_space(rest).len() < rest.len()
}

/// `constraint.splitGoBuild`: the expression of a `//go:build` line.
fn split_go_build(line: &[u8]) -> Option<String> {
    let line = String::from_utf8_lossy(line);
    let line = line.strip_suffix('\n').unwrap_or(&line);
    if line.contains('\n') || !line.starts_with("//go:build") {
        return None;
    }
    let line = line.trim_matches(is_go_space);
    let rest = &line["//go:build".len()..];
    let trim = rest.trim_matches(is_go_space);
    (rest.len() != trim.len() || rest.is_empty()).then(|| trim.to_string())
}

/// `constraint.splitPlusBuild`: the expression of a `// +build` line.
fn split_plus_build(line: &str) -> Option<String> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    if line.contains('\n') {
        return None;
    }
    let line = line.strip_prefix("//")?.trim_matches(is_go_space);
    let rest = line.strip_prefix("+build")?;
    let trim = rest.trim_matches(is_go_space);
    (rest.len() != trim.len() || rest.is_empty()).then(|| trim.to_string())
}

/// `unicode.IsSpace`, which `strings.TrimSpace` uses.
fn is_go_space(c: char) -> bool {
    c.is_whitespace()
}

/// `constraint.isValidTag`: letters, digits, `_` and `.`.
fn is_tag_char(c: char) -> bool {
    c.is_alphabetic() || c.is_numeric() || c == '_' || c == '.'
}

/// `constraint.parsePlusBuildExpr`; `None` when go gives up on it (over 100 operators).
fn parse_plus_build_expr(text: &str) -> Option<Expr> {
    const MAX_OLD_SIZE: usize = 100;
    let mut size = 0;
    let mut x: Option<Expr> = None;
    for clause in text.split(is_go_space).filter(|c| !c.is_empty()) {
        let mut y: Option<Expr> = None;
        for lit in clause.split(',') {
            let z = if lit.starts_with("!!") || lit == "!" {
                Expr::Tag("ignore".into())
            } else {
                let (neg, name) = match lit.strip_prefix('!') {
                    Some(n) => (true, n),
                    None => (false, lit),
                };
                let t = if !name.is_empty() && name.chars().all(is_tag_char) {
                    Expr::Tag(name.into())
                } else {
                    Expr::Tag("ignore".into())
                };
                if neg { Expr::Not(Box::new(t)) } else { t }
            };
            y = Some(match y {
                None => z,
                Some(y) => {
                    size += 1;
                    if size > MAX_OLD_SIZE {
                        return None;
                    }
                    Expr::And(Box::new(y), Box::new(z))
                }
            });
        }
        let y = y?;
        x = Some(match x {
            None => y,
            Some(x) => {
                size += 1;
                if size > MAX_OLD_SIZE {
                    return None;
                }
                Expr::Or(Box::new(x), Box::new(y))
            }
        });
    }
    Some(x.unwrap_or_else(|| Expr::Tag("ignore".into())))
}

/// `constraint.parseExpr`: `||`, `&&`, `!`, parentheses and tags.
fn parse_expr(text: &str) -> Result<Expr, ConstraintError> {
    let mut p = ExprParser {
        s: text,
        i: 0,
        tok: String::new(),
        is_tag: false,
        size: 0,
    };
    let x = p.or()?;
    if !p.tok.is_empty() {
        return Err(ConstraintError::Syntax(format!(
            "unexpected token {}",
            p.tok
        )));
    }
    Ok(x)
}

struct ExprParser<'a> {
    s: &'a str,
    i: usize,
    tok: String,
    is_tag: bool,
    size: usize,
}

/// `constraint.maxSize`.
const MAX_SIZE: usize = 1000;

impl ExprParser<'_> {
    fn or(&mut self) -> Result<Expr, ConstraintError> {
        let mut x = self.and()?;
        while self.tok == "||" {
            x = Expr::Or(Box::new(x), Box::new(self.and()?));
        }
        Ok(x)
    }

    fn and(&mut self) -> Result<Expr, ConstraintError> {
        let mut x = self.not()?;
        while self.tok == "&&" {
            x = Expr::And(Box::new(x), Box::new(self.not()?));
        }
        Ok(x)
    }

    fn not(&mut self) -> Result<Expr, ConstraintError> {
        self.size += 1;
        if self.size > MAX_SIZE {
            return Err(ConstraintError::Syntax("build expression too large".into()));
        }
        self.lex()?;
        if self.tok == "!" {
            self.lex()?;
            if self.tok == "!" {
                return Err(ConstraintError::Syntax(
                    "double negation not allowed".into(),
                ));
            }
            return Ok(Expr::Not(Box::new(self.atom()?)));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Expr, ConstraintError> {
        if self.tok == "(" {
            let x = self.or().map_err(|e| match e {
                ConstraintError::Syntax(m) if m == "unexpected end of expression" => {
                    ConstraintError::Syntax("missing close paren".into())
                }
                e => e,
            })?;
            if self.tok != ")" {
                return Err(ConstraintError::Syntax("missing close paren".into()));
            }
            self.lex()?;
            return Ok(x);
        }
        if !self.is_tag {
            return Err(ConstraintError::Syntax(if self.tok.is_empty() {
                "unexpected end of expression".into()
            } else {
                format!("unexpected token {}", self.tok)
            }));
        }
        let tag = std::mem::take(&mut self.tok);
        self.lex()?;
        Ok(Expr::Tag(tag))
    }

    fn lex(&mut self) -> Result<(), ConstraintError> {
        self.is_tag = false;
        let b = self.s.as_bytes();
        while self.i < b.len() && (b[self.i] == b' ' || b[self.i] == b'\t') {
            self.i += 1;
        }
        if self.i >= b.len() {
            self.tok.clear();
            return Ok(());
        }
        match b[self.i] {
            b'(' | b')' | b'!' => {
                self.tok = (b[self.i] as char).to_string();
                self.i += 1;
                return Ok(());
            }
            c @ (b'&' | b'|') => {
                if b.get(self.i + 1) != Some(&c) {
                    return Err(ConstraintError::Syntax(format!(
                        "invalid syntax at {}",
                        c as char
                    )));
                }
                self.tok = format!("{0}{0}", c as char);
                self.i += 2;
                return Ok(());
            }
            _ => {}
        }
        let rest = &self.s[self.i..];
        let len: usize = rest
            .chars()
            .take_while(|&c| is_tag_char(c))
            .map(char::len_utf8)
            .sum();
        if len == 0 {
            let c = rest.chars().next().unwrap_or('?');
            return Err(ConstraintError::Syntax(format!("invalid syntax at {c}")));
        }
        self.tok = rest[..len].to_string();
        self.i += len;
        self.is_tag = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(t: &str) -> Expr {
        Expr::Tag(t.into())
    }

    #[test]
    fn go_build_lines_count_only_in_the_leading_comments() {
        let c = |s: &str| Constraint::of(s.as_bytes()).unwrap();
        assert_eq!(
            c("//go:build dev\n\npackage p\n"),
            Constraint::GoBuild(tag("dev"))
        );
        // No blank line needed after //go:build, and other // comments may come first.
        assert_eq!(
            c("// Copyright\n//go:build !dev\npackage p\n"),
            Constraint::GoBuild(Expr::Not(Box::new(tag("dev"))))
        );
        // After a /* */ comment it still is (only `+build` lines stop there); after the package
        // clause it is not.
        assert_eq!(
            c("/* x */\n//go:build dev\n\npackage p\n"),
            Constraint::GoBuild(tag("dev"))
        );
        assert_eq!(c("package p\n//go:build dev\n"), Constraint::None);
        assert_eq!(c("//go:buildx dev\n\npackage p\n"), Constraint::None);
        assert_eq!(
            Constraint::of(b"//go:build a\n//go:build b\n\npackage p\n"),
            Err(ConstraintError::MultipleGoBuild)
        );
        assert!(Constraint::of(b"//go:build a &&\n\npackage p\n").is_err());
        assert!(Constraint::of(b"//go:build !!a\n\npackage p\n").is_err());
    }

    #[test]
    fn plus_build_lines_need_a_blank_line_before_the_package_clause() {
        let c = |s: &str| Constraint::of(s.as_bytes()).unwrap();
        let ignore = Constraint::PlusBuild(vec![Some(tag("ignore"))]);
        assert_eq!(c("// +build ignore\n\npackage p\n"), ignore);
        // Directly above the package clause it is package documentation, not a constraint.
        assert_eq!(c("// +build ignore\npackage p\n"), Constraint::None);
        // A /* */ comment ends the header: what follows never counts.
        assert_eq!(
            c("/* c */\n// +build ignore\n\npackage p\n"),
            Constraint::None
        );
        assert_eq!(
            c("/* c */ // +build ignore\n\npackage p\n"),
            Constraint::None
        );
        assert_eq!(c("//+build ignore\n\npackage p\n"), ignore);
        // A //go:build line wins over +build lines.
        assert_eq!(
            c("//go:build dev\n// +build ignore\n\npackage p\n"),
            Constraint::GoBuild(tag("dev"))
        );
        assert_eq!(
            c("// +build a,!b c\n\npackage p\n"),
            Constraint::PlusBuild(vec![Some(Expr::Or(
                Box::new(Expr::And(
                    Box::new(tag("a")),
                    Box::new(Expr::Not(Box::new(tag("b"))))
                )),
                Box::new(tag("c"))
            ))])
        );
    }
}
