//! `kdev init`: look at the project and write a kdev.yaml that works as is.
//!
//! It finds the Go module and its main packages, the manifests (plain YAML, a Kustomize
//! directory or overlay, a Helm chart) and the Deployments/StatefulSets they hold, and an
//! existing `.air.toml`; pairs workloads with main packages ([`plan`]); asks only what it cannot
//! decide (on a terminal; otherwise `--service WORKLOAD=PACKAGE` answers, and a missing answer is
//! an error listing the choices); and writes kdev.yaml with comments ([`write`]) and the JSON
//! Schema editors read through its first line. An existing kdev.yaml is kept unless `--force`.

mod air;
mod detect;
mod plan;
mod write;

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::config::{Config, ManifestSource};
use crate::error::UsageError;
use crate::project::project_name;

use detect::WorkloadFound;
use plan::{Pairing, PlannedService, Question};

/// What `kdev init` was told.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// The kdev.yaml to write; its directory is the project root.
    pub config_path: PathBuf,
    /// Replace an existing kdev.yaml.
    pub force: bool,
    /// `WORKLOAD=PACKAGE` pairs: with any, exactly these workloads are the services.
    pub services: Vec<String>,
    /// The manifests, instead of looking for them.
    pub manifests: Option<PathBuf>,
    pub sidecar_image: Option<String>,
}

/// `kdev init`.
pub fn run(opts: &InitOptions) -> Result<()> {
    let path = &opts.config_path;
    if path.exists() && !opts.force {
        return Err(UsageError(format!(
            "{} exists: kdev init does not replace it (pass --force to write a new one)",
            path.display()
        ))
        .into());
    }
    let root = module_root(path)?;
    let (go_version, mains) = detect::go_module(&root);
    if mains.is_empty() {
        return Err(UsageError(format!(
            "no main package in the module at {}: kdev builds and runs a `package main`",
            root.display()
        ))
        .into());
    }
    let manifests = match &opts.manifests {
        Some(p) => ManifestSource::Path(p.clone()),
        None => detect::manifests(&root).ok_or_else(|| {
            UsageError(
                "found no manifests (YAML, kustomization.yaml or Chart.yaml) in k8s/, deploy/, \
                 kubernetes/, manifests/, kustomize/, charts/, chart/ or helm/: pass --manifests PATH"
                    .into(),
            )
        })?,
    };
    let workloads = find_workloads(&root, &manifests)?;
    let air = read_air(&root)?;

    let pairing = if opts.services.is_empty() {
        let mut p = plan::pair(
            &workloads,
            &mains,
            air.as_ref().and_then(|a| a.package.as_deref()),
        );
        answer(&mut p)?;
        p
    } else {
        explicit(&opts.services, &workloads, &mains)?
    };
    if pairing.paired.is_empty() {
        bail!(UsageError(
            "no workload was chosen as a service: pass --service WORKLOAD=PACKAGE".into()
        ));
    }
    let services = plan::services(&pairing.paired);
    let left: Vec<(String, String)> = pairing
        .left
        .iter()
        .map(|(w, why)| (w.reference(), why.clone()))
        .collect();
    let text = write::render(&write::InitFile {
        manifests: &manifests,
        services: &services,
        left: &left,
        go_version: go_version.as_deref(),
        sidecar_image: opts.sidecar_image.as_deref(),
        air: air.as_ref(),
    });
    // What init writes must load: a failure here is kdev's bug, not the project's.
    Config::parse(&text, path).context("the kdev.yaml kdev init made does not load (a bug)")?;
    write_files(&root, path, &text)?;
    print_summary(path, &manifests, &services, &left, air.is_some());
    Ok(())
}

/// The project root: kdev.yaml's directory, which must be a Go module's root.
fn module_root(config_path: &Path) -> Result<PathBuf> {
    let root = match config_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let root = root
        .canonicalize()
        .with_context(|| format!("resolving the project directory {}", root.display()))?;
    if !root.join("go.mod").is_file() {
        return Err(UsageError(format!(
            "no go.mod in {}: run kdev init in your Go module's root",
            root.display()
        ))
        .into());
    }
    Ok(root)
}

/// The Deployments and StatefulSets of the rendered manifests; none is a usage error.
fn find_workloads(root: &Path, manifests: &ManifestSource) -> Result<Vec<WorkloadFound>> {
    let objects = detect::render(root, manifests, &project_name(root))
        .context("rendering the manifests to find their workloads")?;
    let workloads = detect::workloads(&objects);
    if workloads.is_empty() {
        return Err(UsageError(format!(
            "{} holds no Deployment or StatefulSet: kdev develops one of those",
            source_name(manifests)
        ))
        .into());
    }
    Ok(workloads)
}

/// The JSON Schema editors read, then kdev.yaml.
fn write_files(root: &Path, config_path: &Path, text: &str) -> Result<()> {
    let schema_path = root.join(write::SCHEMA_PATH);
    std::fs::create_dir_all(schema_path.parent().unwrap_or(root))
        .with_context(|| format!("creating {}", schema_path.display()))?;
    std::fs::write(&schema_path, format!("{}\n", crate::schema_json()))
        .with_context(|| format!("writing {}", schema_path.display()))?;
    std::fs::write(config_path, text)
        .with_context(|| format!("writing {}", config_path.display()))?;
    Ok(())
}

