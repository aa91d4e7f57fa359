//! `isthmus-wan`: two network namespaces joined by an emulated WAN link,
//! for trying gateways (or anything else) over delay, loss, a bandwidth
//! cap or a UDP black-hole by hand. Needs root. See the README.
//!
//!     isthmus-wan --name wan --rtt 50ms --loss 1 --rate 20mbit
//!
//! Then run programs in `wan-a` (10.77.0.1) and `wan-b` (10.77.0.2) with
//! `ip netns exec`, and type settings on stdin while they run (`loss 5`,
//! `udp block`, `stats`). Ctrl-C (or SIGTERM) removes the namespaces.

#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;
use isthmus_e2e::wan::{self, Direction, Impairment, Wan};
use tokio::io::AsyncBufReadExt;

#[derive(Parser)]
#[command(
    version,
    about = "A packet-level WAN emulator between two network namespaces"
)]
struct Args {
    /// Namespaces are <name>-a and <name>-b.
    #[arg(long, default_value = "wan")]
    name: String,
    /// Round-trip time added (half each way).
    #[arg(long, default_value = "0", value_parser = wan::parse_duration)]
    rtt: std::time::Duration,
    /// Uniform jitter, ± this, each way (packets keep their order).
    #[arg(long, default_value = "0", value_parser = wan::parse_duration)]
    jitter: std::time::Duration,
    /// Random loss in percent, each way.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Bandwidth cap each way, e.g. 20mbit (none by default).
    #[arg(long, value_parser = wan::parse_rate)]
    rate: Option<u64>,
    /// Drop-tail queue in front of the cap, e.g. 256k.
    #[arg(long, default_value = "1m", value_parser = wan::parse_size)]
    queue: u64,
    /// Drop all UDP (QUIC cannot get through; TCP can).
    #[arg(long)]
    blackhole_udp: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    anyhow::ensure!(
        (0.0..=100.0).contains(&a.loss),
        "--loss {} is not a percentage",
        a.loss
    );
    let imp = Impairment {
        delay: a.rtt / 2,
        jitter: a.jitter,
        loss: a.loss / 100.0,
        rate_bps: a.rate,
        queue_bytes: a.queue,
        blackhole_udp: a.blackhole_udp,
    };
    let w = Wan::new(&a.name, imp).context("setting up the emulated link")?;
    println!(
        "emulated link up: {} ({}) <-> {} ({})\n  {imp:?}\n\
         run programs with `ip netns exec {} ...` / `ip netns exec {} ...`;\n\
         type a setting to change it (rtt 50ms, jitter 2ms, loss 1, rate 20mbit|off, queue 256k, udp block|pass), \
         `stats`, or Ctrl-C to stop",
        w.a().name(),
        wan::ADDR_A,
        w.b().name(),
        wan::ADDR_B,
        w.a().name(),
        w.b().name(),
    );
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            l = lines.next_line(), if stdin_open => match l {
                Ok(Some(l)) if l.trim() == "stats" => print_stats(&w),
                Ok(Some(l)) if l.trim().is_empty() => {}
                Ok(Some(l)) => {
                    let mut imp = w.impairment(Direction::AtoB);
                    match wan::apply_command(&mut imp, &l) {
                        Ok(()) => {
                            w.set(imp);
                            println!("now {imp:?}");
                        }
                        Err(e) => println!("{e}"),
                    }
                }
                _ => stdin_open = false,
            },
        }
    }
    print_stats(&w);
    Ok(())
}

fn print_stats(w: &Wan) {
    println!("a -> b: {}", w.counts(Direction::AtoB));
    println!("b -> a: {}", w.counts(Direction::BtoA));
}
