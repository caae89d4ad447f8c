//! The cost of pinning a `tools/list`: reading and fingerprinting (RFC 8785 canonical form,
//! SHA-256) 100 tools of realistic size, as the gateway will for every page it forwards.
//! Target: at most 1 ms for the 100.

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use toolgate::testing::pins::fingerprint_list;

/// 100 tools shaped like real servers': a paragraph of description, a schema with a few
/// typed properties (one nested), annotations, some with an output schema.
fn tools() -> Vec<Value> {
    (0..100)
        .map(|i| {
            let mut tool = json!({
                "name": format!("tool_{i}_do_something"),
                "title": format!("Tool {i}"),
                "description": format!(
                    "Tool number {i}. Reads or changes records of the service: give the record's \
                     identifier and the fields to change; fields not given are left as they are. \
                     Returns the record as it is after the call, with its revision number."
                ),
                "inputSchema": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "description": "The record's identifier."},
                        "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                        "ratio": {"type": "number", "default": 0.25},
                        "fields": {
                            "type": "object",
                            "properties": {
                                "title": {"type": "string"},
                                "tags": {"type": "array", "items": {"type": "string"}}
                            },
                            "additionalProperties": false
                        },
                        "mode": {"type": "string", "enum": ["fast", "safe", "dry-run"]}
                    },
                    "required": ["id"]
                },
                "annotations": {"readOnlyHint": i % 3 == 0, "destructiveHint": i % 5 == 0,
                                "openWorldHint": false}
            });
            if i % 2 == 0 {
                tool["outputSchema"] = json!({
                    "type": "object",
                    "properties": {"id": {"type": "string"}, "revision": {"type": "integer"}}
                });
            }
            tool
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let list = tools();
    assert!(
        fingerprint_list(&list).iter().all(Result::is_ok),
        "every benchmark tool is valid"
    );
    c.bench_function("pins/fingerprint_100_tools", |b| {
        b.iter(|| fingerprint_list(std::hint::black_box(&list)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
