//! Fuzz target: parse + validate arbitrary policy text, and decide a few calls with any
//! policy that validates. Checks that nothing panics and that every diagnostic has a sane
//! position and pointer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use toolgate::testing::policy::{Call, MemoryStore, Policy};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Policy::parse(text, "fuzz.json") {
        Err(diags) => {
            assert!(!diags.0.is_empty(), "an invalid policy must say why");
            let lines = text.split('\n').count();
            for d in &diags.0 {
                assert!(d.line >= 1 && d.line <= lines, "line out of range: {d}");
                assert!(d.column >= 1, "column out of range: {d}");
                assert!(d.pointer.is_empty() || d.pointer.starts_with('/'), "{d}");
                let _ = d.to_string();
            }
            let mut positions: Vec<_> = diags.0.iter().map(|d| (d.line, d.column)).collect();
            let sorted = {
                let mut s = positions.clone();
                s.sort();
                s
            };
            assert_eq!(positions, sorted, "diagnostics must be in document order");
            positions.clear();
        }
        Ok(policy) => {
            let store = MemoryStore::new();
            let args = json!({"amount": 5, "to": "x", "items": [1, {"a": "b"}]});
            for tool in ["create_api_key", "send_mail", "", "x", "admin_users", "é?*"] {
                for now in [0, 1_000, u64::MAX] {
                    let d = policy.decide(
                        &Call { tool, args: &args, grant: "g", session: "s" },
                        &store,
                        now,
                    );
                    assert!(d.rule.starts_with('/'), "rule pointer {:?}", d.rule);
                    let _ = d.agent_text();
                    let _ = policy.is_hidden(tool);
                }
            }
            let _ = policy.counter_states(&store, 1_000);
        }
    }
});
