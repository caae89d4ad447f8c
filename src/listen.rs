//! TCP listeners with an accept queue deep enough for a flood.
//!
//! A connection the kernel cannot queue for `accept` is not refused: its SYN is dropped and
//! the client retransmits after a second (then two, four...). So when a burst of sockets fills
//! the queue, a legitimate agent or operator connecting behind it waits a second or more even
//! though the gateway accepts and sheds the burst in milliseconds. `serve`'s MCP listener and
//! the event websocket both shed unwanted connections only once accepted
//! (`gateway::http::listener`, `control::admission`), so they need them queued first.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Connections the kernel may queue for `accept`: above the 1,024 that `TcpListener::bind`
/// asks for, so that a slowloris flood of a thousand-odd sockets reopened as they are shed
/// cannot fill it. The kernel caps it at `net.core.somaxconn` (4,096 by default since Linux
/// 5.4) without saying so.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` and listens with [`LISTEN_BACKLOG`], reusing the address as
/// `TcpListener::bind` does (a restarted gateway may take its port back at once).
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
