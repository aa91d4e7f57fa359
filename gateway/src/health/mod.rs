//! Health at the source: the sidecar checks its own app, per port, and
//! tells the control plane which ports fail (on the discovery stream), so
//! a dead app leaves its Services' endpoints, and its cluster's exports,
//! within a second instead of being found by callers' failed requests.
//!
//! A check is a TCP connect (the default for every registered port), an
//! HTTP/1.1 GET on a path (2xx and 3xx pass, as Kubernetes' httpGet), or a
//! gRPC `grpc.health.v1.Health/Check` (SERVING passes). Kubernetes'
//! readiness defaults (every 10 s, 1 s timeout, 3 failures) tightened to a
//! detection under a second: every 250 ms, 200 ms timeout, unhealthy after
//! 3 failures in a row, healthy again after 1 success; a port's first
//! result counts at once (a sidecar that starts beside a dead app does
//! not call it healthy for three rounds). `PortHealth` is the pure state
//! machine; `run` does the probing.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::sync::watch;

/// How a port is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Tcp,
    /// GET on this path (starting with `/`).
    Http {
        path: String,
    },
    /// grpc.health.v1 Check for this service ("" = the server as a whole).
    Grpc {
        service: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub port: u16,
    pub probe: Probe,
}

/// What to check: the app's address as the sidecar reaches it, the
/// checks, their timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub app: IpAddr,
    pub checks: Vec<Check>,
    pub settings: Settings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub interval: Duration,
    pub timeout: Duration,
    /// Failures in a row that make a healthy port unhealthy.
    pub unhealthy_after: u32,
    /// Successes in a row that make an unhealthy port healthy.
    pub healthy_after: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(250),
            timeout: Duration::from_millis(200),
            unhealthy_after: 3,
            healthy_after: 1,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HealthError {
    #[error(
        "--health-check {0:?}: write PORT[=tcp|http:/PATH|grpc[:SERVICE]], e.g. 8080=http:/healthz"
    )]
    Syntax(String),
    #[error("health check settings: {0}")]
    Settings(String),
    #[error(
        "--app-probes: {0} (a JSON object of \"container/probe\": \"PORT=tcp|http:/PATH|grpc[:SERVICE]\")"
    )]
    AppProbes(String),
}

impl Check {
    /// `8080`, `8080=tcp`, `8080=http:/healthz`, `9090=grpc`,
    /// `9090=grpc:shop.Catalog`.
    pub fn parse(text: &str) -> Result<Self, HealthError> {
        let bad = || HealthError::Syntax(text.to_string());
        let (port, how) = text.split_once('=').unwrap_or((text, "tcp"));
        let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
        let probe = match how.split_once(':') {
            None if how == "tcp" => Probe::Tcp,
            None if how == "grpc" => Probe::Grpc {
                service: String::new(),
            },
            Some(("http", path)) if path.starts_with('/') && path.parse::<http::Uri>().is_ok() => {
                Probe::Http {
                    path: path.to_string(),
                }
            }
            Some(("grpc", service)) if !service.is_empty() => Probe::Grpc {
                service: service.to_string(),
            },
            _ => return Err(bad()),
        };
        Ok(Self { port, probe })
    }
}

