//! Revocation through the grants file of `toolgate serve`.
//!
//! A grants file is a list of credentials, so its absence fails closed: deleting it (or
//! leaving its symlink dangling) revokes every token. A file that is there but empty (an
//! editor in the middle of a save), invalid or unreadable keeps the last good grants. Each
//! case is logged and published as a `grants` event.
//!
//! First on a [`GrantsReloader`] driven by hand (no watcher, nothing timed), then through the
//! real binary: `toolgate serve` in front of an in-process upstream, raw HTTP requests with
//! the tokens, and `toolgate tail --json` reading the events.

#[path = "serve_support/running.rs"]
mod running;
#[path = "serve_support/trivial.rs"]
mod trivial;

mod console_support;
mod support;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use running::{Serve, Setup, Tail};
use serde_json::{Value, json};
use support::toolgate;
use tokio::sync::broadcast::error::TryRecvError;
use toolgate::console::testing::{State, update};
use toolgate::testing::control::Hub;
use toolgate::testing::gateway::{Grants, GrantsReloader};
use toolgate::testing::wire::{Event, EventKind, GatewayInfo, GrantsChange, GrantsChanged};

/// How long a grants edit other than a deletion may take to apply (debounce plus slack for
/// a loaded CI machine; only a broken watch ever waits this long).
const RELOAD_WITHIN: Duration = Duration::from_secs(20);

/// How soon a deletion must revoke: the promise the README makes.
const REVOKED_WITHIN: Duration = Duration::from_secs(1);

fn hub() -> Arc<Hub> {
    Hub::new(GatewayInfo {
        id: "gw".into(),
        pid: 1,
        version: "test".into(),
        grant: "*".into(),
        server: "s".into(),
        policy: "p".into(),
        started_at: chrono::Utc::now(),
    })
}

fn next(events: &mut tokio::sync::broadcast::Receiver<Arc<Event>>) -> Option<GrantsChanged> {
    match events.try_recv() {
        Ok(ev) => match &ev.kind {
            EventKind::Grants(g) => Some(g.clone()),
            other => panic!("not a grants event: {other:?}"),
        },
        Err(TryRecvError::Empty) => None,
        Err(e) => panic!("{e}"),
    }
}

/// Puts a broken grants file at a path.
type MakeBroken<'a> = &'a dyn Fn(&Path);

