//! Which `kdev-controller` goes into a pod: the one built for its node's architecture.
//!
//! kdev knows controllers for `linux/amd64` and `linux/arm64`, found in this order (the first
//! per architecture wins; a file's ELF header says which architecture it is for):
//! `$KDEV_CONTROLLER_BIN`; the ones embedded in this kdev when it was built in release mode
//! (`cargo install --path cli`, see `cli/build.rs`); `kdev-controller-<arch>` and
//! `kdev-controller` next to the `kdev` executable; the workspace's
//! `target/<triple>/release/kdev-controller`. kdev never uploads a controller built for another
//! architecture than the node's: it stops and names the command that builds the right one.

use std::path::PathBuf;
use std::sync::Arc;

use super::bootstrap::{BootstrapError, CONTROLLER_ENV, is_dynamic_elf};

/// The controllers this kdev was built with: `(architecture, binary)`.
const EMBEDDED: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/embedded_controllers.rs"));

/// A node architecture kdev can build a controller for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    /// From a node's `status.nodeInfo.architecture` (Go's GOARCH) or `uname -m`.
    pub fn parse(s: &str) -> Option<Arch> {
        match s.trim() {
            "amd64" | "x86_64" => Some(Arch::Amd64),
            "arm64" | "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }

    /// From an ELF file's header (`e_machine`).
    fn of_elf(data: &[u8]) -> Option<Arch> {
        if data.len() < 20 || &data[..4] != b"\x7fELF" {
            return None;
        }
        match u16::from_le_bytes([data[18], data[19]]) {
            0x3e => Some(Arch::Amd64),
            0xb7 => Some(Arch::Arm64),
            _ => None,
        }
    }

    /// Go's name for it.
    pub fn goarch(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// Rust's target triple for the static controller.
    pub fn triple(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// The argument of `controller/build-static`.
    fn build_arg(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::Arm64 => "aarch64",
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "linux/{}", self.goarch())
    }
}

/// One controller binary and where it came from.
#[derive(Debug, Clone)]
pub struct Controller {
    arch: Arch,
    pub binary: Arc<Vec<u8>>,
    from: String,
}

/// The controllers found, at most one per architecture.
#[derive(Debug, Clone, Default)]
pub struct Controllers(Vec<Controller>);

/// Why no controller fits a node.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error(
        "the dev pod {pod} runs on node {node}, a {arch} node, and this kdev has no kdev-controller \
         for {arch} (it has: {have}). Build one with `controller/build-static {build}` in the kdev \
         repository (its README: \"Nodes that are not x86_64\") and put it next to kdev as \
         kdev-controller-{goarch}, or reinstall kdev with that target installed"
    )]
    Missing {
        pod: String,
        node: String,
        arch: Arch,
        have: String,
        build: &'static str,
        goarch: &'static str,
    },
    #[error(
        "the dev pod {pod} runs on node {node}, whose architecture `{0}` kdev has no controller for \
         (linux/amd64 and linux/arm64 are supported)",
        .reported
    )]
    Unknown {
        pod: String,
        node: String,
        reported: String,
    },
}

impl Controllers {
    /// Every controller kdev can find (see the module docs); an error when there is none.
    pub fn find() -> Result<Controllers, BootstrapError> {
        let mut found = Controllers::default();
        let mut looked = Vec::new();
        if let Some(p) = std::env::var_os(CONTROLLER_ENV).filter(|v| !v.is_empty()) {
            let p = PathBuf::from(p);
            let data = std::fs::read(&p).map_err(|source| BootstrapError::Read {
                path: p.clone(),
                source,
            })?;
            if is_dynamic_elf(&data) {
                return Err(BootstrapError::Dynamic(p));
            }
            let from = format!("{CONTROLLER_ENV}={}", p.display());
            if Arch::of_elf(&data).is_some() {
                found.add(data, from);
            } else {
                // Not an ELF binary (a script): it says nothing of an architecture, and what
                // the user named explicitly is what they get, on any node.
                let binary = Arc::new(data);
                for arch in Arch::ALL {
                    found.0.push(Controller {
                        arch,
                        binary: binary.clone(),
                        from: from.clone(),
                    });
                }
            }
        }
        for (arch, data) in EMBEDDED {
            if Arch::parse(arch).is_some() {
                found.add(data.to_vec(), "embedded in kdev".into());
            }
        }
        for p in candidate_paths() {
            if let Ok(data) = std::fs::read(&p)
                && !is_dynamic_elf(&data)
            {
                found.add(data, p.display().to_string());
            }
            looked.push(p.display().to_string());
        }
        if found.0.is_empty() {
            return Err(BootstrapError::NotFound(looked.join(", ")));
        }
        Ok(found)
    }

    /// Keep `data` if it is a controller for an architecture not found yet.
    fn add(&mut self, data: Vec<u8>, from: String) {
        if let Some(arch) = Arch::of_elf(&data)
            && !self.0.iter().any(|c| c.arch == arch)
        {
            self.0.push(Controller {
                arch,
                binary: Arc::new(data),
                from,
            });
        }
    }

