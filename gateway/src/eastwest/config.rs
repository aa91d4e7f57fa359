//! The east-west role's own settings (`isthmus-gateway eastwest
//! --eastwest-config FILE`): where it listens and which peer gateways it
//! links with. Services to route to come like a sidecar's (a config file or
//! the control plane); with federation the peers will come from the
//! control plane too.

use std::net::SocketAddr;

use serde::Deserialize;

use super::gateway::PeerConfig;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EastWestConfig {
    /// UDP address of the QUIC tunnels (peers connect here).
    #[serde(default = "default_tunnel")]
    pub quic: SocketAddr,
    /// TCP address of the HTTP/2-over-TLS fallback.
    #[serde(default = "default_tunnel")]
    pub tcp: SocketAddr,
    /// This cluster's workloads reach peers through this mTLS HTTP/2
    /// CONNECT entry.
    #[serde(default = "default_local")]
    pub local: SocketAddr,
    /// SPIFFE IDs of peer gateways allowed to connect (`*` suffix allowed).
    #[serde(default)]
    pub admit: Vec<String>,
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// This cluster's name, sent to peers as the source of its streams
    /// (default: the gateway's `--cluster`).
    #[serde(default)]
    pub cluster: Option<String>,
    /// Which services each peer may reach (none: all).
    #[serde(default)]
    pub exports: Vec<super::ExportRule>,
    /// QUIC congestion control: `bbr` (default; holds its rate through
    /// random loss) or `cubic`.
    #[serde(default)]
    pub congestion: super::quic::Congestion,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Peer {
    pub cluster: String,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub identity: String,
}

fn default_tunnel() -> SocketAddr {
    "0.0.0.0:15443".parse().expect("valid address")
}

fn default_local() -> SocketAddr {
    "0.0.0.0:15009".parse().expect("valid address")
}

#[derive(Debug, thiserror::Error)]
pub enum EastWestConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl EastWestConfig {
    pub fn parse(path: &str, text: &str) -> Result<Self, EastWestConfigError> {
        let invalid = |reason: String| EastWestConfigError::Invalid {
            path: path.into(),
            reason,
        };
        let c: Self = isthmus_api::yaml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        for p in &c.peers {
            isthmus_mesh::SpiffeId::parse(&p.identity)
                .map_err(|e| invalid(format!("peer {}: identity: {e}", p.cluster)))?;
        }
        let mut names: Vec<&str> = c.peers.iter().map(|p| p.cluster.as_str()).collect();
        names.sort();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid(format!("peer {} is listed twice", w[0])));
        }
        Ok(c)
    }

    pub fn load(path: &std::path::Path) -> Result<Self, EastWestConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| EastWestConfigError::Read {
            path: p.clone(),
            source,
        })?;
        Self::parse(&p, &text)
    }

    pub fn peer_configs(&self) -> Vec<PeerConfig> {
        self.peers
            .iter()
            .map(|p| PeerConfig {
                cluster: p.cluster.clone(),
                udp: p.udp,
                tcp: p.tcp,
                identity: p.identity.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_what_is_wrong() {
        let c = EastWestConfig::parse(
            "ew.yaml",
            "admit: [\"spiffe://us-east.isthmus.local/ns/isthmus-system/sa/*\"]\n\
             peers:\n  - {cluster: us-east, udp: \"10.0.0.2:15443\", tcp: \"10.0.0.2:15443\", \
             identity: \"spiffe://us-east.isthmus.local/ns/isthmus-system/sa/isthmus-eastwest\"}\n",
        )
        .unwrap();
        assert_eq!(c.quic.port(), 15443);
        assert_eq!(c.local.port(), 15009);
        assert_eq!(c.peer_configs()[0].cluster, "us-east");
        assert_eq!(c.congestion, super::super::quic::Congestion::Bbr);
        let c = EastWestConfig::parse("ew.yaml", "congestion: cubic\n").unwrap();
        assert_eq!(c.congestion, super::super::quic::Congestion::Cubic);
        assert!(EastWestConfig::parse("ew.yaml", "congestion: vegas\n").is_err());
        let c = EastWestConfig::parse(
            "ew.yaml",
            "cluster: eu-west\nexports:\n  - peers: [\"spiffe://us-east.isthmus.local/*\"]\n    services: [\"*.shop\"]\n",
        )
        .unwrap();
        assert_eq!(c.cluster.as_deref(), Some("eu-west"));
        assert_eq!(c.exports[0].services, vec!["*.shop".to_string()]);
        let e = EastWestConfig::parse(
            "ew.yaml",
            "peers: [{cluster: a, udp: \"1.2.3.4:1\", tcp: \"1.2.3.4:1\", identity: nope}]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("peer a: identity"), "{e}");
        let e = EastWestConfig::parse("ew.yaml", "peer: []\n").unwrap_err();
        assert!(e.to_string().starts_with("ew.yaml:"), "{e}");
    }
}