/// What was written: each service, each workload left as is, what came from `.air.toml`.
fn print_summary(
    config_path: &Path,
    manifests: &ManifestSource,
    services: &[PlannedService],
    left: &[(String, String)],
    air: bool,
) {
    println!(
        "Wrote {} for {}:",
        config_path.display(),
        source_name(manifests)
    );
    for s in services {
        let ports: Vec<String> = s
            .ports
            .iter()
            .map(|(l, r)| format!("localhost:{l} → {r}"))
            .collect();
        println!(
            "  {:<12} {} built from {}{}",
            s.name,
            s.workload.reference(),
            s.package,
            if ports.is_empty() {
                String::new()
            } else {
                format!(", {}", ports.join(", "))
            }
        );
    }
    for (w, why) in left {
        println!("  {w}: applied as the manifests say ({why})");
    }
    if air {
        println!(
            "  .air.toml: its build package, flags, excluded directories, args, env and pre_cmd carried over"
        );
    }
    println!(
        "Editors validate it with {} (see the README's \"Editor support\"). Next: kdev watch",
        write::SCHEMA_PATH
    );
}

fn source_name(m: &ManifestSource) -> String {
    match m {
        ManifestSource::Path(p) => p.display().to_string(),
        ManifestSource::Kustomize { kustomize } => {
            format!("the Kustomize directory {}", kustomize.display())
        }
        ManifestSource::Helm { helm } => format!("the Helm chart {}", helm.chart.display()),
        ManifestSource::Render { render } => format!("`{render}`"),
    }
}

fn read_air(root: &Path) -> Result<Option<air::FromAir>> {
    let path = root.join(".air.toml");
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let parsed = air::parse(&text).map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
    Ok(Some(parsed))
}

/// `--service WORKLOAD=PACKAGE` pairs: each names a workload of the manifests (by name or
/// kind/name) and a directory of the module.
fn explicit(pairs: &[String], workloads: &[WorkloadFound], mains: &[String]) -> Result<Pairing> {
    let mut out = Pairing::default();
    for pair in pairs {
        let Some((w, package)) = pair.split_once('=') else {
            bail!(UsageError(format!(
                "--service {pair}: expected WORKLOAD=PACKAGE, e.g. orders=./cmd/orders"
            )));
        };
        let found = workloads
            .iter()
            .find(|x| x.name == w || x.reference() == w)
            .ok_or_else(|| {
                UsageError(format!(
                    "--service {pair}: the manifests have no workload {w} (they have: {})",
                    names(workloads)
                ))
            })?;
        let package = if package.starts_with("./") || package == "." {
            package.to_string()
        } else {
            format!("./{package}")
        };
        if !mains.contains(&package) {
            bail!(UsageError(format!(
                "--service {pair}: {package} is not a main package of the module (they are: {})",
                mains.join(", ")
            )));
        }
        out.paired.push((found.clone(), package));
    }
    out.left = workloads
        .iter()
        .filter(|w| !out.paired.iter().any(|(p, _)| p == *w))
        .map(|w| (w.clone(), "not named by --service".to_string()))
        .collect();
    Ok(out)
}

fn names(workloads: &[WorkloadFound]) -> String {
    workloads
        .iter()
        .map(WorkloadFound::reference)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Ask the pairing's questions on the terminal, or fail listing them when there is none.
fn answer(p: &mut Pairing) -> Result<()> {
    if p.questions.is_empty() {
        return Ok(());
    }
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !interactive {
        let asked: Vec<String> = p
            .questions
            .iter()
            .map(|q| {
                format!(
                    "{} (one of {})",
                    q.workload.reference(),
                    q.choices.join(", ")
                )
            })
            .collect();
        bail!(UsageError(format!(
            "cannot tell which main package builds {}: pass --service WORKLOAD=PACKAGE for each \
             workload to develop (run on a terminal to be asked)",
            asked.join("; ")
        )));
    }
    let questions = std::mem::take(&mut p.questions);
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    for Question { workload, choices } in questions {
        let mut err = std::io::stderr().lock();
        writeln!(err, "Which main package builds {}?", workload.reference())?;
        for (i, c) in choices.iter().enumerate() {
            writeln!(err, "  {}) {c}", i + 1)?;
        }
        writeln!(err, "  0) none: apply it as the manifests say")?;
        let choice = loop {
            write!(err, "> ")?;
            err.flush()?;
            let line = lines
                .next()
                .transpose()?
                .ok_or_else(|| UsageError("no answer (end of input)".into()))?;
            match line.trim().parse::<usize>() {
                Ok(n) if n <= choices.len() => break n,
                _ => writeln!(err, "a number from 0 to {}, please", choices.len())?,
            }
        };
        if choice == 0 {
            p.left
                .push((workload, "you said it is not a service".into()));
        } else {
            p.paired.push((workload, choices[choice - 1].clone()));
        }
    }
    Ok(())
}
