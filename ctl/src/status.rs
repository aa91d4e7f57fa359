//! `isthmusctl status`: a control plane's links, as its admin port serves
//! them (`/links`): connected or why not, transport, RTT, last sync, what
//! is imported and how stale it is; then the policies it shares with the
//! cluster set and receives from it (`/policies`), each cluster's verdict.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use isthmus_federation::discovery::subscribers::ProxyStatus;
use isthmus_federation::resources::link::ClusterLinkStatus;
use isthmus_federation::sync::policies::{Verdict, View};

/// The table (pure): one line per link, `now` in unix seconds.
pub fn render(cluster: &str, links: &BTreeMap<String, ClusterLinkStatus>, now: i64) -> String {
    if links.is_empty() {
        return format!("{cluster}: no ClusterLinks (make one with `isthmusctl link create`)\n");
    }
    let mut out = format!(
        "{:<14} {:<13} {:<9} {:>9} {:>10}  {}\n",
        "LINK", "STATE", "TRANSPORT", "RTT", "LAST SYNC", "IMPORTED"
    );
    for (peer, st) in links {
        let state = match (st.connected, st.stale_seconds) {
            (true, _) => "Connected".to_string(),
            (false, Some(s)) => format!("Stale {s}s"),
            (false, None) => "NotConnected".to_string(),
        };
        let synced = st
            .last_sync
            .as_ref()
            .map(|t| format!("{}s ago", (now - t.0.as_second()).max(0)))
            .unwrap_or_else(|| "never".into());
        out.push_str(&format!(
            "{:<14} {:<13} {:<9} {:>9} {:>10}  {}\n",
            peer,
            state,
            st.transport.as_deref().unwrap_or("-"),
            st.rtt_millis
                .map(|r| format!("{r:.2} ms"))
                .unwrap_or_else(|| "-".into()),
            synced,
            if st.imported_services.is_empty() {
                "-".to_string()
            } else {
                st.imported_services.join(", ")
            }
        ));
        for c in st.conditions.iter().filter(|c| c.status != "True") {
            out.push_str(&format!(
                "{:<14} {}: {} ({})\n",
                "", c.type_, c.reason, c.message
            ));
        }
    }
    out
}

/// GET `path` on an admin port (a control plane's or a proxy's): the
/// body of its 200, or what went wrong.
pub async fn admin_get(admin: SocketAddr, path: &str, within: Duration) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let read = async {
        let mut s = isthmus_ctl::dial::connect(admin).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        anyhow::Ok(out)
    };
    let out = tokio::time::timeout(within, read)
        .await
        .with_context(|| format!("the admin port {admin} did not answer within {within:?}"))?
        .with_context(|| format!("reading {path} from the admin port {admin}"))?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .context("not an HTTP answer: is this an admin port?")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "{admin}{path} answered {}",
        head.lines().next().unwrap_or("")
    );
    Ok(body.to_string())
}

/// Reads `/links` from the control plane's admin address.
pub async fn fetch(
    admin: SocketAddr,
    within: Duration,
) -> anyhow::Result<BTreeMap<String, ClusterLinkStatus>> {
    let body = admin_get(admin, "/links", within).await?;
    serde_json::from_str(&body).context("/links is not a map of link statuses")
}

/// Reads `/policies` from the control plane's admin address.
pub async fn fetch_policies(admin: SocketAddr, within: Duration) -> anyhow::Result<View> {
    let body = admin_get(admin, "/policies", within).await?;
    serde_json::from_str(&body).context("/policies is not the policies' view")
}

/// The shared and received policies (pure): one line per policy and
/// cluster; nothing when there are none.
pub fn render_policies(v: &View) -> String {
    let mut out = String::new();
    let mut table = |title: &str, who: &str, rows: &BTreeMap<String, BTreeMap<String, Verdict>>| {
        if rows.is_empty() {
            return;
        }
        out.push_str(&format!(
            "\n{:<40} {:<14} {:<11} {}\n",
            title, who, "STATE", "WHY"
        ));
        for (policy, by_cluster) in rows {
            if by_cluster.is_empty() {
                out.push_str(&format!(
                    "{policy:<40} {:<14} {:<11} no linked cluster has said yet\n",
                    "-", "Pending"
                ));
            }
            for (i, (cluster, verdict)) in by_cluster.iter().enumerate() {
                let why = match (verdict.reason.as_str(), verdict.message.as_str()) {
                    ("", "") => "-".to_string(),
                    (r, "") => r.to_string(),
                    ("", m) => m.to_string(),
                    (r, m) => format!("{r}: {m}"),
                };
                let name = if i == 0 { policy.as_str() } else { "" };
                out.push_str(&format!(
                    "{name:<40} {cluster:<14} {:<11} {why}\n",
                    verdict.state
                ));
            }
        }
    };
    table("SHARED POLICY", "CLUSTER", &v.shared);
    table("RECEIVED POLICY", "FROM", &v.received);
    out
}

/// What `/proxies` serves.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct Proxies {
    pub generation: u64,
    pub proxies: Vec<ProxyStatus>,
}

