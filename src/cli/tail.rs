//! `toolgate tail`.

use std::process::ExitCode;

/// (not yet built)
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`toolgate tail` is not built yet")
}
