//! Nothing a peer sends makes the gateway panic: arbitrary bytes and arbitrary JSON-RPC-shaped
//! lines from both sides, then both sides close, and the connection ends normally.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

use toolgate::testing::control::Hub;
use toolgate::testing::gateway::{End, Gateway, RunOptions, run};
use toolgate::testing::policy::{MemoryStore, Policy};
use toolgate::testing::wire::GatewayInfo;

const POLICY: &str = r#"{"version":"1","default":"deny","hide":["h*"],
  "tools":{"echo":{"rate_limit":{"max":2,"window":"minute"}},"hold":{"action":"require_approval"}}}"#;

fn line() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![
        Just("tools/call"),
        Just("tools/list"),
        Just("notifications/cancelled"),
        Just("initialize"),
        Just("x"),
    ];
    let id = prop_oneof![
        Just("1".to_owned()),
        Just("\"a\"".to_owned()),
        Just("null".to_owned()),
        Just("{}".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
    ];
    let name = prop_oneof![Just("echo"), Just("hold"), Just("hidden"), Just("other")];
    let shaped = (method, id, name, any::<bool>()).prop_map(|(m, id, name, with_id)| {
        let id = if with_id { format!(r#""id":{id},"#) } else { String::new() };
        format!(
            r#"{{"jsonrpc":"2.0",{id}"method":"{m}","params":{{"name":"{name}","arguments":{{"a":[1,{{"b":null}}]}},"requestId":1,"cursor":"c","_meta":{{"progressToken":1}}}}}}"#
        )
        .into_bytes()
    });
    let response = prop_oneof![
        Just(
            br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"hidden"},{"name":5},{}]}}"#
                .to_vec()
        ),
        Just(
            br#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"input_required","content":"x"}}"#
                .to_vec()
        ),
        Just(br#"{"jsonrpc":"2.0","id":"a","error":{"code":1}}"#.to_vec()),
        Just(br#"[{"id":1,"result":null},1,"x",[]]"#.to_vec()),
        Just(
            br#"[[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}]]"#
                .to_vec()
        ),
        Just(br#"{"jsonrpc":"2.0","id":6.0,"method":"tools/list","method":"tools/call"}"#.to_vec()),
        Just(
            br#"{"jsonrpc":"2.0","id":"\u0061","result":{"tools":[{"name":"h\ud800"}]}}"#.to_vec()
        ),
        Just(
            br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"hidden"}],"tools":[]}}"#
                .to_vec()
        ),
    ];
    let bytes = proptest::collection::vec(any::<u8>(), 0..80).prop_map(|mut b| {
        b.retain(|c| *c != b'\n');
        b
    });
    prop_oneof![shaped, response, bytes]
}

/// Panics anywhere in the process, including in tasks the gateway spawns (whose panics would
/// not reach the connection's own task).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_lines_from_either_side_end_the_connection_cleanly(
        from_client in proptest::collection::vec(line(), 0..12),
        from_server in proptest::collection::vec(line(), 0..12),
    ) {
        count_panics();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // A connection that does not end is a failure, not a hang.
        let within = std::time::Duration::from_secs(60);
        let end = runtime.block_on(async move { tokio::time::timeout(within, async move {
            let hub = Hub::new(GatewayInfo {
                id: "gw".into(), pid: 1, version: "t".into(), grant: "g".into(),
                server: "s".into(), policy: "p".into(), started_at: chrono::Utc::now(),
            });
            let policy = Policy::parse(POLICY, "policy.json").unwrap();
            let gateway = Arc::new(Gateway::new(
                Arc::new(arc_swap::ArcSwap::from_pointee(policy)),
                Arc::new(MemoryStore::new()),
                hub,
                "g",
                "s",
            ));
            let (mut client, client_end) = tokio::io::duplex(1 << 20);
            let (mut server, server_end) = tokio::io::duplex(1 << 20);
            let (cr, cw) = tokio::io::split(client_end);
            let (sr, sw) = tokio::io::split(server_end);
            let task = tokio::spawn(run(gateway, BufReader::new(cr), cw, BufReader::new(sr), sw,
                RunOptions::new("s")));
            for l in &from_client {
                client.write_all(l).await.unwrap();
                client.write_all(b"\n").await.unwrap();
            }
            for l in &from_server {
                server.write_all(l).await.unwrap();
                server.write_all(b"\n").await.unwrap();
            }
            // The client leaves; the server sees its input end and leaves too.
            client.shutdown().await.unwrap();
            let mut sink = Vec::new();
            server.read_to_end(&mut sink).await.unwrap();
            drop(server);
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            task.await
        }).await }).expect("the connection to end within 60 s of both sides' lines");
        prop_assert!(end.is_ok(), "the connection task panicked");
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a gateway task panicked");
        prop_assert_eq!(end.unwrap(), End::ClientClosed);
    }
}
