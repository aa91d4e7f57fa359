//! A ClusterLink's status from what its link task saw (pure): connected,
//! transport, RTT, last sync, the services imported, how stale they are,
//! and a `Connected` condition whose reason says why not.

use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::peers::Peer;
use crate::resources::link::{ClusterLinkStatus, TrustBundleStatus};

fn time(t: SystemTime) -> Option<Time> {
    k8s_openapi::jiff::Timestamp::try_from(t).ok().map(Time)
}

/// Which bundle is trusted for the peer: `in_use` (the translation's,
/// None when the link was not accepted), from the peer if it is the one
/// the peer sent.
fn trust_status(in_use: Option<&str>, peer: Option<&Peer>) -> Option<TrustBundleStatus> {
    let pem = in_use?;
    let synced = peer
        .and_then(|p| p.trust_bundle.as_ref())
        .filter(|b| b.pem == pem);
    Some(TrustBundleStatus {
        source: if synced.is_some() {
            "Peer"
        } else {
            "ClusterLink"
        }
        .into(),
        roots: crate::translate::links::fingerprints(pem),
        received: synced.and_then(|b| b.received).and_then(time),
    })
}

/// The status of the link to `peer` (`None`: not tried yet) at `now`;
/// `trust` is the peer bundle in use.
pub fn link_status(
    peer: Option<&Peer>,
    trust: Option<&str>,
    generation: i64,
    now: SystemTime,
) -> ClusterLinkStatus {
    let trust_bundle = trust_status(trust, peer);
    let Some(p) = peer else {
        return ClusterLinkStatus {
            trust_bundle,
            conditions: vec![condition(
                "False",
                "Pending",
                "not tried yet".into(),
                generation,
                now,
            )],
            ..Default::default()
        };
    };
    let imported: Vec<String> = if p.usable() {
        p.services.keys().cloned().collect()
    } else {
        Vec::new()
    };
    let stale = p.stale_for(now);
    let mut c = if p.connected {
        condition(
            "True",
            "Connected",
            format!("importing {} services from {}", imported.len(), p.cluster),
            generation,
            now,
        )
    } else {
        let (reason, why) = match &p.refusal {
            Some(r) => (r.reason.clone(), r.message.clone()),
            None => ("Unreachable".to_string(), "the link dropped".to_string()),
        };
        let imports = match (stale, p.withdrawn) {
            (Some(age), _) => format!(
                "; its {} imports are kept (fail-static), last heard {} s ago",
                imported.len(),
                age.as_secs()
            ),
            (None, true) => "; its imports are withdrawn".to_string(),
            (None, false) => String::new(),
        };
        condition("False", &reason, format!("{why}{imports}"), generation, now)
    };
    if let Some(why) = p.credential.as_ref().and_then(|c| c.not_kept.as_ref()) {
        c.message.push_str(&format!(
            "; the link credential could not be kept, a restart will need the join token: {why}"
        ));
    }
    ClusterLinkStatus {
        connected: p.connected,
        transport: p.transport.clone().filter(|_| p.connected),
        rtt_millis: p.rtt.map(|d| (d.as_secs_f64() * 1e4).round() / 10.0),
        last_sync: p.last_sync.and_then(time),
        imported_services: imported,
        credential_expiry: p.credential.as_ref().and_then(|c| time(c.expires)),
        trust_bundle,
        stale_seconds: stale.map(|d| d.as_secs()),
        conditions: vec![c],
    }
}

fn condition(
    status: &str,
    reason: &str,
    message: String,
    generation: i64,
    now: SystemTime,
) -> Condition {
    Condition {
        type_: "Connected".into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: Some(generation),
        last_transition_time: time(now).unwrap_or(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::peers::{Partition, Refusal};
    use isthmus_api::federation::v1 as wire;
    use std::time::Duration;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    #[test]
    fn status_says_connected_stale_withdrawn_or_refused() {
        assert_eq!(
            link_status(None, None, 1, t(0)).conditions[0].reason,
            "Pending"
        );
        let mut p = Peer {
            cluster: "eu-central".into(),
            partition: Some(Partition::DEFAULT),
            transport: Some("quic".into()),
            rtt: Some(Duration::from_micros(1234)),
            ..Default::default()
        };
        p.apply(
            &wire::Exports {
                version: 1,
                full: true,
                services: vec![wire::ExportedService {
                    name: "catalog".into(),
                    namespace: "shop".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            t(0),
        )
        .unwrap();
        let s = link_status(Some(&p), None, 3, t(1));
        assert!(s.connected);
        assert_eq!(s.transport.as_deref(), Some("quic"));
        assert_eq!(s.rtt_millis, Some(1.2));
        assert_eq!(s.imported_services, ["catalog.shop"]);
        assert_eq!(s.conditions[0].status, "True");
        assert_eq!(s.conditions[0].observed_generation, Some(3));

        p.lost(
            Some(Refusal {
                reason: "Unreachable".into(),
                message: "eu-central did not answer".into(),
            }),
            t(10),
        );
        let s = link_status(Some(&p), None, 3, t(40));
        assert!(!s.connected);
        assert_eq!(s.transport, None);
        assert_eq!(s.stale_seconds, Some(40));
        assert_eq!(
            s.imported_services,
            ["catalog.shop"],
            "kept while fail-static"
        );
        assert_eq!(s.conditions[0].reason, "Unreachable");
        assert!(
            s.conditions[0]
                .message
                .contains("kept (fail-static), last heard 40 s ago")
        );

        p.withdrawn = true;
        let s = link_status(Some(&p), None, 3, t(400));
        assert_eq!(s.stale_seconds, None);
        assert!(s.imported_services.is_empty());
        assert!(
            s.conditions[0]
                .message
                .ends_with("its imports are withdrawn")
        );
    }
}
