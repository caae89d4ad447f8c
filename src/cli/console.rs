//! `toolgate console`: the terminal UI over every gateway on this machine (or one, with
//! `--connect`).
//!
//! Sets up what the library does not own: the log file (the terminal belongs to the UI), the
//! theme, the runtime; then hands over to `console::run_in_terminal`.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;

use crate::console::model::learn::LearnReview;
use crate::console::{Options, Theme, net, run_in_terminal, theme};
use crate::learn::Draft as Learned;

/// Watch calls live and approve held ones.
///
/// Follows every gateway running on this machine (new ones appear by themselves), and beside
/// them the remote gateways of --connect and @NAME (named remotes of remotes.toml). Logs go
/// to <state dir>/toolgate/console.log, or --log FILE.
///
/// Reviewing a learned policy: toolgate console --review-learned draft.json --policy
/// policy.json walks the proposals of `toolgate learn --proposals draft.json` one by one.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  toolgate console --theme light --cases policy-cases.json\n  toolgate console @prod\n  toolgate console --connect https://gw1.example:8787 --token-file ~/.toolgate-token"
)]
pub(super) struct Args {
    /// Named remotes to follow (@prod: a table of remotes.toml).
    #[arg(value_name = "@NAME")]
    named: Vec<String>,
    #[command(flatten)]
    remote: super::remote_args::RemoteArgs,
    /// Colour theme: dark, light, high-contrast, or a file in the config directory's
    /// toolgate/themes/.
    #[arg(long, value_name = "NAME", env = "TOOLGATE_THEME", default_value = theme::DEFAULT_THEME)]
    theme: String,
    /// The policy file (for the Policy view; default: the one the gateways report).
    #[arg(long, value_name = "P")]
    policy: Option<PathBuf>,
    /// A `toolgate test` case file: T on a call in the Live view appends it, with the
    /// decision it got, as a case (the file is created if missing; see docs/policy-tests.md).
    #[arg(long, value_name = "FILE")]
    cases: Option<PathBuf>,
    /// Open on the review of a learned policy: the proposals `toolgate learn --proposals
    /// FILE` wrote, one by one (accept, reject, edit, widen, skip), what the result would
    /// refuse of the recorded calls, then the diff and y to write --policy.
    #[arg(long, value_name = "DRAFT.json", requires = "policy")]
    review_learned: Option<PathBuf>,
    /// With --review-learned: write the result as a shadow candidate beside the policy
    /// (policy.json → policy.shadow.json) for `wrap`/`serve --shadow-policy`, to promote later.
    #[arg(long, requires = "review_learned")]
    shadow: bool,
    /// How many calls to remember.
    #[arg(long, value_name = "N", default_value_t = crate::console::model::history::DEFAULT_CAPACITY)]
    history: usize,
    /// Write the log here instead of the state directory.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
}

pub(super) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let log_path = args.log.clone().unwrap_or_else(default_log_path);
    init_logging(&log_path)?;
    let mut theme = Theme::load(&args.theme).context("--theme")?;
    if theme::no_color_requested() {
        theme = theme.without_colour();
    }
    let named = super::remote_args::named_remotes(&args.named)?;
    let remotes = args.remote.targets(&named)?;
    // Local gateways are always followed too: an operator's own machine is never hidden
    // because remote ones were asked for.
    let targets = if remotes.is_empty() {
        net::Targets::Discover
    } else {
        net::Targets::Several {
            remotes,
            discover: true,
        }
    };
    let learn = match (&args.review_learned, &args.policy) {
        (Some(draft), Some(policy)) => Some(learn_review(draft, policy, args.shadow)?),
        _ => None,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let options = Options {
        learn,
        targets,
        theme,
        history: args.history,
        policy_path: args.policy.as_ref().map(|p| p.display().to_string()),
        cases_path: args.cases.as_ref().map(|p| p.display().to_string()),
    };
    let result = runtime.block_on(run_in_terminal(options));
    // Network tasks may be mid-connect; do not wait for them.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result?;
    Ok(ExitCode::SUCCESS)
}

/// `toolgate learn --review POLICY`: the console opened on the review of `learned`, as
/// `console --review-learned` opens it on a draft file (handed over through a private
/// temporary file, so both read the draft the same way).
pub(super) fn review_learned(learned: &Learned, policy: &Path) -> anyhow::Result<ExitCode> {
    #[derive(clap::Parser)]
    struct Console {
        #[command(flatten)]
        args: Args,
    }
    // A directory of our own (0700): the draft holds recorded argument values.
    let dir = tempfile::Builder::new()
        .prefix("toolgate-learn-")
        .tempdir()
        .context("cannot make a temporary directory for the draft")?;
    let path = dir.path().join("learned.json");
    std::fs::write(&path, serde_json::to_vec(learned)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let args = [
        "toolgate console".as_ref(),
        "--review-learned".as_ref(),
        path.as_os_str(),
        "--policy".as_ref(),
        policy.as_os_str(),
    ];
    let console = <Console as clap::Parser>::try_parse_from(args)?;
    run(console.args)
}

/// The largest draft file read: observations carry arguments, up to 100,000 calls a server.
const MAX_DRAFT_BYTES: u64 = 512 * 1024 * 1024;

/// Reads the learned draft (outside input: refused with a clear error, never trusted) and
/// makes the review, whose target is `policy`, or with `shadow` the candidate beside it.
fn learn_review(draft: &Path, policy: &Path, shadow: bool) -> anyhow::Result<(LearnReview, bool)> {
    let shown = draft.display().to_string();
    let size = std::fs::metadata(draft)
        .with_context(|| format!("--review-learned {shown}"))?
        .len();
    if size > MAX_DRAFT_BYTES {
        anyhow::bail!(
            "--review-learned {shown}: {size} bytes is more than a draft can be ({MAX_DRAFT_BYTES}); make one with a shorter --since"
        );
    }
    let bytes = std::fs::read(draft).with_context(|| format!("--review-learned {shown}"))?;
    let learned: Learned = serde_json::from_slice(&bytes).with_context(|| {
        format!("--review-learned {shown}: not a draft written by `toolgate learn --proposals`")
    })?;
    let target = if shadow {
        shadow_path(policy)
    } else {
        policy.to_path_buf()
    };
    let exists = target.exists();
    let target = target.display().to_string();
    Ok((LearnReview::new(&shown, learned, &target, shadow), exists))
}

/// `policy.json` → `policy.shadow.json`, in the same directory.
fn shadow_path(policy: &Path) -> PathBuf {
    let stem = policy
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "policy".into());
    let name = match policy.extension() {
        Some(ext) => format!("{stem}.shadow.{}", ext.to_string_lossy()),
        None => format!("{stem}.shadow"),
    };
    policy.with_file_name(name)
}

pub(super) fn default_log_path() -> PathBuf {
    use etcetera::BaseStrategy;
    etcetera::choose_base_strategy()
        .ok()
        .and_then(|s| s.state_dir())
        .unwrap_or_else(std::env::temp_dir)
        .join("toolgate")
        .join("console.log")
}

pub(super) fn init_logging(path: &PathBuf) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the log directory {}", dir.display()))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the log file {}", path.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOOLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Another subscriber (tests, an embedding demo) may already be set: keep it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .try_init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shadow_candidate_sits_beside_the_policy() {
        assert_eq!(
            shadow_path(Path::new("/etc/tg/policy.json")),
            Path::new("/etc/tg/policy.shadow.json")
        );
        assert_eq!(shadow_path(Path::new("rules")), Path::new("rules.shadow"));
    }
}
