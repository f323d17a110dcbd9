//! Path rules shared by both sides.
//!
//! A *wire path* is relative to the sync root, uses `/` as separator, has no empty, `.` or `..`
//! components, is valid UTF-8 and contains no NUL. [`normalize_wire_path`] turns any acceptable
//! spelling (`./a//b/`) into the canonical one (`a/b`) and refuses anything that could name a
//! place outside the root. The CLI builds wire paths from local relative paths with
//! [`wire_path_from_relative`] (this also converts Windows separators).

use std::path::{Component, Path};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("empty path (it would name the sync root itself)")]
    Empty,
    #[error("absolute path {0:?}: only paths relative to the sync root are allowed")]
    Absolute(String),
    #[error("path {0:?} contains '..', which could escape the sync root")]
    ParentDir(String),
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("path {0:?} is not valid UTF-8")]
    NotUtf8(String),
    #[error("path {0:?} has a Windows drive or UNC prefix")]
    Prefix(String),
    #[error("symlink {link:?} points to {target:?}, which is outside the sync root")]
    SymlinkEscapes { link: String, target: String },
    #[error(
        "symlink {link:?} points to absolute path {target:?}; only relative targets inside the sync root are allowed"
    )]
    SymlinkAbsolute { link: String, target: String },
    #[error("symlink {0:?} has an empty target")]
    SymlinkEmpty(String),
    #[error(
        "symlink {link:?} points to {target:?}: a '..' after a name can lead outside the sync root \
         once that name becomes a symlink; write the target as {suggestion:?}"
    )]
    SymlinkDotDotAfterName {
        link: String,
        target: String,
        suggestion: String,
    },
    #[error(
        "symlink {link:?} points to {target:?}, which goes through more than {MAX_SYMLINK_HOPS} symlinks (a loop?)"
    )]
    SymlinkLoop { link: String, target: String },
}

/// How many symlinks one resolution may pass through (Linux's own limit is 40).
const MAX_SYMLINK_HOPS: usize = 40;

/// Canonicalise a wire path, refusing anything unsafe.
pub fn normalize_wire_path(p: &str) -> Result<String, PathError> {
    if p.contains('\0') {
        return Err(PathError::Nul(p.into()));
    }
    if p.starts_with('/') {
        return Err(PathError::Absolute(p.into()));
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(PathError::ParentDir(p.into())),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(PathError::Empty);
    }
    Ok(parts.join("/"))
}

/// Canonicalise a wire path given as raw bytes (e.g. a tar header).
pub fn normalize_wire_path_bytes(p: &[u8]) -> Result<String, PathError> {
    let s = std::str::from_utf8(p)
        .map_err(|_| PathError::NotUtf8(String::from_utf8_lossy(p).into_owned()))?;
    normalize_wire_path(s)
}

/// Turn a local relative path (as found under the CLI's project root) into a wire path.
pub fn wire_path_from_relative(p: &Path) -> Result<String, PathError> {
    let shown = || p.to_string_lossy().into_owned();
    let mut parts: Vec<&str> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => return Err(PathError::ParentDir(shown())),
            Component::RootDir => return Err(PathError::Absolute(shown())),
            Component::Prefix(_) => return Err(PathError::Prefix(shown())),
            Component::Normal(s) => {
                let s = s.to_str().ok_or_else(|| PathError::NotUtf8(shown()))?;
                if s.contains('\0') {
                    return Err(PathError::Nul(shown()));
                }
                parts.push(s);
            }
        }
    }
    if parts.is_empty() {
        return Err(PathError::Empty);
    }
    Ok(parts.join("/"))
}

/// Check that a symlink at wire path `link` with target `target` stays inside the root when the
/// target is resolved lexically relative to the link's directory, as if no other symlink
/// existed. Absolute targets are refused. [`resolve_symlink_target`] also follows the tree's
/// other links.
pub fn check_symlink_target(link: &str, target: &str) -> Result<(), PathError> {
    resolve_symlink_target(link, target, |_| None).map(|_| ())
}

