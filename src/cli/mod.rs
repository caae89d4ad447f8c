//! The command line: one subcommand per file, each an `Args` (clap derive) and a `run`.
//!
//! Errors reach the person here, through `anyhow`, as one line that says what went wrong and
//! what to do. Commands return their own exit code (`check` exits 1 on an invalid policy).

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod approve;
mod audit_values;
mod check;
mod console;
mod counter_args;
mod demo;
mod explain;
mod gateway_args;
mod gateways;
mod grants;
mod junit;
mod learn;
mod operators;
mod pins;
mod remote_args;
mod scan;
mod serve;
pub(crate) mod tail;
mod test;
mod wrap;

/// Deterministic rules on every MCP tool call, and a console to watch and steer them.
#[derive(Debug, Parser)]
#[command(name = "toolgate", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "\
Examples:
  toolgate demo                                   see everything working, nothing to configure
  toolgate check policy.json                      validate a policy
  toolgate test policy.json cases.json            run a policy's test cases
  toolgate scan -- npx -y @modelcontextprotocol/server-everything > policy.json
  toolgate wrap --policy policy.json -- npx -y @modelcontextprotocol/server-everything
  toolgate console                                watch and steer every gateway on this machine";

#[derive(Debug, Subcommand)]
enum Command {
    Demo(demo::Args),
    Wrap(wrap::Args),
    Serve(serve::Args),
    Grants(grants::Args),
    Operators(operators::Args),
    Console(console::Args),
    Check(check::Args),
    Test(test::Args),
    Explain(explain::Args),
    Tail(tail::Args),
    Approve(approve::ApproveArgs),
    Deny(approve::DenyArgs),
    Gateways(gateways::Args),
    Scan(scan::Args),
    Pins(pins::Args),
    Learn(learn::Args),
    Completions(CompletionsArgs),
}

/// Print a shell completion script.
///
/// Example: toolgate completions bash > ~/.local/share/bash-completion/completions/toolgate
#[derive(Debug, clap::Args)]
struct CompletionsArgs {
    shell: clap_complete::Shell,
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Wrap(args) => wrap::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Grants(args) => grants::run(args),
        Command::Operators(args) => operators::run(args),
        Command::Console(args) => console::run(args),
        Command::Check(args) => check::run(args),
        Command::Test(args) => test::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Tail(args) => tail::run(args),
        Command::Approve(args) => approve::run_approve(args),
        Command::Deny(args) => approve::run_deny(args),
        Command::Gateways(args) => gateways::run(args),
        Command::Scan(args) => scan::run(args),
        Command::Pins(args) => pins::run(args),
        Command::Learn(args) => learn::run(args),
        Command::Completions(args) => {
            let mut script = Vec::new();
            clap_complete::generate(args.shell, &mut Cli::command(), "toolgate", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)
                .map(|()| ExitCode::SUCCESS)
                .map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(code) => code,
        // The reader went away (`toolgate tail | head`): nothing more to say, and no one to
        // say it to.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // Errors quote what they were given (arguments, file contents, answers from a
            // gateway or a server): neutralised line by line, so multi-line errors keep their
            // shape.
            let text = said_once(&err);
            let lines: Vec<_> = text.lines().map(crate::sanitize::terminal_text).collect();
            eprintln!("toolgate: error: {}", lines.join("\n"));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, joined by `: ` as `{:#}` does, but each said once: a cause whose
/// text is already part of what was said (an error whose message quotes its `{source}`, as
/// many here do) is not repeated. The chain itself is kept for whoever inspects it.
/// Writes a command's `--output` file, refusing to replace an existing one unless `force`;
/// `hint` follows "pass --force to replace it" in the refusal (another way out, or nothing).
fn write_output(path: &std::path::Path, text: &str, force: bool, hint: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = match options.open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => anyhow::bail!(
            "{} exists; not overwriting it (pass --force to replace it{hint})",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot write {}", path.display())),
    };
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn said_once(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    /// An error that quotes its source in its own message, as `thiserror` types here do.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot read policy.json: {source}")]
    struct Quoting {
        source: std::io::Error,
    }

    #[test]
    fn a_cause_already_quoted_by_its_effect_is_said_once_and_kept_in_the_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = Err::<(), _>(Quoting { source: io })
            .context("cannot load the policy")
            .unwrap_err();
        assert_eq!(
            super::said_once(&err),
            "cannot load the policy: cannot read policy.json: no such file"
        );
        assert!(
            err.chain()
                .any(|c| c.downcast_ref::<std::io::Error>().is_some())
        );
    }

    #[test]
    fn causes_that_add_something_are_all_said() {
        let err = anyhow::anyhow!("disk full")
            .context("cannot write the audit log")
            .context("cannot start");
        assert_eq!(
            super::said_once(&err),
            "cannot start: cannot write the audit log: disk full"
        );
    }
}
