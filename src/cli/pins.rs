//! `toolgate pins`: list, accept and reset tool pins, in the store the gateways use (chosen
//! by the same `--counters` options: the SQLite counter file by default, Redis, or nothing
//! to do with `memory`, whose pins live inside each gateway).
//!
//! `accept` pins the definition a gateway last saw offered for a changed tool (the store
//! keeps it as an offer, see `PinStore::offer`): a running gateway lifts the tool's
//! quarantine on its next `tools/list` (the client's, or its own after the server's
//! `notifications/tools/list_changed`). The console's `accept_pin` lifts it at once.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;

use super::counter_args::CounterArgs;
use crate::pins::{Fingerprint, Pin, PinStore};
use crate::policy::StoreSpec;
use crate::sanitize::terminal_text;

/// Tool pins: what each server's tools were when first seen, and changes waiting for review.
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    #[command(subcommand)]
    command: PinsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum PinsCommand {
    /// List the pins (and the changed definitions waiting for review).
    List {
        /// Only this server identity's pins.
        #[arg(long, value_name = "NAME")]
        server: Option<String>,
        /// One JSON document on stdout (pins and offers, with their definitions).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        counters: CounterArgs,
    },
    /// Accept the changed definition of TOOL that gateways saw SERVER offer: it becomes the
    /// pin, and gateways lift the quarantine on their next tools/list.
    Accept {
        /// The server identity (`pins list` shows them).
        server: String,
        tool: String,
        /// Accept only if the offered definition has this fingerprint (the one reviewed).
        #[arg(long, value_name = "HEX")]
        fingerprint: Option<String>,
        #[command(flatten)]
        counters: CounterArgs,
    },
    /// Forget every pin of SERVER: its tools are pinned afresh when next listed.
    Reset {
        server: String,
        #[command(flatten)]
        counters: CounterArgs,
    },
}

pub(super) fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        PinsCommand::List {
            server,
            json,
            counters,
        } => {
            let store = open(&counters)?;
            let pins = store
                .list(server.as_deref())
                .map_err(|e| anyhow::anyhow!(e.0))?;
            let offers = store
                .offers(server.as_deref())
                .map_err(|e| anyhow::anyhow!(e.0))?;
            if json {
                let doc = Listing {
                    pins: pins.iter().map(Row::of).collect(),
                    offers: offers.iter().map(Row::of).collect(),
                };
                println!("{}", crate::sanitize::json_pretty(&doc)?);
                return Ok(ExitCode::SUCCESS);
            }
            if pins.is_empty() {
                eprintln!(
                    "no pins{}",
                    match &server {
                        Some(s) => format!(" for server {}", terminal_text(s)),
                        None => String::new(),
                    }
                );
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<24} {:<32} {:<14} {:<10}",
                "SERVER", "TOOL", "PINNED", "STATE"
            );
            for pin in &pins {
                let offered = offers
                    .iter()
                    .find(|o| o.server == pin.server && o.tool == pin.tool);
                let state = match offered {
                    Some(o) => format!("changed: offered {}", short(&o.fingerprint)),
                    None => "pinned".to_owned(),
                };
                println!(
                    "{:<24} {:<32} {:<14} {state}",
                    terminal_text(&pin.server),
                    terminal_text(&pin.tool),
                    short(&pin.fingerprint),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        PinsCommand::Accept {
            server,
            tool,
            fingerprint,
            counters,
        } => {
            let store = open(&counters)?;
            let offers = store
                .offers(Some(&server))
                .map_err(|e| anyhow::anyhow!(e.0))?;
            let Some(offer) = offers.into_iter().find(|o| o.tool == tool) else {
                anyhow::bail!(
                    "no changed definition of tool `{tool}` of server `{server}` is waiting for \
                     review (`toolgate pins list --server {server}` shows what is)"
                );
            };
            if let Some(wanted) = &fingerprint {
                let wanted = Fingerprint::from_hex(&wanted.to_ascii_lowercase())
                    .context("--fingerprint must be 64 hex digits")?;
                if wanted != offer.fingerprint {
                    anyhow::bail!(
                        "the definition offered now has fingerprint {}, not the one given; \
                         review it (`toolgate pins list --json`) and accept that one",
                        offer.fingerprint
                    );
                }
            }
            store
                .accept(&server, &tool, &offer.fingerprint, &offer.definition)
                .map_err(|e| anyhow::anyhow!(e.0))?;
            eprintln!(
                "accepted {} of {} (fingerprint {}); running gateways lift its quarantine on \
                 their next tools/list",
                terminal_text(&tool),
                terminal_text(&server),
                offer.fingerprint
            );
            Ok(ExitCode::SUCCESS)
        }
        PinsCommand::Reset { server, counters } => {
            let store = open(&counters)?;
            let n = store.reset(&server).map_err(|e| anyhow::anyhow!(e.0))?;
            eprintln!(
                "forgot {n} pin{} of {}; its tools are pinned afresh when next listed",
                if n == 1 { "" } else { "s" },
                terminal_text(&server)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The pin store the gateways with these `--counters` use.
fn open(counters: &CounterArgs) -> anyhow::Result<Arc<dyn PinStore>> {
    let spec = counters.spec()?;
    if spec == StoreSpec::Memory {
        anyhow::bail!(
            "with --counters memory each gateway keeps its pins in its own memory; there is no \
             store to open (accept a change in the console instead)"
        );
    }
    let (store, _) = counters
        .open_pins()
        .context("cannot open the pin store (where --counters are)")?;
    Ok(store)
}

fn short(fingerprint: &Fingerprint) -> String {
    let mut hex = fingerprint.to_hex();
    hex.truncate(12);
    hex
}

#[derive(Serialize)]
struct Listing {
    pins: Vec<Row>,
    /// Changed definitions waiting for review.
    offers: Vec<Row>,
}

#[derive(Serialize)]
struct Row {
    server: String,
    tool: String,
    fingerprint: String,
    definition: serde_json::Value,
    at: Option<String>,
}

impl Row {
    fn of(pin: &Pin) -> Row {
        Row {
            server: pin.server.clone(),
            tool: pin.tool.clone(),
            fingerprint: pin.fingerprint.to_hex(),
            definition: serde_json::to_value(&pin.definition).unwrap_or_default(),
            at: i64::try_from(pin.pinned_at_ms)
                .ok()
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.to_rfc3339()),
        }
    }
}
