//! `toolgate demo`: the whole product in one process.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use std::io::Write;

use crate::console::{Options, Theme, net, run_in_terminal, theme};
use crate::control::{ControlHandle, EventsOptions};
use crate::demo::{self, DemoOptions};

/// Run the embedded demo: a gateway, a demo MCP server and simulated agents in one process.
///
/// Three agents (ci-bot, ops-bot, support-bot) call an agent meeting service through the real
/// gateway core under a demo policy that produces every decision: allowed, denied with a
/// reason, argument validation, rate limited, held for approval, hidden. The demo policy is
/// written to a temporary directory and watched: edit it and the agents get the new rules.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  toolgate demo\n  toolgate demo --rate 5\n  toolgate demo --headless --calls 20"
)]
pub(super) struct Args {
    /// Calls per second for each simulated agent.
    #[arg(long, default_value_t = 1.5, value_parser = parse_rate)]
    rate: f64,
    /// Use this policy file instead of the demo policy (it is watched and may be edited).
    #[arg(long, value_name = "P")]
    policy: Option<PathBuf>,
    /// No console: print each decision as a line on stdout.
    #[arg(long)]
    headless: bool,
    /// Stop after each agent has had this many calls answered.
    #[arg(long, value_name = "N")]
    calls: Option<u64>,
    /// Seed for the agents' choices (the same seed gives the same calls).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Colour theme of the console: dark, light, high-contrast, or a user theme's name.
    #[arg(long, value_name = "NAME", env = "TOOLGATE_THEME", default_value = theme::DEFAULT_THEME)]
    theme: String,
    /// A `toolgate test` case file: T in the console appends the selected call to it as a
    /// case (the file is created if missing).
    #[arg(long, value_name = "FILE")]
    cases: Option<PathBuf>,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if r.is_finite() && (0.01..=1000.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "expected calls per second between 0.01 and 1000, got {text:?}"
        )),
    }
}

pub(super) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: Args) -> anyhow::Result<ExitCode> {
    let demo = demo::start(DemoOptions {
        policy: args.policy,
        rate: args.rate,
        calls: args.calls,
        seed: args.seed,
    })?;
    // The event websocket and discovery file, as every gateway has: `toolgate tail` and a
    // second console in another terminal see the demo's calls.
    let control = crate::control::start(demo.hub.clone(), EventsOptions::default()).await?;
    let code = if args.headless {
        headless(demo, &control).await
    } else {
        attached(demo, &control, &args.theme, args.cases.as_deref()).await
    };
    control.shutdown().await;
    code
}

/// The console, attached to the demo's gateway over its real event websocket.
async fn attached(
    demo: demo::Demo,
    control: &ControlHandle,
    theme_name: &str,
    cases: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    super::console::init_logging(&super::console::default_log_path())?;
    let mut theme = Theme::load(theme_name).context("--theme")?;
    if theme::no_color_requested() {
        theme = theme.without_colour();
    }
    let options = Options {
        targets: net::Targets::Fixed {
            url: control.url().to_owned(),
            token: control.token().to_owned(),
        },
        theme,
        history: crate::console::model::history::DEFAULT_CAPACITY,
        policy_path: Some(demo.policy_path.display().to_string()),
        cases_path: cases.map(|p| p.display().to_string()),
        learn: None,
    };
    run_in_terminal(options).await?;
    drop(demo);
    Ok(ExitCode::SUCCESS)
}

/// Prints one line per decision until the agents are done or Ctrl-C.
async fn headless(mut demo: demo::Demo, control: &ControlHandle) -> anyhow::Result<ExitCode> {
    let mut events = demo.hub.subscribe();
    let mut out = std::io::stdout();
    // A closed stdout (`toolgate demo --headless | head`) ends the demo quietly.
    let mut say = move |line: &str| writeln!(out, "{line}").and_then(|()| out.flush()).is_ok();
    say(&format!(
        "toolgate demo: policy {}, events {}",
        demo.policy_path.display(),
        control.url()
    ));
    let agents = futures_util::future::join_all(std::mem::take(&mut demo.agents));
    tokio::pin!(agents);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) => {
                    if let Some(line) = crate::cli::tail::human_line(&event)
                        && !say(&line)
                    {
                        break;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    if !say(&format!("({n} events not shown)")) {
                        break;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            _ = &mut agents => break,
            _ = stop_signal() => break,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C or SIGTERM: either ends the demo through its normal exit path, which removes the
/// temporary policy directory and the discovery file.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
