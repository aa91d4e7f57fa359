//! Federation between linked clusters' control planes (the DESIGN's
//! `sync/`). A cluster with a ClusterLink to a peer imports what the peer
//! exports: its control plane (`client`) opens the channel through its own
//! east-west gateway to the peer's control plane (`server`), presents the
//! join token the peer issued (then the link credential the peer sends
//! once it admitted us), and holds what it receives (`peers`): a full
//! state on every (re)connection, then versioned deltas. The translation
//! takes the held imports as `translate::imports::Summary`s; the partition
//! policy decides how long they are used once the peer goes silent.
//!
//! - `exports`: our ServiceExports as summaries, and deltas (pure).
//! - `peers`: what we hold from each peer; partition decisions (pure).
//! - `policies`: the policies we share with the cluster set, and reading
//!   what peers share (pure).
//! - `server`: the exporting side (gRPC `ClusterSync`, port 15012).
//! - `client`: one task per ClusterLink, reconnecting with backoff.
//! - `credentials`: the link credentials peers issued us, kept across
//!   restarts (a link outlives its join token).
//! - `identity`: the control plane's SVID and trust on the channel.
//! - `status`: ClusterLink status from what the link tasks saw (pure).

pub mod client;
pub mod credentials;
pub mod exports;
pub mod identity;
pub mod peers;
pub mod policies;
pub mod server;
pub mod status;

/// The control plane's federation port (reached by peers only through
/// the east-west gateway).
pub const SYNC_PORT: u16 = 15012;

/// The service peers' gateways route the channel to.
pub const SERVICE: &str = "isthmus-federation";

/// The CONNECT authority of the channel, in the namespace `ns`.
pub fn authority(ns: &str) -> String {
    format!("{SERVICE}.{ns}:{SYNC_PORT}")
}

/// Why a link is not connected: the reason of its `Connected` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The peer's join token (or the link credential, after a long
    /// outage) expired: make a new link.
    TokenExpired,
    /// The join token or link credential is not one the peer issued for
    /// this cluster.
    TokenInvalid,
    /// The peer has no ClusterLink back to us.
    UnknownPeer,
    /// A certificate did not chain to the trust bundle the link names.
    TrustMismatch,
    /// The link's Secret is missing or has no token, and no link
    /// credential is held.
    NoCredentials,
    /// This control plane does not know its east-west gateway.
    NoGateway,
    /// Our gateway could not carry the channel (no route to the peer).
    GatewayRefused,
    /// The peer did not answer.
    Unreachable,
    /// An update was lost; reconnecting for a full state.
    Resync,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::TokenExpired,
        Reason::TokenInvalid,
        Reason::UnknownPeer,
        Reason::TrustMismatch,
        Reason::NoCredentials,
        Reason::NoGateway,
        Reason::GatewayRefused,
        Reason::Unreachable,
        Reason::Resync,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TokenExpired => "TokenExpired",
            Reason::TokenInvalid => "TokenInvalid",
            Reason::UnknownPeer => "UnknownPeer",
            Reason::TrustMismatch => "TrustMismatch",
            Reason::NoCredentials => "NoCredentials",
            Reason::NoGateway => "NoGateway",
            Reason::GatewayRefused => "GatewayRefused",
            Reason::Unreachable => "Unreachable",
            Reason::Resync => "Resync",
        }
    }

    /// The reason a refusal's message starts with (`TokenExpired: ...`).
    pub fn of_message(message: &str) -> Option<Reason> {
        let head = message.split(':').next()?.trim();
        Reason::ALL.into_iter().find(|r| r.as_str() == head)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Said to the peer (a gRPC status) and written on its ClusterLink.
    #[error("{}: {message}", reason.as_str())]
    Refused { reason: Reason, message: String },
}

impl SyncError {
    pub fn refusal(&self) -> peers::Refusal {
        match self {
            SyncError::Refused { reason, message } => peers::Refusal {
                reason: reason.as_str().to_string(),
                message: message.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_survive_the_wire() {
        for r in Reason::ALL {
            let e = SyncError::Refused {
                reason: r,
                message: "why: and more".into(),
            };
            assert_eq!(Reason::of_message(&e.to_string()), Some(r));
        }
        assert_eq!(Reason::of_message("transport error"), None);
    }
}
