//! `/control` on `serve`'s own listener (`serve --operators FILE`): the control websocket,
//! served over the same connection handling (and the same TLS) as the MCP endpoint.
//!
//! The upgrade request's bearer token must be an operator account's
//! ([`crate::control::server::ControlPlane::admit`]): a grant's token is refused here as an
//! operator's is refused on `/mcp/<name>`. Once admitted, the connection counts as
//! authenticated for the listener's shedding, its [`Peer`] lives as long as the websocket,
//! and the session is the event websocket's own (`hello`, stream, commands, roles,
//! revocation).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::listener::Peer;
use super::{HttpGateway, plain};
use crate::control::server::ControlPlane;

/// `GET /control` with `Upgrade: websocket`.
pub(super) async fn control(
    State(gw): State<Arc<HttpGateway>>,
    mut req: Request<Body>,
) -> Response {
    let Some(plane) = gw.options.control.clone() else {
        return plain(
            StatusCode::NOT_FOUND,
            "this gateway serves no control websocket here (start serve with --operators FILE; \
             with --control-listen it is on that address)",
        );
    };
    let headers = req.headers();
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let version_13 = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let (Some(key), true, true) = (key, upgrade, version_13) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "this is the control websocket (version 13); connect with `toolgate console \
             --connect https://HOST:PORT` or `toolgate tail --connect ...`",
        );
    };
    let admitted = match plane.admit(headers) {
        Ok(admitted) => admitted,
        Err((status, text)) => {
            let mut resp = (
                status,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                text,
            )
                .into_response();
            if status == StatusCode::UNAUTHORIZED {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            return resp;
        }
    };
    let peer = req.extensions().get::<Arc<Peer>>().cloned();
    if let Some(peer) = &peer {
        peer.authenticated();
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!("the control websocket's upgrade failed: {e}");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(ControlPlane::websocket_config()),
        )
        .await;
        plane.serve(ws, admitted).await;
        // The connection counted until here.
        drop(peer);
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    resp
}