/// Puts a FIFO where `path` is (renamed over it, so the name never goes missing).
fn fifo_over(path: &Path) {
    let fifo = path.with_extension("fifo");
    nix::unistd::mkfifo(
        &fifo,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .expect("mkfifo");
    std::fs::rename(&fifo, path).unwrap();
}

#[test]
fn deletion_revokes_every_token_and_an_empty_invalid_or_unreadable_file_keeps_the_last_good_set() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grants.json");
    let mut grants = Grants::empty();
    let ci = grants.add("ci").unwrap();
    let ops = grants.add("ops").unwrap();
    grants.save(&path).unwrap();
    let good = std::fs::read(&path).unwrap();
    let handle = Arc::new(arc_swap::ArcSwap::from_pointee(grants.clone()));
    let hub = hub();
    let mut events = hub.subscribe();
    let mut reloader = GrantsReloader::new(path.clone(), handle.clone(), hub.clone());
    let works = |token: &str| handle.load().authenticate(token).is_some();

    // The file as loaded at start: nothing to say.
    reloader.check();
    assert_eq!(next(&mut events), None);

    // Each kind of broken file is refused once, and both tokens keep working.
    let broken: [(&str, MakeBroken, &str); 4] = [
        ("0 bytes", &|p| std::fs::write(p, "").unwrap(), "empty"),
        (
            "whitespace",
            &|p| std::fs::write(p, " \n").unwrap(),
            "empty",
        ),
        (
            "half a file",
            &|p| std::fs::write(p, &good[..20]).unwrap(),
            "not valid",
        ),
        ("a FIFO", &fifo_over, "not a regular file"),
    ];
    for (what, make, says) in broken {
        make(&path);
        reloader.check();
        let refused = next(&mut events).unwrap_or_else(|| panic!("{what}: no event"));
        assert_eq!(refused.change, GrantsChange::Refused, "{what}");
        assert_eq!(refused.grants, 2, "{what}");
        assert!(refused.detail.contains(says), "{what}: {}", refused.detail);
        assert!(
            refused.detail.contains("keeping the 2 grant(s)"),
            "{}",
            refused.detail
        );
        assert!(works(&ci) && works(&ops), "{what} revoked a token");
        reloader.check();
        assert_eq!(next(&mut events), None, "{what} reported twice");
    }

    // A valid file without `ops`: applied, and only `ops` stops working.
    std::fs::remove_file(&path).unwrap();
    grants.revoke("ops");
    grants.save(&path).unwrap();
    reloader.check();
    let applied = next(&mut events).expect("an applied event");
    assert_eq!(applied.change, GrantsChange::Applied);
    assert_eq!(applied.grants, 1);
    assert!(
        applied.detail.contains("revoked: ops"),
        "{}",
        applied.detail
    );
    assert!(works(&ci) && !works(&ops));

    // Deleted: every token is revoked, once.
    std::fs::remove_file(&path).unwrap();
    reloader.check();
    let deleted = next(&mut events).expect("a deleted event");
    assert_eq!(deleted.change, GrantsChange::Deleted);
    assert_eq!(deleted.grants, 0);
    assert!(
        deleted.detail.contains("every token is revoked"),
        "{}",
        deleted.detail
    );
    assert!(!works(&ci));
    reloader.check();
    assert_eq!(next(&mut events), None);

    // A broken file after the deletion brings nothing back.
    std::fs::write(&path, "").unwrap();
    reloader.check();
    let refused = next(&mut events).expect("a refused event");
    assert_eq!((refused.change, refused.grants), (GrantsChange::Refused, 0));
    assert!(!works(&ci));

    // The good file back: its tokens work again.
    std::fs::write(&path, &good).unwrap();
    reloader.check();
    let back = next(&mut events).expect("an applied event");
    assert_eq!((back.change, back.grants), (GrantsChange::Applied, 2));
    assert!(works(&ci) && works(&ops));

    // The same grants after a refusal are announced again (clients clear the refusal).
    std::fs::write(&path, "{").unwrap();
    reloader.check();
    assert_eq!(
        next(&mut events).map(|e| e.change),
        Some(GrantsChange::Refused)
    );
    std::fs::write(&path, &good).unwrap();
    reloader.check();
    assert_eq!(
        next(&mut events).map(|e| e.change),
        Some(GrantsChange::Applied)
    );
}

#[test]
fn a_symlinked_grants_file_whose_target_is_deleted_revokes_every_token() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("dotfiles")).unwrap();
    let target = dir.path().join("dotfiles/grants.json");
    let link = dir.path().join("grants.json");
    let mut grants = Grants::empty();
    let ci = grants.add("ci").unwrap();
    grants.save(&target).unwrap();
    symlink(&target, &link).unwrap();
    let handle = Arc::new(arc_swap::ArcSwap::from_pointee(
        Grants::load(&link).unwrap(),
    ));
    let hub = hub();
    let mut events = hub.subscribe();
    let mut reloader = GrantsReloader::new(link.clone(), handle.clone(), hub.clone());
    reloader.check();
    assert_eq!(next(&mut events), None);
    std::fs::remove_file(&target).unwrap();
    reloader.check();
    let deleted = next(&mut events).expect("a deleted event");
    assert_eq!(deleted.change, GrantsChange::Deleted);
    assert!(
        deleted.detail.contains("the symlink leads to"),
        "{}",
        deleted.detail
    );
    assert!(handle.load().authenticate(&ci).is_none());
}

