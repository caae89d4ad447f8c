//! The client side of the event websocket, used by the console, `tail`, `approve` and `deny`.
//!
//! [`connect`] opens the websocket with the bearer token, reads the gateway's `hello` and
//! refuses a protocol version it does not know; [`Connection::next_event`] then yields that
//! `hello` first and the live stream after it. [`Connection::split`] gives a reader and a
//! writer for use from two tasks.
//!
//! `wss://` is TLS by rustls (`crate::tls::client_config`: the system's roots and an optional
//! CA file); its failures are told apart for a person: a certificate not trusted or not for
//! that host, a plain port asked for TLS, a TLS port asked in plain text.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

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
    #[error(
        "the certificate of {place} is not trusted: {detail}; pass its CA with --ca-file \
         (ca_file in remotes.toml), or connect by a name the certificate is for"
    )]
    Untrusted { place: String, detail: String },
    #[error(
        "{place} did not answer with TLS ({detail}); if it serves plain ws://, connect with \
         ws:// or http://"
    )]
    NotTls { place: String, detail: String },
    #[error("{0} speaks TLS: connect with https:// or wss://")]
    PlainToTls(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
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

type Socket = WebSocketStream<ClientStream>;

/// A connection to a gateway, in plain text or TLS.
#[derive(Debug)]
enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

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
pub struct TlsClientOptions {
    /// A PEM file of CA certificates to trust besides the system's (a private CA).
    pub ca_file: Option<std::path::PathBuf>,
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

/// Connects to a gateway's control websocket and reads its `hello`, trusting a `wss://`
/// gateway's certificate as `tls` says.
pub async fn connect_with(
    url: &str,
    token: &str,
    tls: &TlsClientOptions,
) -> Result<Connection, ClientError> {
    tokio::time::timeout(CONNECT_TIMEOUT, connect_now(url, token, tls))
        .await
        .map_err(|_| ClientError::Timeout(url.to_owned()))?
}

/// Connects to a gateway's event websocket and reads its `hello` (`wss://` trusted by the
/// system's roots alone).
pub async fn connect(url: &str, token: &str) -> Result<Connection, ClientError> {
    connect_with(url, token, &TlsClientOptions::default()).await
}

async fn connect_now(
    url: &str,
    token: &str,
    tls: &TlsClientOptions,
) -> Result<Connection, ClientError> {
    let bad = || ClientError::BadUrl(url.to_owned());
    let mut request = url.into_client_request().map_err(|_| bad())?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| ClientError::Unauthorized(url.to_owned()))?;
    request.headers_mut().insert("Authorization", bearer);
    let secure = match request.uri().scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        _ => return Err(bad()),
    };
    let host = request
        .uri()
        .host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
        .filter(|h| !h.is_empty())
        .ok_or_else(bad)?;
    let port = request
        .uri()
        .port_u16()
        .unwrap_or(if secure { 443 } else { 80 });
    let place = request
        .uri()
        .authority()
        .map_or_else(|| host.clone(), |a| a.to_string());
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_GATEWAY_MESSAGE))
        .max_frame_size(Some(MAX_GATEWAY_MESSAGE));
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| ClientError::Connect {
            url: url.to_owned(),
            source: Box::new(tungstenite::Error::Io(e)),
        })?;
    let _ = tcp.set_nodelay(true);
    let stream = if secure {
        let client = crate::tls::client_config(tls.ca_file.as_deref())?;
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|_| bad())?;
        let secured = tokio_rustls::TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .map_err(|e| tls_failure(e, &place))?;
        ClientStream::Tls(Box::new(secured))
    } else {
        ClientStream::Plain(tcp)
    };
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| match e {
            tungstenite::Error::Http(ref response)
                if response.status() == StatusCode::UNAUTHORIZED =>
            {
                ClientError::Unauthorized(url.to_owned())
            }
            tungstenite::Error::Http(ref response)
                if response.status() == StatusCode::BAD_REQUEST
                    && response.body().as_deref().is_some_and(|body| {
                        String::from_utf8_lossy(body).contains(crate::tls::PLAIN_ON_TLS_PORT)
                    }) =>
            {
                ClientError::PlainToTls(place.clone())
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

/// What a failed TLS handshake means for the person connecting.
fn tls_failure(e: std::io::Error, place: &str) -> ClientError {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(why)) => ClientError::Untrusted {
            place: place.to_owned(),
            detail: why.to_string(),
        },
        Some(other) => ClientError::NotTls {
            place: place.to_owned(),
            detail: other.to_string(),
        },
        // The peer closed or reset the connection instead of answering the ClientHello: a
        // plain server that gave up on what it read.
        None => ClientError::NotTls {
            place: place.to_owned(),
            detail: e.to_string(),
        },
    }
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
