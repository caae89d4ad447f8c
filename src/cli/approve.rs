//! `toolgate approve` and `toolgate deny`.

use std::process::ExitCode;

/// (not yet built)
#[derive(Debug, clap::Args)]
pub struct ApproveArgs {}

/// (not yet built)
#[derive(Debug, clap::Args)]
pub struct DenyArgs {}

pub fn run_approve(_args: ApproveArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`toolgate approve` is not built yet")
}

pub fn run_deny(_args: DenyArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`toolgate deny` is not built yet")
}
