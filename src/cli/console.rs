//! `toolgate console`.

use std::process::ExitCode;

/// (not yet built)
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`toolgate console` is not built yet")
}