/// Refuse a target with a `..` after a name (`a/b/top/..`). Where it leads depends on whether
/// `a/b/top` is a symlink, which a later change can make it: resolving it against today's
/// tree ([`resolve_symlink_target`]) cannot rule out that it leads outside tomorrow. Targets
/// of the form `../../name/name` (any number of leading `..`, then only names) only climb real
/// directories from the link's own directory, then descend; if each such link stays inside
/// lexically, no combination of them can lead outside, whatever order they are created in.
pub fn check_symlink_target_form(link: &str, target: &str) -> Result<(), PathError> {
    let mut named = false;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." if named => {
                // The same place when no component is a symlink.
                let mut parts: Vec<&str> = Vec::new();
                for c in target.split('/') {
                    match c {
                        "" | "." => {}
                        ".." if parts.last().is_some_and(|p| *p != "..") => {
                            parts.pop();
                        }
                        c => parts.push(c),
                    }
                }
                let suggestion = if parts.is_empty() {
                    ".".to_string()
                } else {
                    parts.join("/")
                };
                return Err(PathError::SymlinkDotDotAfterName {
                    link: link.into(),
                    target: target.into(),
                    suggestion,
                });
            }
            ".." => {}
            _ => named = true,
        }
    }
    Ok(())
}

/// Where a symlink at wire path `link` with target `target` points, as a wire path (`""` is
/// the root itself), following every symlink met on the way the way the kernel would:
/// `read_link(p)` returns the target of the symlink at wire path `p`, or `None` when `p` is not
/// a symlink (a directory, a file, or nothing yet). Refused: absolute targets (of the link or
/// of any link passed through), any step above the root, and more than [`MAX_SYMLINK_HOPS`]
/// links. Resolution is by component, so `top/..` goes to the parent of wherever `top`
/// resolves, not lexically back to the link's directory: two links that are each harmless can
/// together point outside the root (`a/b/top -> ../..` plus `x -> a/b/top/..`), and this sees it.
pub fn resolve_symlink_target(
    link: &str,
    target: &str,
    mut read_link: impl FnMut(&str) -> Option<String>,
) -> Result<String, PathError> {
    let escape = || PathError::SymlinkEscapes {
        link: link.into(),
        target: target.into(),
    };
    if target.is_empty() {
        return Err(PathError::SymlinkEmpty(link.into()));
    }
    if target.contains('\0') {
        return Err(PathError::Nul(target.into()));
    }
    if target.starts_with('/') {
        return Err(PathError::SymlinkAbsolute {
            link: link.into(),
            target: target.into(),
        });
    }
    let link_path = normalize_wire_path(link)?;
    // Resolved components so far, starting at the link's directory.
    let mut resolved: Vec<String> = link_path.split('/').map(String::from).collect();
    resolved.pop();
    // Components still to walk, in reverse (the next one is at the end).
    let mut pending: Vec<String> = target.split('/').rev().map(String::from).collect();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        match c.as_str() {
            "" | "." => {}
            ".." => {
                resolved.pop().ok_or_else(escape)?;
            }
            name => {
                resolved.push(name.to_string());
                let here = resolved.join("/");
                let Some(next) = read_link(&here) else {
                    continue;
                };
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(PathError::SymlinkLoop {
                        link: link.into(),
                        target: target.into(),
                    });
                }
                if next.starts_with('/') || next.is_empty() {
                    return Err(escape());
                }
                // The link is replaced by its target, resolved from the link's directory.
                resolved.pop();
                pending.extend(next.split('/').rev().map(String::from));
            }
        }
    }
    Ok(resolved.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normalize_wire_path("./a//b/").unwrap(), "a/b");
        assert_eq!(
            normalize_wire_path("dir with space/ünï.go").unwrap(),
            "dir with space/ünï.go"
        );
        assert_eq!(normalize_wire_path("..a/b..").unwrap(), "..a/b..");
    }

    #[test]
    fn refuses_unsafe() {
        assert_eq!(normalize_wire_path(""), Err(PathError::Empty));
        assert_eq!(normalize_wire_path("./"), Err(PathError::Empty));
        assert!(matches!(
            normalize_wire_path("/etc/passwd"),
            Err(PathError::Absolute(_))
        ));
        assert!(matches!(
            normalize_wire_path("a/../../x"),
            Err(PathError::ParentDir(_))
        ));
        assert!(matches!(
            normalize_wire_path(".."),
            Err(PathError::ParentDir(_))
        ));
        assert!(matches!(
            normalize_wire_path("a\0b"),
            Err(PathError::Nul(_))
        ));
        assert!(matches!(
            normalize_wire_path_bytes(b"a\xff"),
            Err(PathError::NotUtf8(_))
        ));
    }

    #[test]
    fn from_local() {
        assert_eq!(
            wire_path_from_relative(Path::new("./a/b.go")).unwrap(),
            "a/b.go"
        );
        assert!(wire_path_from_relative(Path::new("../x")).is_err());
        assert!(wire_path_from_relative(Path::new("/x")).is_err());
    }

    #[test]
    fn symlink_targets() {
        assert!(check_symlink_target("a/link", "../b").is_ok());
        assert!(check_symlink_target("a/link", "./c/../../b").is_ok());
        assert!(check_symlink_target("link", "sub/x").is_ok());
        assert!(matches!(
            check_symlink_target("link", "../x"),
            Err(PathError::SymlinkEscapes { .. })
        ));
        assert!(matches!(
            check_symlink_target("a/link", "../../x"),
            Err(PathError::SymlinkEscapes { .. })
        ));
        // Going above the root and coming back is still refused (lexical resolution).
        assert!(matches!(
            check_symlink_target("link", "../root/x"),
            Err(PathError::SymlinkEscapes { .. })
        ));
        assert!(matches!(
            check_symlink_target("link", "/"),
            Err(PathError::SymlinkAbsolute { .. })
        ));
        assert!(matches!(
            check_symlink_target("link", ""),
            Err(PathError::SymlinkEmpty(_))
        ));
    }

    #[test]
    fn dotdot_after_a_name_is_refused_with_a_suggestion() {
        assert!(check_symlink_target_form("x", "../../a/./b").is_ok());
        assert!(check_symlink_target_form("x", "./a").is_ok());
        let e = check_symlink_target_form("x", "a/b/top/..").unwrap_err();
        assert!(
            matches!(&e, PathError::SymlinkDotDotAfterName { suggestion, .. } if suggestion == "a/b"),
            "{e:?}"
        );
        let e = check_symlink_target_form("d/x", "../a/../../b").unwrap_err();
        assert!(
            matches!(&e, PathError::SymlinkDotDotAfterName { suggestion, .. } if suggestion == "../../b"),
            "{e:?}"
        );
        let e = check_symlink_target_form("x", "a/..").unwrap_err();
        assert!(e.to_string().contains("\".\""), "{e}");
    }

    #[test]
    fn resolution_follows_links_already_in_the_tree() {
        use std::collections::HashMap;
        let tree: HashMap<&str, &str> =
            HashMap::from([("a/b/top", "../.."), ("loop1", "loop2"), ("loop2", "loop1")]);
        let lookup = |p: &str| tree.get(p).map(|t| t.to_string());
        // Each link alone is harmless: `top` is the root itself.
        assert_eq!(
            resolve_symlink_target("a/b/top", "../..", lookup).unwrap(),
            ""
        );
        assert_eq!(
            resolve_symlink_target("x", "a/b/top/a", lookup).unwrap(),
            "a"
        );
        // Lexically `a/b/top/..` is `a/b`; through the link it is the root's parent.
        assert!(check_symlink_target("x", "a/b/top/..").is_ok());
        assert!(matches!(
            resolve_symlink_target("x", "a/b/top/..", lookup),
            Err(PathError::SymlinkEscapes { .. })
        ));
        assert!(matches!(
            resolve_symlink_target("x", "loop1", lookup),
            Err(PathError::SymlinkLoop { .. })
        ));
        // A link through an absolute link escapes.
        let abs = |p: &str| (p == "etc").then(|| "/etc".to_string());
        assert!(matches!(
            resolve_symlink_target("x", "etc/passwd", abs),
            Err(PathError::SymlinkEscapes { .. })
        ));
        // Dangling targets inside the root are fine (the file may come later).
        assert_eq!(
            resolve_symlink_target("d/x", "../later/y", lookup).unwrap(),
            "later/y"
        );
    }
}
