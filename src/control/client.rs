//! The client side of the event websocket, used by the console, `tail`, `approve` and `deny`.
//!
//! [`connect`] opens the websocket with the bearer token, reads the gateway's `hello` and
//! refuses a protocol version it does not know; [`Connection::next_event`] then yields that
//! `hello` first and the live stream after it. [`Connection::split`] gives a reader and a
//! writer for use from two tasks.

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::wire::{ClientMsg, DecodeError, Event, EventKind, PROTOCOL_VERSION, Reply};

/// Largest message accepted from a gateway (a `hello` carries up to 2,000 recent calls).
pub(crate) const MAX_GATEWAY_MESSAGE: usize = 64 * 1024 * 1024;

/// What can go wrong talking to a gateway.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0} is not a websocket URL (expected ws://HOST:PORT/)")]
    BadUrl(String),
    #[error("the gateway at {0} refused the token")]
    Unauthorized(String),
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: Box<tungstenite::Error>,
    },
    #[error(
        "the gateway speaks protocol {0}, this toolgate speaks {PROTOCOL_VERSION}; use the same toolgate version"
    )]
    Protocol(u32),
    #[error("the gateway did not start with a hello")]
    NoHello,
    #[error("{0} did not answer within {CONNECT_TIMEOUT:?}")]
    Timeout(String),
    #[error("the connection closed")]
    Closed,
    #[error("websocket: {0}")]
    Websocket(#[from] Box<tungstenite::Error>),
    #[error("the gateway sent a message this toolgate does not understand: {0}")]
    Decode(#[from] serde_json::Error),
    /// An event of a type a newer gateway sends and this version does not know: skip it.
    #[error(
        "the gateway sent an event of type {0:?}, which this toolgate does not know (the gateway is newer); skipped"
    )]
    UnknownEvent(String),
}

impl From<tungstenite::Error> for ClientError {
    fn from(e: tungstenite::Error) -> Self {
        ClientError::Websocket(Box::new(e))
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An open connection to one gateway.
#[derive(Debug)]
pub struct Connection {
    ws: Socket,
    /// The `hello` read by [`connect`], handed out by the first `next_event`.
    hello: Option<Event>,
}

/// The reading half of a [`Connection`].
#[derive(Debug)]
pub struct EventReader {
    stream: SplitStream<Socket>,
    hello: Option<Event>,
}

/// The writing half of a [`Connection`].
#[derive(Debug)]
pub struct CommandWriter {
    sink: SplitSink<Socket, Message>,
}

/// How long connecting, up to and including the `hello`, may take.
pub(crate) const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How a client trusts a gateway's certificate on a `wss://` URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsClientOptions {
    /// A PEM file of CA certificates to trust besides the system's (a private CA).
    pub(crate) ca_file: Option<std::path::PathBuf>,
}

/// The websocket URL of a gateway's control plane from what an operator typed: an
/// `https://H:P` URL means `wss://H:P/control` (and `http://` `ws://`); a `ws://` or `wss://`
/// URL is used as given. A path other than `/` on an http(s) URL is kept.
pub(crate) fn control_url(given: &str) -> Result<String, ClientError> {
    let bad = || ClientError::BadUrl(given.to_owned());
    let (scheme, rest) = given.split_once("://").ok_or_else(bad)?;
    let ws_scheme = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "wss" => return Ok(given.to_owned()),
        "https" => "wss",
        "http" => "ws",
        _ => return Err(bad()),
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(bad());
    }
    let path = if path.is_empty() || path == "/" {
        "/control"
    } else {
        path
    };
    Ok(format!("{ws_scheme}://{authority}{path}"))
}

/// Connects as [`connect`] does, trusting the gateway's certificate as `tls` says.
pub(crate) async fn connect_with(
    url: &str,
    token: &str,
    tls: &TlsClientOptions,
) -> Result<Connection, ClientError> {
    // The TLS connector that honours `tls.ca_file` is the next change (issue 17).
    let _ = tls;
    connect(url, token).await
}

/// Connects to a gateway's event websocket and reads its `hello`.
pub async fn connect(url: &str, token: &str) -> Result<Connection, ClientError> {
    tokio::time::timeout(CONNECT_TIMEOUT, connect_now(url, token))
        .await
        .map_err(|_| ClientError::Timeout(url.to_owned()))?
}

