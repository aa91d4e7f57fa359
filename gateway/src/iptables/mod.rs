//! Transparent capture: the iptables rules a pod needs so its traffic
//! passes through the sidecar (what Istio's init container installs).
//! `rules` is pure (tested line by line); `apply` feeds them to
//! iptables-restore.

use std::io::Write;
use std::process::{Command, Stdio};

#[derive(Debug, Clone)]
pub struct CaptureSettings {
    /// Port of the transparent outbound listener.
    pub outbound_port: u16,
    /// Port of the inbound listener.
    pub inbound_port: u16,
    /// Traffic from this uid is the proxy's own and is not captured.
    pub proxy_uid: Option<u32>,
    /// Traffic with this SO_MARK is the proxy's own and is not captured.
    pub proxy_mark: Option<u32>,
    /// Inbound ports to capture; empty: all except `exclude_inbound_ports`.
    pub include_inbound_ports: Vec<u16>,
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destinations (CIDRs) to capture; empty: all.
    pub include_outbound_cidrs: Vec<String>,
    pub exclude_outbound_cidrs: Vec<String>,
    pub exclude_outbound_ports: Vec<u16>,
    /// DNS capture: the pod's queries (UDP and TCP port 53, to any
    /// server) go to the sidecar's DNS proxy on this port; the proxy's own
    /// (by uid or mark) go out.
    pub dns_port: Option<u16>,
}

