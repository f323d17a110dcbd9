//! `kdev status` and `kdev ui`: the sessions running on this machine, read from their status
//! APIs (found in [`crate::status::registry`]).

use std::path::Path;

use anyhow::Result;

use crate::error::UsageError;
use crate::project::Project;
use crate::status::model::SessionStatus;
use crate::status::{client, registry, term_block};

/// How `kdev status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A few lines per session, for people.
    Table,
    /// The sessions' status documents, as one JSON array.
    Json,
}

/// `kdev status`.
pub async fn print(format: Format) -> Result<()> {
    let mut sessions: Vec<SessionStatus> = Vec::new();
    let mut silent: Vec<String> = Vec::new();
    for entry in registry::running() {
        match client::fetch(&entry).await {
            Ok(s) => sessions.push(s),
            Err(e) => silent.push(format!(
                "kdev (pid {}) for {} does not answer: {e:#}",
                entry.pid, entry.root
            )),
        }
    }
    for line in &silent {
        eprintln!("kdev: warning: {line}");
    }
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&sessions)?),
        Format::Table if sessions.is_empty() => {
            println!("no kdev session is running on this machine (start one with `kdev watch`)")
        }
        Format::Table => {
            for (i, s) in sessions.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                print!("{}", table(s));
            }
        }
    }
    Ok(())
}

/// One session for people: a header, then the status block's rows.
fn table(s: &SessionStatus) -> String {
    let mut out = format!(
        "{} (kdev {}, pid {}) in {} as {}: {}\n",
        s.project, s.command, s.pid, s.namespace, s.owner, s.root
    );
    if let Some(url) = &s.ui_url {
        out.push_str(&format!("  status page: {url}\n"));
    }
    // The block's rows, as wide as they need to be (no terminal to fit).
    for row in term_block::render(s, 400, usize::MAX, false)
        .into_iter()
        .skip(1)
    {
        out.push_str(&row);
        out.push('\n');
    }
    out
}

/// `kdev ui`: the page of the session for the project at `config_path`, else of the only
/// session running.
pub fn print_page_url(config_path: &Path) -> Result<()> {
    let running = registry::running();
    let root = Project::load(config_path).ok().map(|p| p.root);
    let mine: Vec<&registry::Entry> = running
        .iter()
        .filter(|e| root.as_ref().is_some_and(|r| Path::new(&e.root) == r))
        .collect();
    let entry = match (mine.as_slice(), running.as_slice()) {
        ([e, ..], _) => *e,
        ([], [only]) => only,
        ([], []) => {
            return Err(UsageError(
                "no kdev session is running on this machine: start one with `kdev watch`".into(),
            )
            .into());
        }
        ([], several) => {
            let roots: Vec<&str> = several.iter().map(|e| e.root.as_str()).collect();
            return Err(UsageError(format!(
                "{} kdev sessions are running ({}); run `kdev ui` in the project you want, or \
                 with -f its kdev.yaml",
                several.len(),
                roots.join(", ")
            ))
            .into());
        }
    };
    println!("{}", entry.page_url());
    Ok(())
}
