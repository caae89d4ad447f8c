//! A trivial Streamable HTTP MCP server, for `serve`'s tests and benchmark: answers
//! `initialize` (with its own session id), `tools/list` (one tool, `echo`) and `tools/call`
//! (echoes `args.message`) at once as JSON, takes notifications with 202, and records the
//! headers of every request so tests can see what reached it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The session id this upstream hands out.
pub const UPSTREAM_SESSION: &str = "upstream-session-1";

#[derive(Default)]
pub struct Seen {
    /// Off for benchmarks, which send far too many requests to keep.
    pub record: bool,
    pub headers: Mutex<Vec<HeaderMap>>,
    /// The method of every request and notification, in order.
    pub methods: Mutex<Vec<String>>,
}

/// Serves on a free loopback port in a runtime of its own; returns the address and what it
/// has seen (when `record`).
pub fn start(record: bool) -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen {
        record,
        headers: Mutex::new(Vec::new()),
        methods: Mutex::new(Vec::new()),
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let state = seen.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let app = axum::Router::new()
                .route(
                    "/mcp",
                    axum::routing::post(answer).delete(|| async { StatusCode::OK }),
                )
                .with_state(state);
            axum::serve(listener, app).await.unwrap();
        });
    });
    (rx.recv().unwrap(), seen)
}

async fn answer(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> Response {
    if seen.record {
        seen.headers.lock().unwrap().push(headers);
    }
    let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if seen.record {
        let method = msg["method"].as_str().unwrap_or("").to_owned();
        seen.methods.lock().unwrap().push(method);
    }
    let Some(id) = msg.get("id").cloned() else {
        return StatusCode::ACCEPTED.into_response();
    };
    let result = match msg["method"].as_str() {
        Some("initialize") => json!({
            "protocolVersion": "2025-11-25",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "trivial", "version": "1"}
        }),
        Some("tools/list") => {
            json!({"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]})
        }
        Some("tools/call") => json!({
            "content": [{"type": "text", "text": msg["params"]["arguments"]["message"].as_str().unwrap_or("")}]
        }),
        _ => {
            let body = json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "no such method"}});
            return (
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response();
        }
    };
    let body = json!({"jsonrpc": "2.0", "id": id, "result": result});
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (
                header::HeaderName::from_static("mcp-session-id"),
                UPSTREAM_SESSION,
            ),
        ],
        body.to_string(),
    )
        .into_response()
}