async fn connect_now(url: &str, token: &str) -> Result<Connection, ClientError> {
    let mut request = url
        .into_client_request()
        .map_err(|_| ClientError::BadUrl(url.to_owned()))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| ClientError::Unauthorized(url.to_owned()))?;
    request.headers_mut().insert("Authorization", bearer);
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_GATEWAY_MESSAGE))
        .max_frame_size(Some(MAX_GATEWAY_MESSAGE));
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
        .await
        .map_err(|e| match e {
            tungstenite::Error::Http(ref response)
                if response.status() == StatusCode::UNAUTHORIZED =>
            {
                ClientError::Unauthorized(url.to_owned())
            }
            tungstenite::Error::Url(_) => ClientError::BadUrl(url.to_owned()),
            e => ClientError::Connect {
                url: url.to_owned(),
                source: Box::new(e),
            },
        })?;
    let hello = match read_event(&mut ws).await {
        Some(Ok(event)) => event,
        Some(Err(e)) => return Err(e),
        None => return Err(ClientError::Closed),
    };
    match &hello.kind {
        EventKind::Hello(h) if h.protocol == PROTOCOL_VERSION => {}
        EventKind::Hello(h) => return Err(ClientError::Protocol(h.protocol)),
        _ => return Err(ClientError::NoHello),
    }
    Ok(Connection {
        ws,
        hello: Some(hello),
    })
}

/// The next event from a stream of websocket messages; `None` when it closed.
async fn read_event<S>(stream: &mut S) -> Option<Result<Event, ClientError>>
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        return match stream.next().await? {
            Ok(Message::Text(text)) => Some(Event::decode(text.as_str()).map_err(|e| match e {
                DecodeError::UnknownType(kind) => ClientError::UnknownEvent(kind),
                DecodeError::Invalid(e) => ClientError::Decode(e),
            })),
            Ok(Message::Close(_)) => None,
            // Pings are answered by tungstenite; nothing else is meaningful from a gateway.
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Binary(_) | Message::Frame(_)) => {
                continue;
            }
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => None,
            Err(e) => Some(Err(e.into())),
        };
    }
}

async fn write_msg<S>(sink: &mut S, msg: &ClientMsg) -> Result<(), ClientError>
where
    S: futures_util::Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let text = serde_json::to_string(msg)?;
    sink.send(Message::Text(Utf8Bytes::from(text))).await?;
    Ok(())
}

impl Connection {
    /// Next event from the gateway; the first is always a Hello. None when the connection closed.
    pub async fn next_event(&mut self) -> Option<Result<Event, ClientError>> {
        if let Some(hello) = self.hello.take() {
            return Some(Ok(hello));
        }
        read_event(&mut self.ws).await
    }

    pub async fn send(&mut self, msg: &ClientMsg) -> Result<(), ClientError> {
        write_msg(&mut self.ws, msg).await
    }

    /// Sends a command and waits for its [`Reply`]; events arriving meanwhile are dropped
    /// (this is for one-shot clients such as `toolgate approve`).
    pub async fn request(&mut self, msg: &ClientMsg) -> Result<Reply, ClientError> {
        let id = msg.id();
        self.send(msg).await?;
        loop {
            match self.next_event().await {
                Some(Ok(Event {
                    kind: EventKind::Reply(reply),
                    ..
                })) if reply.id == id => return Ok(reply),
                Some(Ok(_) | Err(ClientError::UnknownEvent(_))) => {}
                Some(Err(e)) => return Err(e),
                None => return Err(ClientError::Closed),
            }
        }
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Split for use from two tasks.
    pub fn split(self) -> (EventReader, CommandWriter) {
        let (sink, stream) = self.ws.split();
        (
            EventReader {
                stream,
                hello: self.hello,
            },
            CommandWriter { sink },
        )
    }
}

impl EventReader {
    /// Next event from the gateway; the first is always a Hello. None when the connection closed.
    pub async fn next_event(&mut self) -> Option<Result<Event, ClientError>> {
        if let Some(hello) = self.hello.take() {
            return Some(Ok(hello));
        }
        read_event(&mut self.stream).await
    }
}

impl CommandWriter {
    pub async fn send(&mut self, msg: &ClientMsg) -> Result<(), ClientError> {
        write_msg(&mut self.sink, msg).await
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        let _ = self.sink.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_means_the_control_websocket_and_ws_urls_are_kept() {
        let cases = [
            ("https://gw.example:8787", "wss://gw.example:8787/control"),
            ("https://gw.example:8787/", "wss://gw.example:8787/control"),
            ("HTTPS://gw.example:8787", "wss://gw.example:8787/control"),
            ("http://127.0.0.1:9", "ws://127.0.0.1:9/control"),
            (
                "https://gw.example/ops/control",
                "wss://gw.example/ops/control",
            ),
            ("ws://127.0.0.1:9/", "ws://127.0.0.1:9/"),
            (
                "wss://gw.example:8787/control",
                "wss://gw.example:8787/control",
            ),
        ];
        for (given, want) in cases {
            assert_eq!(control_url(given).unwrap(), want, "{given}");
        }
        for bad in [
            "gw.example:8787",
            "ftp://gw.example",
            "https://",
            "https:///control",
        ] {
            assert!(
                matches!(control_url(bad), Err(ClientError::BadUrl(_))),
                "{bad}"
            );
        }
    }
}
