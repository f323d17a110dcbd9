//! The package graph of a full build, from the go command's own account of it
//! (`go build -debug-actiongraph FILE`, see [`super::go_command`]): every package the binary
//! links, what each imports, which ones this build compiled and which it took from its cache,
//! and each one's action ID (the key of its cache entry).
//!
//! With it, a quick rebuild knows every package that imports an edited one, recorded or not;
//! and packages whose compile was never recorded can be made to compile again on the next
//! full build ([`evict`]), which records them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use super::go_command;

/// One package of the build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphPackage {
    /// What it imports (import paths of other packages of the graph).
    pub imports: BTreeSet<String>,
    /// This build ran its compile (otherwise the archive came from the cache).
    pub compiled: bool,
    /// The first 15 bytes of its compile's action ID, as go prints it (base64url).
    pub action_id: Option<String>,
}

/// The packages of a build, by import path; `main` is the main package's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    pub main: String,
    pub packages: BTreeMap<String, GraphPackage>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Action {
    mode: String,
    #[serde(default)]
    package: String,
    #[serde(default)]
    deps: Vec<usize>,
    #[serde(rename = "ActionID", default)]
    action_id: Option<String>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
}

impl Graph {
    /// Read the action graph go wrote. The link action names the main package; a `build`
    /// action is a package's compile, and its `build` dependencies are its imports.
    pub fn parse(json: &[u8]) -> Result<Graph, String> {
        let actions: Vec<Action> =
            serde_json::from_slice(json).map_err(|e| format!("the action graph: {e}"))?;
        let main = actions
            .iter()
            .find(|a| a.mode == "link")
            .map(|a| a.package.clone())
            .ok_or("the action graph has no link")?;
        let mut packages = BTreeMap::new();
        for a in actions.iter().filter(|a| a.mode == "build") {
            let imports = a
                .deps
                .iter()
                .filter_map(|&d| actions.get(d))
                .filter(|d| d.mode == "build")
                .map(|d| d.package.clone())
                .collect();
            let compiled = a.cmd.as_ref().is_some_and(|c| !c.is_empty());
            packages.insert(
                a.package.clone(),
                GraphPackage {
                    imports,
                    compiled,
                    action_id: a.action_id.clone(),
                },
            );
        }
        if !packages.contains_key(&main) {
            return Err(format!("the action graph has no compile of {main}"));
        }
        Ok(Graph { main, packages })
    }

    /// Every package that imports one of `of`, directly or not.
    pub(crate) fn importers(&self, of: &BTreeSet<String>) -> BTreeSet<String> {
        let mut found: BTreeSet<String> = BTreeSet::new();
        loop {
            let more: Vec<&String> = self
                .packages
                .iter()
                .filter(|(p, g)| {
                    !found.contains(*p)
                        && g.imports
                            .iter()
                            .any(|i| of.contains(i) || found.contains(i))
                })
                .map(|(p, _)| p)
                .collect();
            if more.is_empty() {
                return found;
            }
            found.extend(more.into_iter().cloned());
        }
    }

    /// `set` ordered so that each package comes after those of `set` it imports; `None` on a
    /// cycle (go refuses those).
    pub(crate) fn in_import_order<'a>(&self, set: &'a BTreeSet<String>) -> Option<Vec<&'a str>> {
        let mut left: BTreeSet<&str> = set.iter().map(String::as_str).collect();
        let mut order = Vec::with_capacity(left.len());
        while !left.is_empty() {
            let ready: Vec<&str> = left
                .iter()
                .copied()
                .filter(|p| {
                    self.packages.get(*p).is_none_or(|g| {
                        g.imports
                            .iter()
                            .all(|i| i == p || !left.contains(i.as_str()))
                    })
                })
                .collect();
            if ready.is_empty() {
                return None;
            }
            for p in ready {
                left.remove(p);
                order.push(p);
            }
        }
        Some(order)
    }
}

/// Remove the go cache's entries for the compiles of `packages`, so that the next `go build`
/// compiles them again (and the recorder sees it). Returns those it removed. The compile is
/// deterministic: the archive it writes has the bytes of the one it replaces, so nothing that
/// depends on it compiles again.
pub(crate) fn evict(
    gocache: &Path,
    graph: &Graph,
    packages: &BTreeSet<String>,
) -> BTreeSet<String> {
    packages
        .iter()
        .filter(|p| {
            graph
                .packages
                .get(*p)
                .and_then(|g| g.action_id.as_deref())
                .is_some_and(|id| go_command::evict_action(gocache, id))
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRAPH: &str = r#"[
        {"ID": 0, "Mode": "link-install", "Package": "m", "Deps": [1]},
        {"ID": 1, "Mode": "link", "Package": "m", "Deps": [2, 3, 4, 5]},
        {"ID": 2, "Mode": "build", "Package": "m", "Deps": [3, 5, 6], "ActionID": "AAAA", "Cmd": ["compile"]},
        {"ID": 3, "Mode": "build", "Package": "m/api", "Deps": [4, 7], "ActionID": "BBBB", "Cmd": null},
        {"ID": 4, "Mode": "build", "Package": "m/util", "Deps": [5], "ActionID": "CCCC", "Cmd": ["compile"]},
        {"ID": 5, "Mode": "build", "Package": "fmt", "ActionID": "DDDD"},
        {"ID": 6, "Mode": "build check cache", "Package": "m", "Deps": [3]},
        {"ID": 7, "Mode": "build check cache", "Package": "m/api"}
    ]"#;

    fn set(s: &[&str]) -> BTreeSet<String> {
        s.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn packages_imports_and_what_was_compiled() {
        let g = Graph::parse(GRAPH.as_bytes()).unwrap();
        assert_eq!(g.main, "m");
        assert_eq!(g.packages["m"].imports, set(&["m/api", "fmt"]));
        assert_eq!(g.packages["m/api"].imports, set(&["m/util"]));
        assert!(g.packages["m/util"].compiled && !g.packages["m/api"].compiled);
        assert_eq!(g.packages["m/api"].action_id.as_deref(), Some("BBBB"));
        assert_eq!(g.importers(&set(&["m/util"])), set(&["m/api", "m"]));
        assert_eq!(g.importers(&set(&["m"])), set(&[]));
        assert_eq!(
            g.in_import_order(&set(&["m", "m/api", "m/util"])),
            Some(vec!["m/util", "m/api", "m"])
        );
        assert!(Graph::parse(b"[]").is_err());
    }
}
