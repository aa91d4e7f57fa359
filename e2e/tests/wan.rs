//! The emulator on real packets: two namespaces, a TCP echo and UDP
//! datagrams across the link. Needs root; skipped without it unless
//! ISTHMUS_REQUIRE_NETNS=1 (CI), where it fails instead.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use isthmus_e2e::netns::Netns;
use isthmus_e2e::wan::{ADDR_A, ADDR_B, Direction, Impairment, Sites, Wan, site_addr};

fn lab(name: &str, imp: Impairment) -> Option<Wan> {
    if !isthmus_e2e::netns_available() {
        return None;
    }
    Some(Wan::new(&format!("{name}{}", std::process::id()), imp).expect("emulated link"))
}

/// A TCP echo server in B; returns its address.
fn echo_in_b(w: &Wan) -> SocketAddr {
    echo_in(w.b(), ADDR_B)
}

/// A TCP echo server on `ip` in `ns`; returns its address.
fn echo_in(ns: &Netns, ip: Ipv4Addr) -> SocketAddr {
    let l = ns
        .spawn("bind", move || TcpListener::bind((ip, 0)).unwrap())
        .unwrap()
        .join()
        .unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn the_link_adds_its_delay_and_black_holes_udp_only() {
    let Some(w) = lab("wt", Impairment::wan(Duration::from_millis(40), 0.0)) else {
        return;
    };
    let echo = echo_in_b(&w);
    let rtts: Vec<Duration> = w
        .a()
        .spawn("client", move || {
            let mut s = TcpStream::connect(echo).unwrap();
            s.set_nodelay(true).unwrap();
            (0..5)
                .map(|_| {
                    let t = Instant::now();
                    s.write_all(b"x").unwrap();
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).unwrap();
                    t.elapsed()
                })
                .collect()
        })
        .unwrap()
        .join()
        .unwrap();
    for r in &rtts {
        assert!(
            *r >= Duration::from_millis(40),
            "an echo took {r:?}, under the 40 ms RTT"
        );
    }
    let tcp = w.counts(Direction::AtoB).delivered;
    assert!(tcp >= 5, "TCP crossed: {:?}", w.counts(Direction::AtoB));

    // UDP: delivered while open, dropped while black-holed; TCP unaffected.
    let udp_b = w
        .b()
        .spawn("udp", || UdpSocket::bind((ADDR_B, 0)).unwrap())
        .unwrap()
        .join()
        .unwrap();
    udp_b
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let to = udp_b.local_addr().unwrap();
    let send_udp = |w: &Wan| {
        w.a()
            .spawn("udp-send", move || {
                let s = UdpSocket::bind((ADDR_A, 0)).unwrap();
                s.send_to(b"datagram", to).unwrap();
            })
            .unwrap()
            .join()
            .unwrap()
    };
    send_udp(&w);
    let mut b = [0u8; 64];
    assert_eq!(udp_b.recv(&mut b).unwrap(), 8, "UDP crosses an open link");
    w.set(Impairment {
        blackhole_udp: true,
        ..w.impairment(Direction::AtoB)
    });
    send_udp(&w);
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.counts(Direction::AtoB).black_holed == 0 {
        assert!(Instant::now() < deadline, "the datagram was never seen");
        std::thread::sleep(Duration::from_millis(10));
    }
    udp_b.set_nonblocking(true).unwrap();
    assert!(
        udp_b.recv(&mut b).is_err(),
        "a black-holed datagram arrived"
    );
    let ok = w
        .a()
        .spawn("tcp-again", move || {
            let mut s = TcpStream::connect(echo).unwrap();
            s.write_all(b"still").unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b).unwrap();
            b == *b"still"
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(ok, "TCP still crosses while UDP is black-holed");
}

#[test]
fn a_capped_lossy_link_paces_and_drops_yet_tcp_delivers_everything() {
    // 8 Mbit/s: 1 MiB needs at least ~1 s on the wire.
    let imp = Impairment {
        loss: 0.01,
        ..Impairment::default()
    }
    .capped(8_000_000, 64 * 1024);
    let Some(w) = lab("wc", imp) else { return };
    let echo = echo_in_b(&w);
    let (elapsed, ok) = w
        .a()
        .spawn("bulk", move || {
            let s = TcpStream::connect(echo).unwrap();
            let mut r = s.try_clone().unwrap();
            let t = Instant::now();
            let reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                r.read_to_end(&mut got).unwrap();
                got
            });
            let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
            let mut w = s;
            w.write_all(&data).unwrap();
            w.shutdown(std::net::Shutdown::Write).unwrap();
            let got = reader.join().unwrap();
            (t.elapsed(), got == data)
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(ok, "every byte came back, in order, despite the losses");
    assert!(
        elapsed >= Duration::from_millis(1000),
        "1 MiB crossed an 8 Mbit/s link in {elapsed:?}"
    );
    let c = w.counts(Direction::AtoB);
    assert!(c.lost > 0, "1 % loss dropped nothing: {c}");
    assert!(c.bytes >= 1 << 20, "{c}");
}

/// Three sites: each pair's link has its own delay (a-b 20 ms RTT, a-c
/// 80 ms, b-c 40 ms), and cutting one link (all lost) leaves the others.
#[test]
fn three_sites_each_pair_its_own_link() {
    if !isthmus_e2e::netns_available() {
        return;
    }
    let ms = Duration::from_millis;
    let rtt = |a: usize, b: usize| match (a.min(b), a.max(b)) {
        (0, 1) => ms(20),
        (0, 2) => ms(80),
        _ => ms(40),
    };
    let names: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|s| format!("w3{}-{s}", std::process::id()))
        .collect();
    let sites = Sites::new(&names, |f, t| Impairment::wan(rtt(f, t), 0.0)).unwrap();
    let echoes: Vec<SocketAddr> = (0..3).map(|i| echo_in(sites.ns(i), site_addr(i))).collect();
    // One round trip from site `from` to the echo of site `to`.
    let ping = |from: usize, to: usize| -> std::io::Result<Duration> {
        let echo = echoes[to];
        sites
            .ns(from)
            .spawn("client", move || {
                let mut s = TcpStream::connect_timeout(&echo, Duration::from_secs(1))?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                let t = Instant::now();
                s.write_all(b"x")?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b)?;
                Ok(t.elapsed())
            })
            .unwrap()
            .join()
            .unwrap()
    };
    for (from, to) in [(0, 1), (0, 2), (1, 2), (2, 0)] {
        let got = ping(from, to).unwrap();
        let want = rtt(from, to);
        assert!(
            got >= want && got < want + ms(30),
            "{from} -> {to}: {got:?}, the link's RTT is {want:?}"
        );
    }
    // Cut a <-> c: b still reaches both.
    let cut = Impairment {
        loss: 1.0,
        ..Impairment::default()
    };
    sites.set(0, 2, cut);
    sites.set(2, 0, cut);
    assert!(ping(0, 2).is_err(), "a reached c across the cut");
    assert!(sites.counts(0, 2).lost > 0);
    ping(1, 2).unwrap();
    ping(1, 0).unwrap();
    assert!(sites.counts(1, 2).delivered > 0 && sites.counts(2, 1).delivered > 0);
}