impl Default for CaptureSettings {
    fn default() -> Self {
        Self {
            outbound_port: 15001,
            inbound_port: 15006,
            proxy_uid: Some(1337),
            proxy_mark: None,
            include_inbound_ports: vec![],
            // The proxy's own ports: mesh transport, admin.
            exclude_inbound_ports: vec![15008, 15020, 15021],
            include_outbound_cidrs: vec![],
            exclude_outbound_cidrs: vec![],
            exclude_outbound_ports: vec![],
            dns_port: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error(
        "set proxy_uid or proxy_mark: without one the proxy's own traffic would loop back into itself"
    )]
    NoExemption,
    #[error("cannot run {0}: {1} (install iptables; the pod needs CAP_NET_ADMIN)")]
    Spawn(&'static str, std::io::Error),
    #[error("iptables-restore refused the rules: {0}")]
    Refused(String),
}

/// The nat table in iptables-restore format.
pub fn rules(s: &CaptureSettings) -> Result<String, IptablesError> {
    if s.proxy_uid.is_none() && s.proxy_mark.is_none() {
        return Err(IptablesError::NoExemption);
    }
    let mut r = vec![
        "*nat".to_string(),
        ":ISTHMUS_INBOUND - [0:0]".into(),
        ":ISTHMUS_IN_REDIRECT - [0:0]".into(),
        ":ISTHMUS_OUTPUT - [0:0]".into(),
        ":ISTHMUS_REDIRECT - [0:0]".into(),
        format!(
            "-A ISTHMUS_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
            s.inbound_port
        ),
        format!(
            "-A ISTHMUS_REDIRECT -p tcp -j REDIRECT --to-ports {}",
            s.outbound_port
        ),
        // Inbound.
        "-A PREROUTING -p tcp -j ISTHMUS_INBOUND".into(),
    ];
    if s.include_inbound_ports.is_empty() {
        r.push("-A ISTHMUS_INBOUND -p tcp --dport 22 -j RETURN".into());
        for p in &s.exclude_inbound_ports {
            r.push(format!("-A ISTHMUS_INBOUND -p tcp --dport {p} -j RETURN"));
        }
        r.push("-A ISTHMUS_INBOUND -p tcp -j ISTHMUS_IN_REDIRECT".into());
    } else {
        for p in &s.include_inbound_ports {
            r.push(format!(
                "-A ISTHMUS_INBOUND -p tcp --dport {p} -j ISTHMUS_IN_REDIRECT"
            ));
        }
    }
    // DNS, before the TCP capture: the proxy's own queries return.
    if let Some(port) = s.dns_port {
        r.insert(1, ":ISTHMUS_DNS - [0:0]".into());
        if let Some(mark) = s.proxy_mark {
            r.push(format!("-A ISTHMUS_DNS -m mark --mark {mark:#x} -j RETURN"));
        }
        if let Some(uid) = s.proxy_uid {
            r.push(format!(
                "-A ISTHMUS_DNS -m owner --uid-owner {uid} -j RETURN"
            ));
        }
        for proto in ["udp", "tcp"] {
            r.push(format!(
                "-A ISTHMUS_DNS -p {proto} -j REDIRECT --to-ports {port}"
            ));
        }
        r.push("-A OUTPUT -p udp --dport 53 -j ISTHMUS_DNS".into());
        r.push("-A OUTPUT -p tcp --dport 53 -j ISTHMUS_DNS".into());
    }
    // Outbound.
    r.push("-A OUTPUT -p tcp -j ISTHMUS_OUTPUT".into());
    if let Some(mark) = s.proxy_mark {
        r.push(format!(
            "-A ISTHMUS_OUTPUT -m mark --mark {mark:#x} -j RETURN"
        ));
    }
    if let Some(uid) = s.proxy_uid {
        // The proxy talking to its own app over loopback goes inbound.
        r.push(format!(
            "-A ISTHMUS_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --uid-owner {uid} -j ISTHMUS_IN_REDIRECT"
        ));
        r.push(format!(
            "-A ISTHMUS_OUTPUT -o lo -m owner ! --uid-owner {uid} -j RETURN"
        ));
        r.push(format!(
            "-A ISTHMUS_OUTPUT -m owner --uid-owner {uid} -j RETURN"
        ));
    }
    r.push("-A ISTHMUS_OUTPUT -d 127.0.0.1/32 -j RETURN".into());
    for p in &s.exclude_outbound_ports {
        r.push(format!("-A ISTHMUS_OUTPUT -p tcp --dport {p} -j RETURN"));
    }
    for c in &s.exclude_outbound_cidrs {
        r.push(format!("-A ISTHMUS_OUTPUT -d {c} -j RETURN"));
    }
    if s.include_outbound_cidrs.is_empty() {
        r.push("-A ISTHMUS_OUTPUT -j ISTHMUS_REDIRECT".into());
    } else {
        for c in &s.include_outbound_cidrs {
            r.push(format!("-A ISTHMUS_OUTPUT -d {c} -j ISTHMUS_REDIRECT"));
        }
    }
    r.push("COMMIT".into());
    let mut out = r.join("\n");
    out.push('\n');
    Ok(out)
}

/// Installs the rules with `iptables-restore --noflush` (other tables and
/// chains are left alone).
pub fn apply(s: &CaptureSettings) -> Result<(), IptablesError> {
    let text = rules(s)?;
    let mut child = Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| IptablesError::Spawn("iptables-restore", e))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())
        .map_err(|e| IptablesError::Spawn("iptables-restore", e))?;
    let out = child
        .wait_with_output()
        .map_err(|e| IptablesError::Spawn("iptables-restore", e))?;
    if !out.status.success() {
        return Err(IptablesError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_redirect_and_exempt_the_proxy_uid() {
        let r = rules(&CaptureSettings::default()).unwrap();
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(lines[0], "*nat");
        assert_eq!(*lines.last().unwrap(), "COMMIT");
        assert!(lines.contains(&"-A ISTHMUS_REDIRECT -p tcp -j REDIRECT --to-ports 15001"));
        assert!(lines.contains(&"-A ISTHMUS_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"));
        assert!(lines.contains(&"-A ISTHMUS_OUTPUT -m owner --uid-owner 1337 -j RETURN"));
        assert!(lines.contains(&"-A ISTHMUS_INBOUND -p tcp --dport 15020 -j RETURN"));
        // The exemption comes before the catch-all redirect.
        let exempt = lines
            .iter()
            .position(|l| l.contains("--uid-owner 1337 -j RETURN"))
            .unwrap();
        let redirect = lines
            .iter()
            .position(|l| *l == "-A ISTHMUS_OUTPUT -j ISTHMUS_REDIRECT")
            .unwrap();
        assert!(exempt < redirect);
    }

    #[test]
    fn dns_capture_sends_the_pods_queries_to_the_proxy_but_not_its_own() {
        let r = rules(&CaptureSettings {
            dns_port: Some(15053),
            ..Default::default()
        })
        .unwrap();
        let lines: Vec<&str> = r.lines().collect();
        let at = |l: &str| {
            lines
                .iter()
                .position(|x| *x == l)
                .unwrap_or_else(|| panic!("{l} missing:\n{r}"))
        };
        assert!(
            at(":ISTHMUS_DNS - [0:0]") < at("-A ISTHMUS_DNS -m owner --uid-owner 1337 -j RETURN")
        );
        let exempt = at("-A ISTHMUS_DNS -m owner --uid-owner 1337 -j RETURN");
        assert!(exempt < at("-A ISTHMUS_DNS -p udp -j REDIRECT --to-ports 15053"));
        assert!(exempt < at("-A ISTHMUS_DNS -p tcp -j REDIRECT --to-ports 15053"));
        // TCP 53 meets the DNS chain before the outbound capture.
        assert!(
            at("-A OUTPUT -p tcp --dport 53 -j ISTHMUS_DNS")
                < at("-A OUTPUT -p tcp -j ISTHMUS_OUTPUT")
        );
        at("-A OUTPUT -p udp --dport 53 -j ISTHMUS_DNS");
        // Without it: no DNS rules at all.
        assert!(!rules(&CaptureSettings::default()).unwrap().contains("DNS"));
    }

    #[test]
    fn mark_exemption_and_cidr_scoping() {
        let s = CaptureSettings {
            proxy_uid: None,
            proxy_mark: Some(0x539),
            include_outbound_cidrs: vec!["10.96.0.0/12".into()],
            include_inbound_ports: vec![8080],
            exclude_outbound_ports: vec![53],
            ..Default::default()
        };
        let r = rules(&s).unwrap();
        assert!(r.contains("-A ISTHMUS_OUTPUT -m mark --mark 0x539 -j RETURN\n"));
        assert!(r.contains("-A ISTHMUS_OUTPUT -d 10.96.0.0/12 -j ISTHMUS_REDIRECT\n"));
        assert!(!r.contains("-A ISTHMUS_OUTPUT -j ISTHMUS_REDIRECT"));
        assert!(r.contains("-A ISTHMUS_INBOUND -p tcp --dport 8080 -j ISTHMUS_IN_REDIRECT\n"));
        assert!(r.contains("-A ISTHMUS_OUTPUT -p tcp --dport 53 -j RETURN\n"));
        assert!(!r.contains("owner"));
    }

    #[test]
    fn refuses_rules_that_would_loop() {
        let s = CaptureSettings {
            proxy_uid: None,
            proxy_mark: None,
            ..Default::default()
        };
        assert!(matches!(rules(&s), Err(IptablesError::NoExemption)));
    }
}
