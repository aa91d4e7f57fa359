//! `isthmus-sample`: the sample mesh's application (SCENARIOS.md) as a
//! process, for `isthmusctl demo` and for trying the mesh by hand. Answers
//! with its service, cluster and version.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "isthmus-sample", about)]
struct Args {
    /// HTTP (HTTP/1.1 + h2c) address.
    #[arg(long)]
    listen: SocketAddr,
    /// Also serve a TCP echo on this address.
    #[arg(long)]
    tcp_echo: Option<SocketAddr>,
    #[arg(long, default_value = "sample")]
    service: String,
    #[arg(long, default_value = "local")]
    cluster: String,
    #[arg(long, default_value = "v1")]
    version: String,
}

// Multi-threaded, sized by TOKIO_WORKER_THREADS (the benchmarks pin it to one).
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    // Before saying where it listens: a SIGTERM right after that line is
    // a clean stop, not the default action.
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    let app = isthmus_sample::SampleApp::new(&a.service, &a.cluster, &a.version);
    let http = isthmus_sample::serve(app, a.listen)
        .await
        .with_context(|| format!("listening on {}", a.listen))?;
    println!("listening on {} (http)", http.addr);
    let echo = match a.tcp_echo {
        Some(addr) => {
            let e = isthmus_sample::serve_tcp_echo(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            println!("listening on {} (tcp echo)", e.addr);
            Some(e)
        }
        None => None,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    http.stop().await;
    if let Some(e) = echo {
        e.stop().await;
    }
    Ok(())
}
