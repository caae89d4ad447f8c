//! The policy of remote gateways (issue 17): what the console knows when the draft's text
//! came from a gateway's `read_policy` rather than a file on this machine, and where a
//! remote `:w` stands. The flow is [`crate::console::update`]'s `remote_policy`.

use crate::wire::ReplyCode;

/// Where the draft's text came from, when a remote gateway's, and the write under way.
#[derive(Debug, Default)]
pub struct RemotePolicy {
    /// The connection key of the gateway the text was read from; `None` until read (and
    /// always for a local policy file).
    pub source: Option<String>,
    /// Whether that gateway can write its file (false: a read-only mount, the policy is
    /// managed elsewhere).
    pub writable: bool,
    /// The `read_policy` sent and not answered yet: its id and the connection it went to.
    pub reading: Option<(u64, usize)>,
    /// The latest `:w`, sent to every gateway running the same policy.
    pub write: Option<RemoteWrite>,
}

/// A `write_policy` sent to several gateways, and their answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteWrite {
    /// SHA-256 of the text sent: what each gateway reports in `policy_applied` once its
    /// watcher applied it.
    pub hash: String,
    /// The text sent.
    pub text: String,
    /// Each command's id and the connection (index into the gateways) it went to.
    pub sent: Vec<(u64, usize)>,
    /// The connections that wrote it (or found it written).
    pub written: Vec<usize>,
    /// The connections that refused it, why (for the console to act on) and the reason
    /// they gave (sanitised).
    pub refused: Vec<(usize, ReplyCode, String)>,
    /// A gateway's file as it is now, from a `conflict` answer (for the draft's conflict).
    pub current: Option<String>,
}

impl RemoteWrite {
    /// How many gateways it was sent to.
    pub fn total(&self) -> usize {
        self.sent.len()
    }

    /// Whether every gateway has answered.
    pub fn answered(&self) -> bool {
        self.written.len() + self.refused.len() >= self.sent.len()
    }

    /// Whether the connection `conn` has answered (written or refused).
    pub fn answered_by(&self, conn: usize) -> bool {
        self.written.contains(&conn) || self.refused.iter().any(|(c, _, _)| *c == conn)
    }

    /// The connection a command id went to, if it is one of this write's.
    pub fn conn_of(&self, id: u64) -> Option<usize> {
        self.sent.iter().find(|(i, _)| *i == id).map(|(_, c)| *c)
    }
}
