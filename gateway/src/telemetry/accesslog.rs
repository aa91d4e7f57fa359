//! The access log: one JSON object per line per request (or TCP
//! connection), written when the response completes.

use parking_lot::Mutex;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

#[derive(Debug, Clone, Serialize, Default)]
pub struct Entry {
    pub start_time: String,
    pub direction: &'static str,
    pub listener: String,
    pub protocol: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub response_code: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    /// Envoy-style flags: UF connect failure, UO overflow, UH no healthy
    /// upstream, UT timeout, UR/UC reset, RL rate limited, FI fault, NR no
    /// route, DC downstream closed, AD denied by an AuthorizationPolicy
    /// (403 / connection refused), UA unauthenticated (JWT, 401), MT
    /// plaintext refused in STRICT mode, "-" none.
    pub response_flags: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub duration_ms: f64,
    pub source_address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    pub attempts: u32,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// The mTLS peer's SPIFFE ID (inbound over the mesh transport).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_principal: Option<String>,
    /// The verified JWT principal (`iss/sub`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_principal: Option<String>,
    /// The AuthorizationPolicy rule that decided (`ns/name#rule`, or
    /// `default-deny`), when a policy applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authz: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// East-west: the cluster a stream came from (its CONNECT header).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_cluster: Option<String>,
    /// East-west: the peer gateway that carried it (its verified ID).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_gateway: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Where access log lines go.
pub enum Sink {
    Off,
    Stdout,
    File(Mutex<std::fs::File>),
    /// For tests: entries as values.
    Channel(tokio::sync::mpsc::UnboundedSender<Entry>),
}

impl Sink {
    pub fn from_arg(arg: &str) -> std::io::Result<Self> {
        Ok(match arg {
            "off" | "" => Self::Off,
            "stdout" | "-" => Self::Stdout,
            path => Self::File(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )),
        })
    }

    pub fn enabled(&self) -> bool {
        !matches!(self, Self::Off)
    }

    pub fn write(&self, e: Entry) {
        match self {
            Self::Off => {}
            Self::Channel(tx) => {
                let _ = tx.send(e);
            }
            Self::Stdout => {
                if let Ok(mut line) = serde_json::to_vec(&e) {
                    line.push(b'\n');
                    let _ = std::io::stdout().lock().write_all(&line);
                }
            }
            Self::File(f) => {
                if let Ok(mut line) = serde_json::to_vec(&e) {
                    line.push(b'\n');
                    let _ = f.lock().write_all(&line);
                }
            }
        }
    }
}

/// RFC 3339 UTC timestamp with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_316_242_123);
        assert_eq!(rfc3339(t), "2026-11-22T02:57:22.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn entries_are_single_json_lines() {
        let e = Entry {
            direction: "outbound",
            response_code: 200,
            response_flags: "-".into(),
            ..Default::default()
        };
        let s = serde_json::to_string(&e).unwrap();
        assert!(!s.contains('\n'));
        assert!(s.contains("\"response_code\":200"));
        assert!(!s.contains("grpc_status"), "absent fields are omitted");
    }
}