/// `isthmusctl proxy-status` (pure): one line per proxy, then why.
pub fn render_proxies(v: &Proxies) -> String {
    if v.proxies.is_empty() {
        return format!("no proxy is connected (generation {})\n", v.generation);
    }
    // The first column as wide as the longest name (at least 32).
    let w = v
        .proxies
        .iter()
        .map(|p| p.proxy.len())
        .max()
        .unwrap_or(0)
        .max(32);
    let mut out = format!(
        "{:<w$} {:<12} {:<8} {:>10} {:>9}\n",
        "PROXY", "CLUSTER", "STATE", "GENERATION", "ACK/NACK"
    );
    for p in &v.proxies {
        let generation = p
            .synced_generation
            .map_or("-".to_string(), |g| g.to_string());
        out.push_str(&format!(
            "{:<w$} {:<12} {:<8} {:>10} {:>9}\n",
            p.proxy,
            p.cluster,
            p.state,
            format!("{generation}/{}", v.generation),
            format!("{}/{}", p.acks, p.nacks),
        ));
        for why in &p.why {
            out.push_str(&format!("{:<w$} {why}\n", ""));
        }
    }
    out
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    #[test]
    fn links_with_their_state_and_why_not() {
        let at = |s: i64| Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap());
        let links = BTreeMap::from([
            (
                "eu-central".to_string(),
                ClusterLinkStatus {
                    connected: true,
                    transport: Some("quic".into()),
                    rtt_millis: Some(0.4),
                    last_sync: Some(at(1_000)),
                    imported_services: vec!["catalog.shop".into(), "inventory.shop".into()],
                    ..Default::default()
                },
            ),
            (
                "us-east".to_string(),
                ClusterLinkStatus {
                    conditions: vec![Condition {
                        type_: "Connected".into(),
                        status: "False".into(),
                        reason: "TokenExpired".into(),
                        message: "issue a new join token".into(),
                        last_transition_time: at(900),
                        observed_generation: None,
                    }],
                    ..Default::default()
                },
            ),
        ]);
        let t = render("eu-west", &links, 1_003);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[1].starts_with("eu-central     Connected     quic"),
            "{t}"
        );
        assert!(lines[1].contains("0.40 ms"), "{t}");
        assert!(
            lines[1].contains("3s ago  catalog.shop, inventory.shop"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("us-east        NotConnected  -"),
            "{t}"
        );
        assert!(
            lines[3].contains("Connected: TokenExpired (issue a new join token)"),
            "{t}"
        );
        assert!(render("eu-west", &BTreeMap::new(), 0).contains("no ClusterLinks"));
    }

    #[test]
    fn shared_and_received_policies_with_each_clusters_verdict() {
        let verdict = |state: &str, reason: &str, message: &str| Verdict {
            state: state.into(),
            reason: reason.into(),
            message: message.into(),
        };
        let v = View {
            shared: BTreeMap::from([
                (
                    "HTTPRoute shop/reviews-canary".to_string(),
                    BTreeMap::from([
                        ("eu-central".to_string(), verdict("Accepted", "", "")),
                        (
                            "us-east".to_string(),
                            verdict("Accepted", "BackendNotFound", "ratings does not exist"),
                        ),
                    ]),
                ),
                ("AuthorizationPolicy shop/deny".to_string(), BTreeMap::new()),
            ]),
            received: BTreeMap::from([(
                "HTTPRoute shop/canary".to_string(),
                BTreeMap::from([(
                    "us-east".to_string(),
                    verdict("Overridden", "LocalOverride", ""),
                )]),
            )]),
        };
        let t = render_policies(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].starts_with("SHARED POLICY"), "{t}");
        assert!(
            lines[2].contains("AuthorizationPolicy shop/deny") && lines[2].contains("Pending"),
            "{t}"
        );
        assert!(
            lines[3].starts_with("HTTPRoute shop/reviews-canary")
                && lines[3].contains("eu-central     Accepted    -"),
            "{t}"
        );
        assert!(
            lines[4]
                .trim_start()
                .starts_with("us-east        Accepted    BackendNotFound: ratings does not exist"),
            "{t}"
        );
        assert!(lines[6].starts_with("RECEIVED POLICY"), "{t}");
        assert!(
            lines[7].contains("us-east        Overridden  LocalOverride"),
            "{t}"
        );
        assert!(render_policies(&View::default()).is_empty());
    }

    #[test]
    fn proxies_with_their_state_generation_and_why() {
        let p = |proxy: &str, state: &str, g: Option<u64>, nacks: u64, why: &[&str]| ProxyStatus {
            proxy: proxy.into(),
            cluster: "eu-west".into(),
            identity: None,
            address: None,
            admin: None,
            state: state.into(),
            synced_generation: g,
            acks: 5,
            nacks,
            why: why.iter().map(|w| w.to_string()).collect(),
        };
        let v = Proxies {
            generation: 9,
            proxies: vec![
                p(
                    "shop/frontend-0",
                    "Refused",
                    Some(8),
                    1,
                    &["service/catalog.shop v9: port 80 is gone"],
                ),
                p("shop/catalog-0", "Synced", Some(9), 0, &[]),
            ],
        };
        let t = render_proxies(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("PROXY"), "{t}");
        assert!(
            lines[1].starts_with("shop/frontend-0")
                && lines[1].contains("Refused")
                && lines[1].contains("8/9")
                && lines[1].contains("5/1"),
            "{t}"
        );
        assert!(
            lines[2]
                .trim_start()
                .starts_with("service/catalog.shop v9: port 80 is gone"),
            "{t}"
        );
        assert!(
            lines[3].contains("Synced") && lines[3].contains("9/9"),
            "{t}"
        );
        assert!(
            render_proxies(&Proxies {
                generation: 1,
                proxies: vec![]
            })
            .contains("no proxy")
        );
    }
}