    /// The controller for a node that reports architecture `reported`.
    pub fn for_node(
        &self,
        reported: &str,
        pod: &str,
        node: &str,
    ) -> Result<&Controller, SelectError> {
        let Some(arch) = Arch::parse(reported) else {
            return Err(SelectError::Unknown {
                pod: pod.into(),
                node: node.into(),
                reported: reported.into(),
            });
        };
        self.0
            .iter()
            .find(|c| c.arch == arch)
            .ok_or_else(|| SelectError::Missing {
                pod: pod.into(),
                node: node.into(),
                arch,
                have: self.describe(),
                build: arch.build_arg(),
                goarch: arch.goarch(),
            })
    }

    /// `linux/amd64 (embedded in kdev, 3.6 MiB)`, for messages and `kdev --version`.
    pub fn describe(&self) -> String {
        if self.0.is_empty() {
            return "none".into();
        }
        self.0
            .iter()
            .map(|c| {
                format!(
                    "{} ({}, {:.1} MiB)",
                    c.arch,
                    c.from,
                    c.binary.len() as f64 / 1048576.0
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The controllers embedded in this kdev (for `kdev --version`).
pub fn embedded() -> String {
    let archs: Vec<String> = EMBEDDED
        .iter()
        .map(|(a, data)| format!("linux/{a} {:.1} MiB", data.len() as f64 / 1048576.0))
        .collect();
    if archs.is_empty() {
        "none embedded (a debug build: found next to kdev or in the workspace at run time)".into()
    } else {
        archs.join(", ")
    }
}

/// Tests only: the node architecture kdev believes the dev pod's node has.
const TEST_NODE_ARCH_ENV: &str = "KDEV_TEST_NODE_ARCH";

/// The node the dev pod runs on and its architecture: the Node's
/// `status.nodeInfo.architecture`, or, without permission to read Nodes (the least-privilege
/// Role has none), `uname -m` in the sidecar.
pub async fn node_arch(
    client: &kube::Client,
    pods: &kube::Api<k8s_openapi::api::core::v1::Pod>,
    pod: &k8s_openapi::api::core::v1::Pod,
) -> Result<(String, String), String> {
    use kube::ResourceExt;
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_else(|| "(not scheduled)".into());
    if let Some(arch) = std::env::var(TEST_NODE_ARCH_ENV)
        .ok()
        .filter(|a| !a.is_empty())
    {
        return Ok((node, arch));
    }
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    match nodes.get(&node).await {
        Ok(n) => {
            if let Some(arch) = n.status.and_then(|s| s.node_info).map(|i| i.architecture) {
                return Ok((node, arch));
            }
        }
        Err(e) => tracing::debug!("reading node {node}: {e}; asking the pod instead"),
    }
    let arch = super::bootstrap::exec_sh(pods, &pod.name_any(), "uname -m", None)
        .await
        .map_err(|e| format!("cannot tell the architecture of node {node}: {e}"))?;
    Ok((node, arch.trim().to_string()))
}

/// Files next to the `kdev` executable and in its workspace's target directory.
fn candidate_paths() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        for arch in Arch::ALL {
            out.push(dir.join(format!("kdev-controller-{}", arch.goarch())));
        }
        out.push(dir.join("kdev-controller"));
        // In a cargo workspace: target/{debug,release}/kdev → target/<triple>/release/.
        if let Some(target) = dir.parent() {
            for arch in Arch::ALL {
                out.push(target.join(arch.triple()).join("release/kdev-controller"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(machine: u16) -> Vec<u8> {
        let mut d = vec![0u8; 64];
        d[..4].copy_from_slice(b"\x7fELF");
        d[4] = 2;
        d[18..20].copy_from_slice(&machine.to_le_bytes());
        d
    }

    #[test]
    fn architectures_from_nodes_uname_and_elf_headers() {
        assert_eq!(Arch::parse("amd64"), Some(Arch::Amd64));
        assert_eq!(Arch::parse("aarch64\n"), Some(Arch::Arm64));
        assert_eq!(Arch::parse("s390x"), None);
        assert_eq!(Arch::of_elf(&elf(0x3e)), Some(Arch::Amd64));
        assert_eq!(Arch::of_elf(&elf(0xb7)), Some(Arch::Arm64));
        assert_eq!(Arch::of_elf(b"#!/bin/sh\n"), None);
    }

    #[test]
    fn the_nodes_architecture_picks_the_controller_or_names_the_build_command() {
        let mut c = Controllers::default();
        c.add(elf(0x3e), "first".into());
        c.add(elf(0x3e), "second amd64: ignored".into());
        c.add(b"not an ELF".to_vec(), "ignored".into());
        assert_eq!(c.for_node("amd64", "p", "n").unwrap().from, "first");
        let err = c.for_node("arm64", "web-1", "mac").unwrap_err().to_string();
        assert!(
            err.contains("a linux/arm64 node")
                && err.contains("`controller/build-static aarch64`")
                && err.contains("kdev-controller-arm64")
                && err.contains("it has: linux/amd64 (first"),
            "{err}"
        );
        let err = c.for_node("riscv64", "p", "n").unwrap_err().to_string();
        assert!(err.contains("`riscv64`"), "{err}");
        c.add(elf(0xb7), "arm".into());
        assert_eq!(c.for_node("aarch64", "p", "n").unwrap().arch, Arch::Arm64);
    }
}
