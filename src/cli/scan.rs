//! `toolgate scan`: connect to an MCP server, read every tool it offers, classify each by
//! risk and write a starting policy (or, with `--against`, report what an existing policy
//! leaves open).
//!
//! The I/O edge of [`crate::scan`]: the server is spawned with the gateway's
//! [`crate::gateway::upstream`] and spoken to through
//! [`crate::gateway::upstream_client::Session`]; the table goes to stderr so that stdout
//! carries only the policy (or the JSON, or the findings).

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::io::BufReader;

use super::counter_args::CounterArgs;
use crate::gateway::http::remote;
use crate::gateway::http::servers::UrlServer;
use crate::gateway::upstream::{ServerCommand, ServerProcess};
use crate::gateway::upstream_client::{Session, UpstreamError};
use crate::policy::{LoadError, Policy, StoreSpec};
use crate::sanitize::{self, terminal_text};
use crate::scan::{ScannedTool, against, compare, report, starting_policy};
use crate::wire::ToolInfo;

/// Read an MCP server's tools, classify their risk and write a starting policy.
///
/// Each tool is classed read, write or destructive from its MCP annotations, or guessed from
/// its name and description (marked `*` in the table). The policy on stdout (or --output) is
/// `default: deny` with one rule per tool: read → allow, write → allow under a per-grant rate
/// limit, destructive → require_approval, each with a reason. The summary table goes to
/// stderr.
///
/// Exit status: 0 done; 1 with --against when the policy has gaps; 2 on an error (the
/// server could not be started or did not answer in time, a file could not be written).
#[derive(Debug, clap::Args)]
#[command(after_help = SCAN_EXAMPLES)]
pub(super) struct Args {
    /// Write the policy (or the JSON) to FILE instead of stdout; an existing file is kept
    /// unless --force.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Overwrite --output if it exists.
    #[arg(long, requires = "output")]
    force: bool,
    /// Print the classification of every tool as JSON instead of a policy (with --against:
    /// the findings too).
    #[arg(long)]
    json: bool,
    /// Seconds the server gets to start, answer and list all its tools.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    timeout: f64,
    /// Compare with this existing policy instead of writing one: tools it leaves to the
    /// default, rules that match no offered tool, rules that let more through than a tool's
    /// class suggests. Exit status 1 when any is found.
    #[arg(long, value_name = "POLICY", conflicts_with_all = ["output", "force"])]
    against: Option<PathBuf>,
    /// Scan a Streamable HTTP server at this URL instead of starting a command.
    #[arg(long, value_name = "URL", conflicts_with = "command")]
    url: Option<String>,
    /// A header sent with every request to --url, e.g. "Authorization: Bearer …" (repeatable).
    #[arg(long, value_name = "K: V", requires = "url")]
    header: Vec<String>,
    /// With --against: the identity the server's tool pins belong to, as a gateway gives it
    /// (`wrap --server-id`, the `serve` name) [default: the server's own name].
    #[arg(long, value_name = "NAME", requires = "against")]
    server_id: Option<String>,
    /// With --against, where the gateways keep their pins (their `--counters`), to report
    /// tools whose definition differs from its pin.
    #[command(flatten)]
    counters: CounterArgs,
    /// The server's command and its arguments.
    #[arg(last = true, required_unless_present = "url", value_name = "CMD")]
    command: Vec<OsString>,
}

const SCAN_EXAMPLES: &str = "\
Examples:
  toolgate scan -- npx -y @modelcontextprotocol/server-everything > policy.json
  toolgate scan --output policy.json -- uvx mcp-server-time
  toolgate scan --json -- node server.js | jq '.[] | select(.class == \"destructive\")'
  toolgate scan --against policy.json -- npx -y @modelcontextprotocol/server-filesystem ~/notes
  toolgate scan --url http://127.0.0.1:3001/mcp --header \"Authorization: Bearer $TOKEN\"

The table on stderr marks guessed classes with *; review them before using the policy.
Descriptions are checked for what poisoned tools carry: FLAGS shows invisible-text (hidden
Unicode), to-model (text addressed to the AI, e.g. \"do not tell the user\", <IMPORTANT>),
names-secret (credential files such as ~/.ssh/id_rsa, .env); each finding is listed below the
table with an excerpt, and in --json as description_flags.";

/// Where the suggested policy is first named in messages.
const SUGGESTED_FILE: &str = "suggested policy";

pub(super) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let scan = runtime.block_on(scan_server(&args))?;
    report_scan(&args, &scan)
}

