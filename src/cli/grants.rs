//! `toolgate grants`: make, list and revoke the bearer tokens `toolgate serve` accepts.
//!
//! `add` prints the new token once, alone on stdout (so `TOKEN=$(toolgate grants add ci)`
//! works); everything else goes to stderr. Only the token's SHA-256 is stored. A running
//! `serve` picks up every change to the file, and deleting the file revokes every token.
//! A symlinked grants file stays a symlink: the file it leads to is rewritten.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::gateway::grants::Grants;
use crate::sanitize::terminal_text;

/// Manage the grants (bearer tokens) of `toolgate serve`.
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    #[command(subcommand)]
    command: GrantsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum GrantsCommand {
    /// Make a grant and print its token once (only its hash is stored).
    Add {
        /// The grant's name: what limits with scope "grant", events and audit records use.
        name: String,
        #[command(flatten)]
        file: FileArg,
    },
    /// List the grants (names and creation times; tokens are not stored).
    List {
        #[command(flatten)]
        file: FileArg,
    },
    /// Revoke a grant: its token stops working at once in every running `serve` (deleting
    /// the file revokes them all).
    Revoke {
        name: String,
        #[command(flatten)]
        file: FileArg,
    },
}

#[derive(Debug, clap::Args)]
struct FileArg {
    /// The grants file (JSON, mode 0600), as given to `toolgate serve --grants`.
    #[arg(long, value_name = "GRANTS.json", env = "TOOLGATE_GRANTS")]
    file: PathBuf,
}

pub(super) fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        GrantsCommand::Add { name, file } => {
            let mut grants = Grants::load_or_empty(&file.file)?;
            let token = grants.add(&name)?;
            grants.save(&file.file)?;
            println!("{token}");
            eprintln!(
                "{}",
                terminal_text(&format!(
                    "grant {name:?} added to {}; the token above is shown only this once",
                    file.file.display()
                ))
            );
        }
        GrantsCommand::List { file } => {
            let grants = Grants::load_or_empty(&file.file)?;
            if grants.grants.is_empty() {
                eprintln!(
                    "no grants in {}",
                    terminal_text(&file.file.display().to_string())
                );
            }
            for (name, entry) in &grants.grants {
                println!("{}\t{}", terminal_text(name), entry.created_at.to_rfc3339());
            }
        }
        GrantsCommand::Revoke { name, file } => {
            let mut grants =
                Grants::load(&file.file).with_context(|| format!("cannot revoke {name:?}"))?;
            if !grants.revoke(&name) {
                anyhow::bail!("no grant named {name:?} in {}", file.file.display());
            }
            grants.save(&file.file)?;
            eprintln!("{}", terminal_text(&format!("grant {name:?} revoked")));
        }
    }
    Ok(ExitCode::SUCCESS)
}
