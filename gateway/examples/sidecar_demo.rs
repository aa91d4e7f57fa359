//! The sidecar demo: starts the sample upstreams the example config points
//! at (catalog, its shadow, reviews v1/v2, inventory, a TCP echo "db" and
//! the frontend app itself), then a sidecar with `examples/sidecar.yaml`,
//! and prints where to send requests. Ctrl-C drains and stops.
//!
//!     cargo run --release -p isthmus-gateway --example sidecar-demo

use std::path::PathBuf;
use std::time::Duration;

use isthmus_gateway::pool::SocketOptions;
use isthmus_gateway::sidecar::{ConfigSource, Options, Sidecar};
use isthmus_gateway::telemetry::accesslog::Sink;
use isthmus_sample::{self as sample, SampleApp};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("ISTHMUS_LOG").unwrap_or_else(|_| "info".into()),
        ))
        .with_writer(std::io::stderr)
        .init();
    let config = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/sidecar.yaml"));
    let apps = [
        ("catalog", "eu-west", "v1", 18101),
        ("catalog", "eu-central", "v1", 18102),
        ("catalog-shadow", "eu-west", "v1", 18103),
        ("reviews", "eu-west", "v1", 18111),
        ("reviews", "us-east", "v2", 18112),
        ("inventory", "eu-central", "v1", 18121),
        ("inventory", "eu-central", "v1", 18122),
        ("frontend", "eu-west", "v1", 18080),
    ];
    let mut running = Vec::new();
    for (svc, cluster, version, port) in apps {
        let app = SampleApp::new(svc, cluster, version);
        running.push(sample::serve(app, ([127, 0, 0, 1], port).into()).await?);
    }
    running.push(sample::serve_tcp_echo(([127, 0, 0, 1], 18131).into()).await?);

    let sidecar = Sidecar::start(Options {
        config: ConfigSource::File {
            path: config.clone(),
            poll: Duration::from_millis(500),
        },
        admin: ([127, 0, 0, 1], 15020).into(),
        access_log: Sink::Stdout,
        socket: SocketOptions::default(),
        mesh: None,
        prebound: Vec::new(),
        peer_liveness: true,
    })
    .await?;
    let out = sidecar
        .listener_addr("outbound-http")
        .expect("example config has outbound-http");
    let admin = sidecar.admin_addr();
    eprintln!(
        "\nIsthmus sidecar running with {cfg} (edit it: changes apply live).\n\
         Send requests:\n  \
         curl -H 'Host: catalog' http://{out}/api/items           # local zone first\n  \
         curl -H 'Host: reviews' http://{out}/                    # 90% v1, 10% v2\n  \
         curl -H 'Host: reviews' -H 'x-canary: always' http://{out}/\n  \
         curl --http2-prior-knowledge -H 'Host: catalog' http://{out}/\n  \
         echo hello | nc -q1 127.0.0.1 15432                       # TCP to db\n  \
         curl http://127.0.0.1:15006/                              # inbound to frontend\n\
         Admin: curl http://{admin}/metrics | /config_dump | /readyz\n\
         Access log (JSON) on stdout. Ctrl-C to stop.\n",
        cfg = config.display()
    );
    tokio::signal::ctrl_c().await?;
    sidecar.shutdown(Duration::from_secs(5)).await;
    for r in running {
        r.stop().await;
    }
    Ok(())
}