/// What the server said about itself and its tools.
struct Scan {
    server: String,
    protocol: String,
    tools: Vec<ScannedTool>,
    /// The `tools/list` entries as the server sent them (for the pins).
    entries: Vec<Value>,
    /// Entries of `tools/list` that are not tools (no name): shown, not classified.
    unreadable: usize,
}

async fn scan_server(args: &Args) -> anyhow::Result<Scan> {
    let budget = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--timeout must be a positive number of seconds")?;
    let (shown, listed) = match &args.url {
        Some(url) => {
            let headers = args
                .header
                .iter()
                .map(|h| parse_header(h))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if !url.starts_with("http://") {
                bail!(
                    "--url {url}: this build reaches servers over plain http:// only (it does not speak TLS to upstreams)"
                );
            }
            let server = UrlServer {
                url: url.clone(),
                headers,
            };
            // The session meets the gateway's HTTP upstream transport over in-memory pipes,
            // as it meets a stdio child over the child's.
            let (session_out, transport_in) = tokio::io::duplex(1 << 16);
            let (transport_out, session_in) = tokio::io::duplex(1 << 16);
            let transport = tokio::spawn(remote::run(
                server,
                remote::http_client(),
                crate::gateway::lines::DEFAULT_MAX_MESSAGE,
                BufReader::new(transport_in),
                transport_out,
            ));
            let listed = list(BufReader::new(session_in), session_out, budget).await;
            // The session closed its side: the transport DELETEs the server's session and
            // stops.
            let _ = tokio::time::timeout(Duration::from_secs(3), transport).await;
            (url.clone(), listed)
        }
        None => {
            let (program, rest) = args
                .command
                .split_first()
                .context("no server command after `--`")?;
            let command = ServerCommand {
                program: program.clone(),
                args: rest.to_vec(),
                env: Vec::new(),
            };
            let (process, stdin, stdout) = ServerProcess::spawn(&command)?;
            let listed = list(BufReader::new(stdout), stdin, budget).await;
            // The server's input is closed (or the session dropped): a short grace, then
            // signals.
            process.stop(Duration::from_millis(500)).await;
            (command.display(), listed)
        }
    };
    let (server, protocol, raw) = listed.with_context(|| format!("scanning `{shown}`"))?;
    let mut unreadable = 0;
    let tools = raw
        .iter()
        .cloned()
        .filter_map(|t| match serde_json::from_value::<ToolInfo>(t) {
            Ok(info) => Some(ScannedTool::new(info)),
            Err(_) => {
                unreadable += 1;
                None
            }
        })
        .collect();
    Ok(Scan {
        server: server.unwrap_or(shown),
        protocol,
        tools,
        entries: raw,
        unreadable,
    })
}

