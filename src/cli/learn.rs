//! `toolgate learn`: propose a least-privilege policy from the calls gateways recorded with
//! `--learn` (or a policy's `"learn": true`), or erase those records (`--forget`).
//!
//! The I/O shell around [`crate::learn::propose`]: read the observations where the counters
//! are, class each tool with `scan` (from its pinned definition when there is one, else its
//! name), build the draft, validate it as `check` does and re-decide every recorded call
//! against it (what-if) before anything is written. A draft that fails either is never
//! written. Everything printed goes through [`crate::sanitize`]: tool names, arguments and
//! reasons came from agents and servers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use chrono::Utc;

use crate::learn::propose::{self, WhatIf};
use crate::learn::{Draft, ProposalKind};
use crate::policy::store::spec;
use crate::policy::{Policy, StoreSpec};
use crate::sanitize::terminal_text;
use crate::scan::RiskClass;
use crate::wire::ToolInfo;

/// Propose a least-privilege policy from recorded traffic (gateways started with --learn).
///
/// The draft denies by default and allows each observed tool with a per-grant limit just
/// above its busiest rolling window and conditions that keep its arguments in what was seen;
/// each rule's reason gives the evidence. It is validated and every recorded call is
/// re-decided against it (what-if) before it is written: a draft that would refuse a
/// recorded call is not written.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  toolgate wrap --learn --policy open.json -- npx -y @modelcontextprotocol/server-filesystem /srv/notes
  toolgate learn --output policy.json                 a draft from the last 7 days
  toolgate learn --server fs --since 2d --grant ci    one server, two days, one grant
  toolgate learn --against policy.json                what to tighten or remove, as a diff
  toolgate learn --review policy.json                 review them one by one in the console
  toolgate learn --proposals draft.json               the proposals, to review later
  toolgate learn --forget --server fs                 erase what was recorded")]
pub(super) struct Args {
    /// Only the calls to this server (its identity: `--server-id`, the `serve` name, or
    /// the server's own name) [default: every server].
    #[arg(long, value_name = "ID")]
    server: Option<String>,
    /// How far back to read: a number with d, h, m or s. Observations are kept 7 days.
    #[arg(long, value_name = "AGE", default_value = "7d")]
    since: String,
    /// Only the calls of this grant.
    #[arg(long, value_name = "G")]
    grant: Option<String>,
    /// Write the draft policy here [default: print it].
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Propose changes to this policy instead of a fresh one: rules looser than the traffic
    /// needs are tightened, tools allowed but never used are removed; printed as a diff.
    #[arg(long, value_name = "POLICY")]
    against: Option<PathBuf>,
    /// Write the proposals, the base policy and the observations used as JSON (mode 0600:
    /// it holds argument values), for `toolgate console --review-learned FILE`.
    #[arg(long, value_name = "FILE")]
    proposals: Option<PathBuf>,
    /// Review the proposals in the console, one by one (accept, reject, edit, widen, skip),
    /// with what the result would refuse of the recorded calls, then the diff and y to write
    /// POLICY (the --against file, or a new one). The same as --proposals FILE followed by
    /// `toolgate console --review-learned FILE --policy POLICY`.
    #[arg(long, value_name = "POLICY", conflicts_with = "output")]
    review: Option<PathBuf>,
    /// Replace --output if it exists (without it an existing file is kept).
    #[arg(long, requires = "output")]
    force: bool,
    /// Erase the recorded calls (of --server only, when given) and exit.
    #[arg(long, conflicts_with_all = ["since", "grant", "output", "against", "proposals", "force", "review"])]
    forget: bool,
    /// The --counters the gateways were started with: observations live beside them
    /// [default: ~/.local/state/toolgate/counters.sqlite3]
    #[arg(long, value_name = "STORE")]
    counters: Option<StoreSpec>,
    /// The --counters-prefix of a Redis store [default: toolgate]
    #[arg(long, value_name = "PREFIX")]
    counters_prefix: Option<String>,
}

