//! `toolgate operators`: make, list and revoke the accounts of people who watch and steer
//! gateways from a console, `tail` or `approve` (`--operators FILE` on `wrap` and `serve`).
//!
//! As with grants, `add` prints the new token once, alone on stdout, and stores only its
//! SHA-256; a running gateway applies every change to the file at once, closing the
//! connections of a revoked account.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::control::operators::{Operators, Role};
use crate::sanitize::terminal_text;

/// Manage operator accounts: who may watch a gateway, approve its held calls, or change
/// what it enforces.
///
/// Roles: viewer (watches), approver (also approves and denies held calls), admin (also
/// accepts changed tools' definitions and writes the policy). A gateway reads the file given
/// as `--operators`; the token printed by `add` is then accepted on its event websocket
/// (`toolgate console --connect URL --token-file FILE`).
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    #[command(subcommand)]
    command: OperatorsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum OperatorsCommand {
    /// Make an account and print its token once (only its hash is stored).
    Add {
        /// The operator's name: what events and audit records name as who decided.
        name: String,
        /// What the account may do.
        #[arg(long, value_enum)]
        role: RoleArg,
        #[command(flatten)]
        file: FileArg,
    },
    /// List the accounts (names, roles, creation times; tokens are not stored).
    List {
        #[command(flatten)]
        file: FileArg,
    },
    /// Revoke an account: its token stops working at once, and its open connections to
    /// running gateways are closed (deleting the file revokes them all).
    Revoke {
        name: String,
        #[command(flatten)]
        file: FileArg,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    /// Watches calls, holds, counters and the policy.
    Viewer,
    /// Also approves and denies held calls.
    Approver,
    /// Also accepts changed tools and writes the policy.
    Admin,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Role {
        match role {
            RoleArg::Viewer => Role::Viewer,
            RoleArg::Approver => Role::Approver,
            RoleArg::Admin => Role::Admin,
        }
    }
}

#[derive(Debug, clap::Args)]
struct FileArg {
    /// The operators file (JSON, mode 0600), as given to `--operators`.
    #[arg(long, value_name = "OPERATORS.json", env = "TOOLGATE_OPERATORS")]
    file: PathBuf,
}

pub(super) fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        OperatorsCommand::Add { name, role, file } => {
            let role = Role::from(role);
            let mut operators = Operators::load_or_empty(&file.file)?;
            let token = operators.add(&name, role)?;
            operators.save(&file.file)?;
            println!("{token}");
            eprintln!(
                "{}",
                terminal_text(&format!(
                    "operator {name:?} ({role}) added to {}; the token above is shown only this once",
                    file.file.display()
                ))
            );
        }
        OperatorsCommand::List { file } => {
            let operators = Operators::load_or_empty(&file.file)?;
            if operators.operators.is_empty() {
                eprintln!(
                    "no operators in {}",
                    terminal_text(&file.file.display().to_string())
                );
            }
            for (name, entry) in &operators.operators {
                println!(
                    "{}\t{}\t{}",
                    terminal_text(name),
                    entry.role,
                    entry.created_at.to_rfc3339()
                );
            }
        }
        OperatorsCommand::Revoke { name, file } => {
            let mut operators =
                Operators::load(&file.file).with_context(|| format!("cannot revoke {name:?}"))?;
            if !operators.revoke(&name) {
                anyhow::bail!("no operator named {name:?} in {}", file.file.display());
            }
            operators.save(&file.file)?;
            eprintln!("{}", terminal_text(&format!("operator {name:?} revoked")));
        }
    }
    Ok(ExitCode::SUCCESS)
}