impl Settings {
    pub fn validate(&self) -> Result<(), HealthError> {
        if self.interval.is_zero() || self.timeout.is_zero() {
            return Err(HealthError::Settings(
                "interval and timeout must be above zero: give --health-interval and --health-timeout a duration such as 250ms".into(),
            ));
        }
        if self.timeout > self.interval {
            return Err(HealthError::Settings(format!(
                "timeout {:?} is longer than the interval {:?}: checks would overlap; make --health-timeout at most --health-interval",
                self.timeout, self.interval
            )));
        }
        if self.unhealthy_after == 0 || self.healthy_after == 0 {
            return Err(HealthError::Settings(
                "thresholds start at 1: give --health-failures and --health-successes 1 or more"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// One port's health: results in a row against the thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortHealth {
    /// None until the first result.
    healthy: Option<bool>,
    /// Results in a row that disagree with `healthy`.
    streak: u32,
}

impl PortHealth {
    /// Unknown counts as healthy (what the port was registered as).
    pub fn healthy(&self) -> bool {
        self.healthy.unwrap_or(true)
    }

    /// Takes one result; true if the port's health changed.
    pub fn observe(&mut self, ok: bool, s: &Settings) -> bool {
        let Some(was) = self.healthy else {
            self.healthy = Some(ok);
            return !ok;
        };
        if ok == was {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        let needed = if ok {
            s.healthy_after
        } else {
            s.unhealthy_after
        };
        if self.streak >= needed {
            self.healthy = Some(ok);
            self.streak = 0;
            return true;
        }
        false
    }
}

/// Checks `checks` on `app` every interval until the receiver side is
/// gone; `tx` holds the ports that fail.
pub async fn run(app: IpAddr, checks: Vec<Check>, s: Settings, tx: watch::Sender<BTreeSet<u16>>) {
    let mut states = vec![PortHealth::default(); checks.len()];
    let mut tick = tokio::time::interval(s.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = tick.tick() => {}
        }
        // Every port at once, each within the timeout.
        let mut probes = tokio::task::JoinSet::new();
        for (i, c) in checks.iter().enumerate() {
            let (addr, p) = (SocketAddr::new(app, c.port), c.probe.clone());
            probes.spawn(async move {
                let r = tokio::time::timeout(s.timeout, probe(addr, &p))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer in {:?}", s.timeout)));
                (i, r)
            });
        }
        let mut results = vec![Err(String::from("not probed")); checks.len()];
        while let Some(Ok((i, r))) = probes.join_next().await {
            results[i] = r;
        }
        let mut changed = false;
        for ((check, state), result) in checks.iter().zip(&mut states).zip(results) {
            if state.observe(result.is_ok(), &s) {
                changed = true;
                match &result {
                    Ok(()) => tracing::info!(port = check.port, "app port healthy again"),
                    Err(e) => tracing::warn!(port = check.port, "app port unhealthy: {e}"),
                }
            }
        }
        if changed {
            let failing: BTreeSet<u16> = checks
                .iter()
                .zip(&states)
                .filter(|(_, st)| !st.healthy())
                .map(|(c, _)| c.port)
                .collect();
            tx.send_replace(failing);
        }
    }
}

/// The app's probes the kubelet sends to the admin port instead
/// (`/app-health/<container>/<probe>`, rewritten by the injector): each
/// key's check, run against the app when asked. With capture and STRICT
/// mTLS the kubelet's own plaintext probes could not reach the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppProbes {
    pub app: IpAddr,
    pub checks: std::collections::BTreeMap<String, Check>,
}

impl AppProbes {
    /// `{"catalog/readyz": "8080=http:/healthz", ...}` (`--app-probes`).
    pub fn parse(app: IpAddr, json: &str) -> Result<Self, HealthError> {
        let table: std::collections::BTreeMap<String, String> =
            serde_json::from_str(json).map_err(|e| HealthError::AppProbes(e.to_string()))?;
        let mut checks = std::collections::BTreeMap::new();
        for (key, text) in table {
            let check = Check::parse(&text)
                .map_err(|_| HealthError::AppProbes(format!("{key}: {text:?} is not a check")))?;
            checks.insert(key, check);
        }
        Ok(Self { app, checks })
    }

    /// Runs the probe `key` once: Ok, or why it failed (None: no such
    /// probe).
    pub async fn run(&self, key: &str, timeout: Duration) -> Option<Result<(), String>> {
        let check = self.checks.get(key)?;
        let addr = SocketAddr::new(self.app, check.port);
        Some(
            match tokio::time::timeout(timeout, probe(addr, &check.probe)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer from {addr} in {timeout:?}")),
            },
        )
    }
}

/// One probe of `addr`.
async fn probe(addr: SocketAddr, probe: &Probe) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    match probe {
        Probe::Tcp => Ok(()),
        Probe::Http { path } => http_get(tcp, addr, path).await,
        Probe::Grpc { service } => grpc_check(tcp, service).await,
    }
}

async fn http_get(tcp: tokio::net::TcpStream, addr: SocketAddr, path: &str) -> Result<(), String> {
    use http_body_util::Empty;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "isthmus-health")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let result = sender.send_request(req).await;
    driver.abort();
    let status = result.map_err(|e| format!("GET {path}: {e}"))?.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("GET {path}: {status}"))
    }
}

async fn grpc_check(tcp: tokio::net::TcpStream, service: &str) -> Result<(), String> {
    use isthmus_api::grpc_health::v1::health_check_response::ServingStatus;
    use isthmus_api::grpc_health::v1::{HealthCheckRequest, health_client::HealthClient};
    let (sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let svc = GrpcOverH2(sender);
    let origin: http::Uri = "http://app".parse().expect("a valid URI");
    let mut client = HealthClient::with_origin(svc, origin);
    let result = client
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await;
    driver.abort();
    let status = result
        .map_err(|s| format!("grpc.health.v1 Check: {}", s.message()))?
        .into_inner()
        .status();
    if status == ServingStatus::Serving {
        Ok(())
    } else {
        Err(format!("grpc.health.v1 Check: {}", status.as_str_name()))
    }
}

/// tonic's generated client over one hyper HTTP/2 connection.
#[derive(Clone)]
struct GrpcOverH2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower_service::Service<http::Request<tonic::body::Body>> for GrpcOverH2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

#[cfg(test)]
mod tests;