pub(super) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let spec = spec::resolve(args.counters.as_ref())?;
    let prefix = args.counters_prefix.as_deref();
    let Some(store) = crate::learn::store::open(&spec, prefix)? else {
        anyhow::bail!(
            "--counters memory keeps no observations; give the --counters the gateway used"
        );
    };
    let server = args.server.as_deref();
    if args.forget {
        let n = store.forget(server)?;
        let whose = server.map_or(String::new(), |s| format!(" of server {s}"));
        println!(
            "{}",
            terminal_text(&format!(
                "forgot {n} recorded call(s){whose} in {}",
                store.describe()
            ))
        );
        return Ok(ExitCode::SUCCESS);
    }
    let now = Utc::now();
    let since = propose::since(&args.since, now).map_err(anyhow::Error::msg)?;
    let now_ms = u64::try_from(now.timestamp_millis()).unwrap_or(0);
    let mut observations = store.read(server, since, now_ms)?;
    if let Some(grant) = &args.grant {
        observations.retain(|o| o.grant.as_deref() == Some(grant.as_str()));
    }
    let unnameable: std::collections::BTreeSet<String> = observations
        .iter()
        .filter(|o| !propose::nameable(&o.tool))
        .map(|o| o.tool.clone())
        .collect();
    for tool in &unnameable {
        eprintln!(
            "{}",
            terminal_text(&format!(
                "warning: tool {tool:?} has * or ? in its name, which a policy key reads as a \
                 glob: not proposed (its calls are left to the default) and left out of the \
                 what-if"
            ))
        );
    }
    observations.retain(|o| propose::nameable(&o.tool));
    if observations.is_empty() {
        eprintln!(
            "{}",
            terminal_text(&format!(
                "toolgate learn: no recorded calls in {} since {} (start a gateway with \
                 --learn, or \"learn\": true in its policy, with the same --counters)",
                store.describe(),
                since.format("%Y-%m-%d %H:%M UTC")
            ))
        );
        return Ok(ExitCode::from(1));
    }

    let classes = classes(&spec, prefix, server);
    let class = |tool: &str| {
        classes.get(tool).copied().unwrap_or_else(|| {
            crate::scan::classify(&ToolInfo {
                name: tool.to_owned(),
                description: None,
                input_schema: None,
                output_schema: None,
                annotations: None,
            })
            .class
        })
    };
    let draft = match &args.against {
        Some(path) => {
            let text = crate::policy::read_source(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            // The base must be valid itself: proposals to an invalid policy mean nothing.
            if let Err(e) = Policy::parse(&text, &path.display().to_string()) {
                eprintln!("{}", terminal_text(&e.to_string()));
                return Ok(ExitCode::from(1));
            }
            propose::against(&text, &observations, &class).map_err(anyhow::Error::msg)?
        }
        None => propose::propose(&observations, &class),
    };

    let shown = args
        .output
        .as_deref()
        .map_or("the draft".to_owned(), |p| p.display().to_string());
    let text = draft.policy_text().map_err(anyhow::Error::msg)?;
    // The same validation as `toolgate check`, before anything is written.
    let policy = match Policy::parse(&text, &shown) {
        Ok(policy) => policy,
        Err(e) => {
            eprintln!(
                "{}",
                terminal_text(&format!(
                    "toolgate learn: the draft does not validate; nothing written:\n{e}"
                ))
            );
            return Ok(ExitCode::from(1));
        }
    };
    let whatif = propose::what_if(&policy, &observations);
    print_summary(&draft, args.against.as_deref(), &whatif);
    if !whatif.refused.is_empty() {
        for r in whatif.refused.iter().take(10) {
            eprintln!(
                "{}",
                terminal_text(&format!(
                    "  refused: {} at {} ({}): {}",
                    r.observation.tool,
                    r.observation.at.format("%Y-%m-%d %H:%M:%S"),
                    r.rule,
                    r.reason
                ))
            );
        }
        eprintln!(
            "toolgate learn: the draft would refuse recorded calls; this is a bug in the \
             proposal, nothing written"
        );
        return Ok(ExitCode::from(1));
    }

    if let Some(path) = &args.proposals {
        write_private(path, &crate::sanitize::json_pretty(&draft)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!(
            "{}",
            terminal_text(&format!(
                "proposals written to {} (review: toolgate console --review-learned {})",
                path.display(),
                path.display()
            ))
        );
    }
    if let Some(policy) = &args.review {
        return super::console::review_learned(&draft, policy);
    }
    match &args.output {
        Some(path) => {
            super::write_output(
                path,
                &text,
                args.force,
                &format!(", or --against {} to propose changes to it", path.display()),
            )?;
            eprintln!(
                "{}",
                terminal_text(&format!(
                    "draft written to {} (toolgate check {} passes)",
                    path.display(),
                    path.display()
                ))
            );
        }
        None if args.proposals.is_none() => print!("{}", terminal_text(&text)),
        None => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// Each tool's risk class from its pinned definition (the pins live where the counters
/// do); a tool without a pin is classed by its name by the caller.
fn classes(
    spec: &StoreSpec,
    prefix: Option<&str>,
    server: Option<&str>,
) -> HashMap<String, RiskClass> {
    let pins = spec::open_pins(spec, prefix)
        .ok()
        .and_then(|(store, _)| store.list(server).ok())
        .unwrap_or_default();
    pins.into_iter()
        .map(|pin| {
            let d = pin.definition;
            let info = ToolInfo {
                name: d.name.clone(),
                description: d.description,
                input_schema: d.input_schema.map(serde_json::Value::Object),
                output_schema: None,
                annotations: d.annotations.map(serde_json::Value::Object),
            };
            (d.name, crate::scan::classify(&info).class)
        })
        .collect()
}

/// The proposals on stderr (the draft may go to stdout): one line each with its evidence,
/// as a diff with `--against`; then the what-if line.
fn print_summary(draft: &Draft, against: Option<&Path>, whatif: &WhatIf) {
    let mut lines = Vec::new();
    if let Some(path) = against {
        lines.push(format!("--- {}", path.display()));
        lines.push("+++ learned".to_owned());
    }
    for p in &draft.proposals {
        let rule =
            |r: &Option<serde_json::Value>| r.as_ref().map_or(String::new(), |r| r.to_string());
        match (against.is_some(), p.kind) {
            (false, _) => lines.push(format!("{}: {}", p.tool, p.reason)),
            (true, ProposalKind::Add) => {
                lines.push(format!("+ \"{}\": {}", p.tool, rule(&p.rule)));
            }
            (true, ProposalKind::Tighten) => {
                lines.push(format!("- \"{}\": {}", p.tool, rule(&p.current)));
                lines.push(format!("+ \"{}\": {}", p.tool, rule(&p.rule)));
            }
            (true, ProposalKind::Remove) => {
                lines.push(format!("- \"{}\": {}", p.tool, rule(&p.current)));
            }
        }
        if against.is_some() {
            lines.push(format!("  # {}", p.reason));
        }
    }
    if against.is_some()
        && let Ok(base) = Policy::parse(&draft.base, "base")
        && base.default_action() != crate::policy::Action::Deny
    {
        lines.push(
            "note: the policy's default lets tools no rule names through (or holds them); \
             --against leaves it as written, a draft without --against denies by default"
                .to_owned(),
        );
    }
    if against.is_some() && draft.proposals.is_empty() {
        lines.push("(no changes: the policy is as tight as the traffic allows)".to_owned());
    }
    lines.push(format!(
        "what-if: {} of {} recorded calls would be refused",
        whatif.refused.len(),
        whatif.total
    ));
    for line in lines {
        eprintln!("{}", terminal_text(&line));
    }
}

/// Writes a file only its owner can read (it holds argument values).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(text.as_bytes())
}