/// `toolgate serve` in front of the trivial upstream (as server `t`), with grants made by the
/// real CLI, and `toolgate tail --json` following its events (its hello already seen).
fn start(grants: &[&str]) -> (Serve, Tail, Vec<String>) {
    let (upstream, _) = trivial::start(false);
    let serve = Serve::start(Setup {
        policy: r#"{"version":"1","default":"allow"}"#,
        servers: json!({"t": {"url": format!("http://{upstream}/mcp")}}),
        grants,
        ..Setup::default()
    });
    let tail = serve.tail();
    tail.wait_event("the tail's hello", RELOAD_WITHIN, |e| e["type"] == "hello");
    let tokens = serve.tokens.clone();
    (serve, tail, tokens)
}

// What these tests do with the shared harness's gateway and tail.
impl Serve {
    fn grants(&self) -> std::path::PathBuf {
        self.dir.path().join("grants.json")
    }

    /// The status of a POST of `notifications/initialized` to server `t` with `token`: 202
    /// when the token is accepted, 401 when it is not.
    fn status(&self, token: &str) -> u16 {
        let body = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        self.post("t", token, None, &body).status
    }
}

impl Tail {
    /// Waits for a `grants` event with `change`.
    fn wait_grants(&self, change: &str) -> Value {
        self.wait_event(&format!("grants {change}"), RELOAD_WITHIN, |e| {
            e["type"] == "grants" && e["change"] == change
        })
    }
}