/// The server's name, the protocol version and every tool, over one session.
async fn list<R, W>(
    reader: R,
    writer: W,
    budget: Duration,
) -> Result<(Option<String>, String, Vec<Value>), UpstreamError>
where
    R: tokio::io::AsyncBufRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut session = Session::connect(reader, writer, "toolgate-scan", budget).await?;
    let tools = session.list_tools().await?;
    let server = session
        .server_info()
        .and_then(|i| i.get("name"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let protocol = session.protocol_version().to_string();
    session.close().await;
    Ok((server, protocol, tools))
}

fn report_scan(args: &Args, scan: &Scan) -> anyhow::Result<ExitCode> {
    eprintln!(
        "{}: {} tools (protocol {})",
        terminal_text(&scan.server),
        scan.tools.len(),
        terminal_text(&scan.protocol)
    );
    if scan.unreadable > 0 {
        eprintln!(
            "warning: {} entries of the tool list have no name and were left out",
            scan.unreadable
        );
    }
    eprint!("{}", report::table(&scan.tools));
    eprint!("{}", report::description_flags(&scan.tools));

    if let Some(path) = &args.against {
        return report_against(args, path, scan);
    }
    let text = if args.json {
        sanitize::json_pretty(&report::tools_json(&scan.tools))?
    } else {
        let (policy, skipped) = starting_policy(&scan.tools);
        for s in &skipped {
            eprintln!(
                "warning: {}",
                terminal_text(&format!("{}: {}", s.name, s.why))
            );
        }
        // Tool names come from the server: escaped in the JSON, so the file means the same
        // and shows nothing a terminal would interpret when printed.
        let text = sanitize::json_pretty(&policy)?;
        // The suggestion is only useful if it loads; a failure here is a bug in scan.
        Policy::parse(&text, SUGGESTED_FILE).map_err(|d| {
            anyhow::anyhow!("the suggested policy does not validate (a toolgate bug):\n{d}")
        })?;
        text
    };
    match &args.output {
        Some(path) => {
            super::write_output(
                path,
                &format!("{text}\n"),
                args.force,
                &format!(", or --against {} to compare with it", path.display()),
            )?;
            eprintln!("wrote {}", terminal_text(&path.display().to_string()));
        }
        None => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{text}").context("cannot write to stdout")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn report_against(args: &Args, path: &Path, scan: &Scan) -> anyhow::Result<ExitCode> {
    let policy = Policy::load(path).map_err(|e| match e {
        LoadError::Invalid(d) => anyhow::anyhow!("{d}\n{} is not a valid policy", path.display()),
        other => anyhow::Error::new(other),
    })?;
    let mut findings = compare(&policy, &scan.tools);
    findings.extend(pin_findings(args, scan)?);
    let mut out = std::io::stdout().lock();
    if args.json {
        let doc = serde_json::json!({
            "policy": path.display().to_string(),
            "tools": report::tools_json(&scan.tools),
            "findings": findings,
        });
        writeln!(out, "{}", sanitize::json_pretty(&doc)?)?;
    } else if findings.is_empty() {
        writeln!(
            out,
            "{}: no gaps: every offered tool has a rule no looser than its class suggests, and every rule matches a tool",
            terminal_text(&path.display().to_string())
        )?;
    } else {
        for f in &findings {
            writeln!(
                out,
                "{}",
                terminal_text(&format!("{}: {f}", path.display()))
            )?;
        }
        writeln!(
            out,
            "{} finding{}",
            findings.len(),
            if findings.len() == 1 { "" } else { "s" }
        )?;
    }
    Ok(if findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The offered tools whose definition differs from its pin in the gateways' pin store
/// (none with `--counters memory`: each gateway keeps its own).
fn pin_findings(args: &Args, scan: &Scan) -> anyhow::Result<Vec<against::Finding>> {
    match args.counters.spec()? {
        StoreSpec::Memory => {
            eprintln!("note: with --counters memory there is no pin store to compare with");
            return Ok(Vec::new());
        }
        // No file, no pins: nothing is created for a comparison.
        StoreSpec::Sqlite(path) if !path.exists() => return Ok(Vec::new()),
        _ => {}
    }
    let server = args.server_id.as_deref().unwrap_or(&scan.server);
    let (store, _) = args
        .counters
        .open_pins()
        .context("cannot open the pin store (where --counters are)")?;
    let pins = store.list(Some(server)).map_err(|e| anyhow::anyhow!(e.0))?;
    Ok(against::changed_pins(server, &pins, &scan.entries))
}

/// Parses a `--header "Name: value"`. The transport's own headers (session, protocol
/// version) and framing headers cannot be set.
fn parse_header(text: &str) -> anyhow::Result<(String, String)> {
    let bad = || anyhow::anyhow!("--header {text:?}: expected \"Name: value\"");
    let (name, value) = text.split_once(':').ok_or_else(bad)?;
    let (name, value) = (name.trim(), value.trim());
    if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
        || reqwest::header::HeaderValue::from_str(value).is_err()
    {
        return Err(bad());
    }
    let reserved = [
        "host",
        "content-length",
        "mcp-session-id",
        "mcp-protocol-version",
    ];
    if reserved.contains(&name.to_ascii_lowercase().as_str()) {
        bail!("--header {name}: set by the transport itself, not on the command line");
    }
    Ok((name.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_read_as_name_colon_value() {
        assert_eq!(
            parse_header("Authorization: Bearer abc").expect("valid"),
            ("Authorization".into(), "Bearer abc".into())
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header(": value").is_err());
        assert!(parse_header("Bad Name: v").is_err());
        assert!(parse_header("Mcp-Session-Id: x").is_err());
    }
}
