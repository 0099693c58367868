//! The playbook catalog: `playbook push` registers a file as the next version of its name,
//! `playbook list` shows every name and its latest version, `playbook get` prints one version,
//! `playbook delete` deletes one.

use clap::Subcommand;
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use crate::http::{Error, Gateway};
use crate::input::{self, Source};
use crate::render::{answer, print_json};
use crate::table::Table;

#[derive(Debug, Subcommand)]
pub enum PlaybookCommand {
    /// Register a playbook (JSON or YAML; `-` for stdin) as the next version of its name.
    Push {
        #[arg(value_name = "FILE|-")]
        file: String,
        /// Print the gateway's JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the catalog's playbooks and their latest versions.
    List {
        /// Print the gateway's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a playbook (its latest version by default) as JSON, ready to edit and push again.
    Get {
        name: String,
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        version: Option<u64>,
        /// Print the gateway's whole answer (name, version, created_at, playbook).
        #[arg(long)]
        json: bool,
    },
    /// Delete one version of a playbook from the catalog (needs the `admin` scope).
    Delete {
        name: String,
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        version: u64,
    },
}

/// `201` of `POST /playbooks`.
#[derive(Debug, Clone, Deserialize)]
struct Registered {
    name: String,
    version: u64,
    #[serde(default)]
    created_at: String,
}

/// `200` of `GET /playbooks`.
#[derive(Debug, Clone, Deserialize)]
struct Catalog {
    playbooks: Vec<CatalogEntry>,
}

#[derive(Debug, Clone, Deserialize)]
struct CatalogEntry {
    name: String,
    latest_version: u64,
    #[serde(default)]
    updated_at: String,
}

/// `200` of `GET /playbooks/{name}` and `GET /playbooks/{name}/versions/{version}`.
#[derive(Debug, Clone, Deserialize)]
struct Version {
    name: String,
    version: u64,
    #[serde(default)]
    created_at: String,
    playbook: Value,
}

pub async fn run(gateway: &Gateway, command: PlaybookCommand) -> Result<u8, Error> {
    match command {
        PlaybookCommand::Push { file, json } => {
            let playbook =
                input::playbook_document(input::read_document(&Source::from_arg(&file))?)?;
            let url = gateway.url(&["playbooks"], &[])?;
            let (raw, registered): (Value, Registered) = gateway
                .json(gateway.request(Method::POST, url).json(&playbook))
                .await?;
            answer(&raw, json, || {
                println!(
                    "registered playbook {} version {} at {}",
                    registered.name, registered.version, registered.created_at
                );
            });
        }
        PlaybookCommand::Delete { name, version } => {
            let version = version.to_string();
            let url = gateway.url(&["playbooks", &name, "versions", &version], &[])?;
            gateway.send(gateway.request(Method::DELETE, url)).await?;
            eprintln!("deleted playbook {name} version {version}");
        }
        PlaybookCommand::List { json } => {
            let (raw, catalog): (Value, Catalog) = gateway.get(&["playbooks"], &[]).await?;
            answer(&raw, json, || {
                if catalog.playbooks.is_empty() {
                    eprintln!(
                        "noetlctl: the catalog is empty (add one with `noetlctl playbook push FILE`)"
                    );
                } else {
                    print!("{}", render_catalog(&catalog.playbooks));
                }
            });
        }
        PlaybookCommand::Get {
            name,
            version,
            json,
        } => {
            let version_text = version.map(|v| v.to_string());
            let segments: Vec<&str> = match &version_text {
                Some(v) => vec!["playbooks", &name, "versions", v],
                None => vec!["playbooks", &name],
            };
            let (raw, found): (Value, Version) = gateway.get(&segments, &[]).await?;
            answer(&raw, json, || {
                // The playbook alone on stdout, so it can be saved, edited and pushed again.
                eprintln!(
                    "playbook {} version {}, registered at {}",
                    found.name, found.version, found.created_at
                );
                print_json(&found.playbook);
            });
        }
    }
    Ok(0)
}

fn render_catalog(entries: &[CatalogEntry]) -> String {
    let mut table = Table::new(["NAME", "LATEST", "UPDATED"]);
    for entry in entries {
        table.row([
            entry.name.clone(),
            entry.latest_version.to_string(),
            entry.updated_at.clone(),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_prints_names_and_latest_versions() {
        let catalog: Catalog = serde_json::from_value(serde_json::json!({"playbooks": [
            {"name": "diamond", "latest_version": 3, "updated_at": "2026-11-23T10:00:00Z"},
            {"name": "hello", "latest_version": 1, "updated_at": "2026-11-22T09:00:00Z"}
        ]}))
        .expect("the documented shape");
        assert_eq!(
            render_catalog(&catalog.playbooks),
            "NAME     LATEST  UPDATED\n\
             diamond  3       2026-11-23T10:00:00Z\n\
             hello    1       2026-11-22T09:00:00Z\n"
        );
    }
}