fn cli(dir: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(toolgate())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run toolgate");
    assert!(
        out.status.success(),
        "toolgate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn deleting_the_grants_file_revokes_every_token_within_a_second() {
    let (serve, tail, tokens) = start(&["ci", "ops"]);
    for token in &tokens {
        assert_eq!(serve.status(token), 202, "log:\n{}", serve.log());
    }
    let saved = std::fs::read(serve.grants()).unwrap();

    std::fs::remove_file(serve.grants()).unwrap();
    let deleted_at = Instant::now();
    while serve.status(&tokens[0]) != 401 {
        assert!(
            deleted_at.elapsed() < REVOKED_WITHIN,
            "the token still works {REVOKED_WITHIN:?} after the grants file was deleted; log:\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(serve.status(&tokens[1]), 401, "every token is revoked");
    let event = tail.wait_grants("deleted");
    assert_eq!(event["grants"], 0);
    assert!(
        serve.log().contains("every token is revoked"),
        "log:\n{}",
        serve.log()
    );

    // The file back: its tokens work again.
    std::fs::write(serve.grants(), &saved).unwrap();
    let event = tail.wait_grants("applied");
    assert_eq!(event["grants"], 2);
    for token in &tokens {
        assert_eq!(serve.status(token), 202, "log:\n{}", serve.log());
    }
}

/// The status of a POST of `notifications/initialized` to server `t` with `token`, sent on
/// `stream`, a connection kept alive between requests (the reply read by its length).
fn status_on(stream: &mut std::net::TcpStream, serve: &Serve, token: &str) -> u16 {
    use std::io::{Read, Write};
    let body = json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string();
    let request = format!(
        "POST /mcp/t HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         Content-Length: {}\r\n\r\n{body}",
        serve.addr,
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\r\n\r\n") {
        let n = stream
            .read(&mut byte)
            .expect("a reply on the kept connection");
        assert_eq!(n, 1, "the connection closed before the reply's head ended");
        reply.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&reply).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |n| n.trim().parse().unwrap());
    let mut rest = vec![0u8; length];
    stream.read_exact(&mut rest).unwrap();
    head.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_token_revoked_while_its_connection_stays_open_stops_working_on_that_connection() {
    // The gateway remembers, per connection, the last token that named a grant: the
    // revocation must reach a connection that keeps being used.
    let (serve, tail, tokens) = start(&["ci"]);
    let mut stream = std::net::TcpStream::connect(serve.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(status_on(&mut stream, &serve, &tokens[0]), 202);
    assert_eq!(status_on(&mut stream, &serve, &tokens[0]), 202);

    std::fs::remove_file(serve.grants()).unwrap();
    tail.wait_grants("deleted");
    assert_eq!(
        status_on(&mut stream, &serve, &tokens[0]),
        401,
        "the revoked token still works on the connection that used it; log:\n{}",
        serve.log()
    );
}

#[test]
fn an_empty_invalid_or_unreadable_grants_file_does_not_revoke() {
    let (serve, tail, tokens) = start(&["ci"]);
    let token = &tokens[0];
    assert_eq!(serve.status(token), 202, "log:\n{}", serve.log());

    // 0 bytes, as an editor that truncates before writing leaves it for a moment.
    std::fs::OpenOptions::new()
        .write(true)
        .open(serve.grants())
        .unwrap()
        .set_len(0)
        .unwrap();
    let event = tail.wait_grants("refused");
    assert!(
        event["detail"].as_str().unwrap().contains("empty"),
        "{event}"
    );
    assert_eq!(event["grants"], 1);
    assert_eq!(serve.status(token), 202, "a 0-byte file revoked the token");

    std::fs::write(serve.grants(), r#"{"version":"1","grants":{"#).unwrap();
    let event = tail.wait_grants("refused");
    assert!(
        event["detail"].as_str().unwrap().contains("not valid"),
        "{event}"
    );
    assert_eq!(
        serve.status(token),
        202,
        "an invalid file revoked the token"
    );

    // Unreadable: something that is not a file in its place (root reads any mode, so a
    // FIFO stands in for a file without permission; it would also block a naive reader).
    fifo_over(&serve.grants());
    let event = tail.wait_grants("refused");
    assert!(
        event["detail"]
            .as_str()
            .unwrap()
            .contains("not a regular file"),
        "{event}"
    );
    assert_eq!(
        serve.status(token),
        202,
        "an unreadable file revoked the token"
    );

    // Deleted after all that (the watch outlived the FIFO), then a new file from the CLI:
    // only the new file's grant counts.
    std::fs::remove_file(serve.grants()).unwrap();
    tail.wait_grants("deleted");
    let out = cli(
        serve.dir.path(),
        &["grants", "add", "ops", "--file", "grants.json"],
    );
    let ops = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let event = tail.wait_grants("applied");
    assert_eq!(event["grants"], 1, "{event}");
    assert_eq!(serve.status(token), 401, "ci was in the deleted file only");
    assert_eq!(serve.status(&ops), 202, "log:\n{}", serve.log());
}

#[test]
fn the_console_shows_a_grants_change_on_its_status_line_errors_as_errors() {
    use console_support::{at_ms, net, render, t0, text, up};
    let mut s = State::new(t0(), 100);
    let now = at_ms(10_000);
    update(&mut s, up("gw"), now);
    let event = |change, detail: &str| {
        EventKind::Grants(GrantsChanged {
            path: "/srv/grants.json".into(),
            change,
            grants: 0,
            detail: detail.into(),
        })
    };
    let deleted = "grants file /srv/grants.json was deleted: every token is revoked\u{1b}[2J";
    update(
        &mut s,
        net("gw", 1, at_ms(1_000), event(GrantsChange::Deleted, deleted)),
        now,
    );
    let message = s.message.clone().expect("a status message");
    assert!(
        message.error,
        "a revocation by deletion is shown as an error"
    );
    assert!(
        message.text.contains("every token is revoked"),
        "{}",
        message.text
    );
    assert!(
        !message.text.contains('\u{1b}'),
        "outside text is sanitised"
    );
    let screen = text(&render(&s, 160, 30)).join("\n");
    assert!(screen.contains("every token is revoked"), "{screen}");

    update(
        &mut s,
        net(
            "gw",
            2,
            at_ms(2_000),
            event(GrantsChange::Applied, "2 grant(s) in force"),
        ),
        now,
    );
    let message = s.message.clone().expect("a status message");
    assert!(
        !message.error && message.text.contains("2 grant(s) in force"),
        "{}",
        message.text
    );
}
