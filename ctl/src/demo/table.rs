//! The live table: per frontend and service, the last second's requests,
//! who served them, p50/p99 and errors; then every link's transport, RTT
//! and imports. Pure: takes the numbers, returns the text.

use std::collections::BTreeMap;
use std::time::Duration;

use isthmus_federation::resources::link::ClusterLinkStatus;

use super::traffic::Window;

fn ms(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.1} ms", d.as_secs_f64() * 1000.0),
        None => "-".into(),
    }
}

/// `windows`: (frontend, service) → the last `period`'s answers;
/// `links`: cluster → (peer → status), None when its control plane did
/// not answer.
pub fn render(
    elapsed: Duration,
    period: Duration,
    windows: &BTreeMap<(&'static str, &'static str), Window>,
    links: &[(&str, Option<BTreeMap<String, ClusterLinkStatus>>)],
) -> String {
    let per_s = |n: u64| n as f64 / period.as_secs_f64().max(0.001);
    let mut out = format!(
        "isthmus demo, {}s  (last {:.0} s; Ctrl-C stops)\n{:<11} {:<10} {:>6}  {:<34} {:>9} {:>9} {:>7}  {}\n",
        elapsed.as_secs(),
        period.as_secs_f64(),
        "frontend",
        "service",
        "req/s",
        "served by",
        "p50",
        "p99",
        "errors",
        "caller = frontend (mTLS)"
    );
    for ((frontend, service), w) in windows {
        let served: Vec<String> = w.served.iter().map(|(c, n)| format!("{c} {n}")).collect();
        let caller = if w.told_caller == 0 {
            "-".to_string()
        } else {
            format!("{}/{}", w.caller_verified, w.told_caller)
        };
        out.push_str(&format!(
            "{:<11} {:<10} {:>6.0}  {:<34} {:>9} {:>9} {:>7}  {}\n",
            frontend,
            service,
            per_s(w.requests()),
            served.join(", "),
            ms(w.percentile(50.0)),
            ms(w.percentile(99.0)),
            w.errors,
            caller
        ));
        if let Some(e) = &w.last_error {
            out.push_str(&format!("{:<23}last error: {e}\n", ""));
        }
    }
    out.push_str("links\n");
    for (cluster, statuses) in links {
        match statuses {
            None => out.push_str(&format!("  {cluster:<11} control plane not answering\n")),
            Some(s) if s.is_empty() => out.push_str(&format!("  {cluster:<11} no links\n")),
            Some(s) => {
                for (peer, st) in s {
                    out.push_str(&format!(
                        "  {cluster:<11} -> {peer:<11} {}\n",
                        link_line(st)
                    ));
                }
            }
        }
    }
    out
}

/// One link's state in a line: connected over what, RTT, imports, or why not.
pub fn link_line(st: &ClusterLinkStatus) -> String {
    let stale = st
        .stale_seconds
        .map(|s| format!(", stale {s}s"))
        .unwrap_or_default();
    if st.connected {
        format!(
            "{:<5} rtt {:>8}  {} imported{stale}",
            st.transport.as_deref().unwrap_or("?"),
            st.rtt_millis
                .map(|r| format!("{r:.2} ms"))
                .unwrap_or_else(|| "-".into()),
            st.imported_services.len()
        )
    } else {
        let why = st
            .conditions
            .iter()
            .find(|c| c.type_ == "Connected")
            .map(|c| format!("{}: {}", c.reason, c.message))
            .unwrap_or_else(|| "connecting".into());
        format!(
            "DOWN  {why}{stale}, {} imported",
            st.imported_services.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn rows_per_frontend_and_links_with_their_state() {
        let mut w = Window::default();
        for i in 0..20u64 {
            w.record(&super::super::traffic::Answer {
                at: Instant::now(),
                frontend: "eu-west",
                service: "reviews",
                idempotent: true,
                served_by: Some(if i < 18 { "eu-west" } else { "us-east" }.into()),
                latency: Duration::from_millis(i + 1),
                error: None,
                verified: Some(i != 0),
            });
        }
        let windows = BTreeMap::from([(("eu-west", "reviews"), w)]);
        let up = ClusterLinkStatus {
            connected: true,
            transport: Some("quic".into()),
            rtt_millis: Some(0.42),
            imported_services: vec!["reviews.shop".into()],
            ..Default::default()
        };
        let down = ClusterLinkStatus {
            stale_seconds: Some(7),
            ..Default::default()
        };
        let links = [
            (
                "eu-west",
                Some(BTreeMap::from([
                    ("us-east".to_string(), up),
                    ("eu-central".to_string(), down),
                ])),
            ),
            ("us-east", None),
        ];
        let t = render(
            Duration::from_secs(12),
            Duration::from_secs(1),
            &windows,
            &links,
        );
        assert!(t.contains("eu-west     reviews"), "{t}");
        assert!(t.contains("eu-west 18, us-east 2"), "{t}");
        assert!(t.contains("10.0 ms"), "p50 of 1..20 ms: {t}");
        assert!(t.contains("0  19/20\n"), "callers verified: {t}");
        assert!(
            t.contains("-> us-east     quic  rtt  0.42 ms  1 imported"),
            "{t}"
        );
        assert!(
            t.contains("-> eu-central  DOWN  connecting, stale 7s, 0 imported"),
            "{t}"
        );
        assert!(t.contains("us-east     control plane not answering"), "{t}");
    }
}
