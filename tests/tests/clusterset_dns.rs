//! Imported services reached by name from an unmodified client, in
//! network namespaces with real capture. A "node" namespace holds two
//! linked clusters (eu-west, eu-central: control planes, east-west
//! gateways over QUIC, eu-central's catalog and TCP echo behind their
//! sidecars) and a stand-in for the cluster's DNS; a "pod" namespace of
//! eu-west runs the sidecar as the injector does (uid 1337, its config and
//! identity from eu-west's control plane, `--dns 127.0.0.1:15053`) under
//! the injector's own capture rules, DNS capture included, and a
//! resolv.conf as a pod has.
//!
//! In the pod, curl and Python (getaddrinfo, then a plain connection)
//! resolve `catalog.shop.svc.clusterset.local`, `catalog-eu-central.shop`
//! and the short `catalog-eu-central`, connect to the ClusterSet IP, and
//! are served by eu-central's catalog, which sees the pod's SPIFFE
//! identity (mTLS from the pod's sidecar to eu-central's); a TCP service
//! likewise. An unknown clusterset name is NXDOMAIN, answered in the pod;
//! other names reach the cluster's DNS through the sidecar. eu-central's
//! headless `db` (two pods, a StatefulSet's as far as names go): its
//! clusterset name resolves to both pods' addresses, and each pod's name,
//! `db-<n>.eu-central.db.shop.svc.clusterset.local`, reaches that pod.
//!
//! Needs root, `ip`, `iptables-restore`, `curl`, `setpriv`, `python3`.
//! Skipped without them, unless ISTHMUS_REQUIRE_NETNS=1 (CI).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record};
use isthmus_api::model;
use isthmus_e2e::netns::Netns;
use isthmus_testkit::{Started, eventually};
use isthmus_tests::cluster::{Cluster, link};
use isthmus_tests::mesh::{MeshSidecar, MeshedApp};

/// eu-central's exports: the catalog (HTTP) and an echo (opaque TCP).
const SHOP_CENTRAL: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: shop}
spec: {selector: {app: catalog}, ports: [{name: http, port: 80, targetPort: http}]}
---
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceExport
metadata: {name: catalog, namespace: shop}
---
apiVersion: v1
kind: Service
metadata: {name: ledger, namespace: shop}
spec: {selector: {app: ledger}, ports: [{name: tcp, port: 9000, targetPort: tcp}]}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {name: ledger, namespace: shop}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: None, selector: {app: db}, ports: [{name: tcp, port: 5432, targetPort: tcp}]}
---
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceExport
metadata: {name: db, namespace: shop}
"#;

/// The cluster's DNS, as far as the pod is concerned: `www.example.test`
/// is 192.0.2.7, every other name does not exist. Counts what it is asked.
async fn cluster_dns(at: SocketAddr) -> Arc<AtomicU64> {
    let asked = Arc::new(AtomicU64::new(0));
    let socket = tokio::net::UdpSocket::bind(at).await.unwrap();
    let count = asked.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            count.fetch_add(1, Ordering::SeqCst);
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = Message::response(q.metadata.id, q.metadata.op_code);
            r.metadata.recursion_desired = q.metadata.recursion_desired;
            r.add_queries(q.queries.clone());
            let name = q.queries[0].name.to_ascii();
            if name == "www.example.test." && q.queries[0].query_type.is_ip_addr() {
                if q.queries[0].query_type == hickory_proto::rr::RecordType::A {
                    r.add_answer(Record::from_rdata(
                        q.queries[0].name.clone(),
                        60,
                        RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
                    ));
                }
            } else {
                r.metadata.response_code = ResponseCode::NXDomain;
            }
            let _ = socket.send_to(&r.to_vec().unwrap(), from).await;
        }
    });
    asked
}

/// What `cmd` printed, and whether it succeeded (on a runtime worker:
/// the clusters' tasks move to the others meanwhile).
fn run(mut cmd: std::process::Command) -> (bool, String) {
    let out = tokio::task::block_in_place(|| cmd.stderr(Stdio::piped()).output().unwrap());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A DNS query for `name` (type A) sent to `server` from the pod, as any
/// program would send it (and so captured), over UDP or (`tcp`) TCP: the
/// reply's rcode and its number of answers.
const RAW_QUERY: &str = r#"
import socket, struct, sys
name, server = sys.argv[1], sys.argv[2]
q = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0)
q += b''.join(bytes([len(l)]) + l.encode() for l in name.split('.')) + b'\0'
q += struct.pack('>HH', 1, 1)
if len(sys.argv) > 3 and sys.argv[3] == 'tcp':
    s = socket.create_connection((server, 53), timeout=3)
    s.sendall(struct.pack('>H', len(q)) + q)
    r = b''
    while len(r) < 2 or len(r) < 2 + struct.unpack('>H', r[:2])[0]:
        r += s.recv(4096)
    r = r[2:]
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(q, (server, 53))
    r = s.recv(4096)
print(r[3] & 0x0f, struct.unpack('>H', r[6:8])[0])
"#;

/// getaddrinfo for `name port`, then a plain connection to what it gave:
/// with `http`, a GET; prints the address, then what the server said
/// before it closed (with `http`, the body).
const GETADDRINFO_READ: &str = r#"
import socket, sys
name, port = sys.argv[1], int(sys.argv[2])
http = len(sys.argv) > 3 and sys.argv[3] == 'http'
addr = socket.getaddrinfo(name, port, socket.AF_INET, socket.SOCK_STREAM)[0][4]
s = socket.create_connection(addr, timeout=5)
if http:
    s.sendall(b'GET /items HTTP/1.1\r\nHost: ' + name.encode() + b'\r\nConnection: close\r\n\r\n')
out = b''
while True:
    b = s.recv(65536)
    if not b:
        break
    out += b
print(addr[0])
print((out.split(b'\r\n\r\n', 1)[1] if http else out).decode())
"#;

/// getaddrinfo, then bytes through an opaque TCP connection.
const GETADDRINFO_TCP: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], 9000), timeout=5)
s.sendall(b'through the mesh')
got = b''
while len(got) < 16:
    b = s.recv(64)
    if not b:
        break
    got += b
print(got.decode())
"#;

#[test]
fn a_pod_reaches_imported_services_by_name_through_capture() {
    if !isthmus_tests::pod::can_run(&["curl", "setpriv", "python3"]) {
        return;
    }
    let id = std::process::id();
    let pod = Netns::create(&format!("isth{id}dpod")).unwrap();
    let node = Netns::create(&format!("isth{id}dnode")).unwrap();
    let net = 220 + (id % 10) as u8;
    let node_ip: IpAddr = format!("10.{net}.2.2").parse().unwrap();
    pod.veth(
        &format!("dp{id}"),
        &format!("10.{net}.2.1/30"),
        &node,
        &format!("dn{id}"),
        &format!("{node_ip}/30"),
    )
    .unwrap();
    pod.ip(&["route", "add", "default", "via", &node_ip.to_string()])
        .unwrap();
    // The pod's resolv.conf, as the kubelet writes it (`ip netns exec`
    // mounts /etc/netns/<ns>/resolv.conf over /etc/resolv.conf).
    let etc = std::path::PathBuf::from("/etc/netns").join(pod.name());
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("resolv.conf"),
        format!(
            "search shop.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver {node_ip}\noptions ndots:5\n"
        ),
    )
    .unwrap();
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _etc = Cleanup(etc);

    let pod_name = pod.name().to_string();
    node.spawn("clusters", move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(in_node(pod_name, node_ip))
    })
    .unwrap()
    .join()
    .unwrap();
}

/// The clusters (in the node namespace, where this runs) and the pod.
async fn in_node(pod: String, node_ip: IpAddr) {
    let pod = Pod(pod);
    let asked = cluster_dns(SocketAddr::new(node_ip, 53)).await;
    let mut west = Cluster::new_at("dns", "eu-west", node_ip);
    let mut central = Cluster::new("dns", "eu-central");
    for c in [&mut west, &mut central] {
        c.start_control_plane();
        c.start_gateway().await;
    }
    central.write("shop.yaml", SHOP_CENTRAL);
    link(&west, &central, Duration::from_secs(600), "5m");
    link(&central, &west, Duration::from_secs(600), "5m");
    let (catalog, _, meshed) = central.start_meshed_catalog().await;
    let echo = isthmus_sample::serve_tcp_echo("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let ledger = start_meshed_tcp(&central, "ledger", "ledger-0", echo.addr).await;
    // The headless db's pods, each on an address of its own, saying who
    // they are.
    let mut pods = Vec::new();
    for (n, ip) in [(0, "127.0.0.2"), (1, "127.0.0.3")] {
        let name = format!("db-{n}");
        let app = whoami(SocketAddr::new(ip.parse().unwrap(), 0), &name).await;
        pods.push(start_meshed_tcp(&central, "db", &name, app).await);
    }

    // The pod's sidecar as injected: its capture rules and environment.
    let init = isthmus_tests::pod::injected("eu-west")
        .spec
        .unwrap()
        .init_containers
        .unwrap();
    let iptables_args = init[0].args.clone().unwrap();
    let dns_env =
        isthmus_tests::pod::env(&init[1], "ISTHMUS_DNS").expect("the injector turns DNS on");
    assert_eq!(dns_env, "127.0.0.1:15053");
    let dir = isthmus_testkit::temp_dir("clusterset-dns-pod");
    let roots = dir.join("ca-root.pem");
    std::fs::copy(west.dir.join("ca/root-cert.pem"), &roots).unwrap();
    for (p, mode) in [(&dir, 0o755), (&roots, 0o644)] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    let token =
        isthmus_federation::identity::token::TokenKey::load_or_create(&west.dir, &west.td())
            .unwrap()
            .issue(
                "shop",
                "frontend",
                SystemTime::now(),
                Duration::from_secs(600),
            );
    let gateway = isthmus_testkit::workspace_bin("isthmus-gateway");
    let mut sidecar = pod.command("setpriv");
    sidecar
        .args(["--reuid=1337", "--regid=1337", "--clear-groups"])
        .arg(&gateway)
        .args(["sidecar", "--control-plane", &west.discovery.to_string()])
        .args(["--ca-roots", roots.to_str().unwrap()])
        .args(["--name", "frontend-0", "--namespace", "shop"])
        .args(["--service-account", "frontend", "--cluster", "eu-west"])
        .args(["--admin", "127.0.0.1:15020", "--access-log", "off"])
        .env("ISTHMUS_CA_TOKEN", token)
        .env("ISTHMUS_DNS", &dns_env)
        .stdout(Stdio::null());
    let sidecar = tokio::task::block_in_place(|| Started::spawn(sidecar));
    assert_eq!(sidecar.dns, Some("127.0.0.1:15053".parse().unwrap()));
    let (ok, out) = run({
        let mut c = pod.command(gateway.to_str().unwrap());
        c.args(&iptables_args);
        c
    });
    assert!(ok, "{out}");

    // Names → ClusterSet IPs → eu-central's catalog, the pod's identity
    // verified there.
    let mut vips = Vec::new();
    for name in [
        "catalog.shop.svc.clusterset.local",
        "catalog-eu-central.shop",
    ] {
        let west = &west;
        let what = format!("{name} has a ClusterSet IP");
        vips.push(
            eventually(&what, move || async move {
                west.service(name)?.vips.first().cloned()
            })
            .await,
        );
    }
    let [clusterset_vip, per_cluster_vip] = [vips[0].clone(), vips[1].clone()];
    assert_ne!(clusterset_vip, per_cluster_vip);
    for name in [
        "catalog.shop.svc.clusterset.local",
        "catalog-eu-central.shop",
        "catalog-eu-central",
    ] {
        let body = until(&format!("curl http://{name}/items from the pod"), || {
            let (ok, out) = run(pod.curl(&format!("http://{name}/items")));
            if ok && out.contains("\"cluster\"") {
                Ok(out)
            } else {
                Err(out)
            }
        })
        .await;
        let j: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(j["cluster"], "eu-central", "{name}: {body}");
        assert_eq!(
            j["caller"], "spiffe://eu-west.isthmus.local/ns/shop/sa/frontend",
            "{name}: {body}"
        );
    }
    let (ok, out) = run(pod.python(
        GETADDRINFO_READ,
        &["catalog.shop.svc.clusterset.local", "80", "http"],
    ));
    assert!(ok, "{out}");
    let (addr, body) = out.split_once('\n').unwrap();
    assert_eq!(addr, clusterset_vip, "getaddrinfo gave the ClusterSet IP");
    assert!(body.contains("\"cluster\":\"eu-central\""), "{body}");

    // Opaque TCP, by name, likewise.
    let (ok, out) = run(pod.python(GETADDRINFO_TCP, &["ledger-eu-central.shop"]));
    assert!(ok && out.trim() == "through the mesh", "{out}");
    let (ok, out) = run(pod.python(GETADDRINFO_TCP, &["ledger.shop.svc.clusterset.local"]));
    assert!(ok && out.trim() == "through the mesh", "{out}");

    // A headless service: its clusterset name is every pod's address, and
    // each pod's name reaches that pod.
    let mut pod_vips = Vec::new();
    for n in 0..2 {
        let west = &west;
        let name = format!("db-{n}.eu-central.db.shop.svc.clusterset.local");
        let what = format!("{name} has a ClusterSet IP");
        pod_vips.push(
            eventually(&what, move || {
                let name = name.clone();
                async move { west.service(&name)?.vips.first().cloned() }
            })
            .await,
        );
    }
    let all = until("the headless set resolves to both pods", || {
        let (ok, out) = run({
            let mut c = pod.command("getent");
            c.args(["ahostsv4", "db.shop.svc.clusterset.local"]);
            c
        });
        if ok && pod_vips.iter().all(|v| out.contains(v.as_str())) {
            Ok(out)
        } else {
            Err(out)
        }
    })
    .await;
    assert!(!all.contains(&clusterset_vip), "{all}");
    for (n, vip) in pod_vips.iter().enumerate() {
        let name = format!("db-{n}.eu-central.db.shop.svc.clusterset.local");
        let (ok, out) = run(pod.python(GETADDRINFO_READ, &[&name, "5432"]));
        assert!(ok, "{name}: {out}");
        let (addr, said) = out.split_once('\n').unwrap();
        assert_eq!(addr, vip, "{name}");
        assert_eq!(said.trim(), format!("db-{n}"), "{name}");
    }

    // Names in the clusterset zone nobody exports: NXDOMAIN from the pod's
    // sidecar (the cluster's DNS is not asked); other names are forwarded.
    let before = asked.load(Ordering::SeqCst);
    let server = node_ip.to_string();
    for ghost in [
        "ghost.shop.svc.clusterset.local",
        "db-7.eu-central.db.shop.svc.clusterset.local",
    ] {
        let (ok, out) = run(pod.python(RAW_QUERY, &[ghost, &server]));
        assert!(ok, "{out}");
        assert_eq!(out.trim(), "3 0", "{ghost}: NXDOMAIN, no answer");
    }
    let (ok, out) = run(pod.python(
        RAW_QUERY,
        &["catalog-eu-central.shop.svc.cluster.local", &server],
    ));
    assert_eq!((ok, out.trim()), (true, "0 1"), "{out}");
    let (ok, out) = run(pod.python(
        RAW_QUERY,
        &["catalog.shop.svc.clusterset.local", &server, "tcp"],
    ));
    assert_eq!((ok, out.trim()), (true, "0 1"), "over TCP: {out}");
    assert_eq!(asked.load(Ordering::SeqCst), before, "answered in the pod");
    let (ok, out) = run(pod.python(RAW_QUERY, &["www.example.test", &server]));
    assert_eq!((ok, out.trim()), (true, "0 1"), "{out}");
    assert_eq!(asked.load(Ordering::SeqCst), before + 1, "forwarded once");
    let (ok, out) = run(pod.python(RAW_QUERY, &["nothing.example.test", &server]));
    assert_eq!((ok, out.trim()), (true, "3 0"), "{out}");
    let (ok, out) = run({
        let mut c = pod.command("getent");
        c.args(["ahostsv4", "www.example.test"]);
        c
    });
    assert!(ok && out.contains("192.0.2.7"), "{out}");

    // The sidecar counts what became of the queries.
    let (ok, metrics) = run(pod.curl("http://127.0.0.1:15020/metrics"));
    assert!(ok, "{metrics}");
    for result in ["answered", "nxdomain", "forwarded"] {
        let line = format!("isthmus_dns_queries_total{{result=\"{result}\"}}");
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }

    drop(sidecar);
    catalog.shutdown(Duration::from_millis(200)).await;
    ledger.shutdown(Duration::from_millis(200)).await;
    for p in pods {
        p.shutdown(Duration::from_millis(200)).await;
    }
    meshed.running.stop().await;
    echo.stop().await;
    for c in [&mut west, &mut central] {
        c.stop.cancel();
        c.stop_control_plane().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TCP app of eu-central at `app` behind a sidecar registering it as
/// workload `name` of service account `sa` (labelled `app: <sa>`), on the
/// app's address.
async fn start_meshed_tcp(
    c: &Cluster,
    sa: &str,
    name: &str,
    app: SocketAddr,
) -> isthmus_gateway::sidecar::Sidecar {
    use isthmus_api::discovery::v1::{Workload, WorkloadPort};
    let tunnel = std::net::TcpListener::bind(SocketAddr::new(app.ip(), 0)).unwrap();
    let tunnel_port = tunnel.local_addr().unwrap().port();
    let inbound = model::Inbound {
        app_address: app.ip().to_string(),
        ports: vec![model::InboundPort {
            port: app.port().into(),
            protocol: model::Protocol::Tcp as i32,
        }],
    };
    let td = c.td();
    let (sidecar, _) = MeshSidecar {
        discovery: c.discovery,
        dir: &c.dir,
        trust_domain: &td,
        cluster: c.name,
        namespace: "shop",
        service_account: sa,
        labels: &[("app", sa)],
        name: Some(name),
        listeners: vec![MeshedApp::tunnel_listener_of(tunnel_port, &inbound)],
        workload: Some(Workload {
            address: app.ip().to_string(),
            ports: vec![WorkloadPort {
                name: "tcp".into(),
                port: app.port().into(),
            }],
            tunnel_port: tunnel_port.into(),
        }),
        prebound: vec![tunnel],
        health: None,
        peer_liveness: c.peer_liveness,
    }
    .start(&c.stop)
    .await;
    sidecar
}

/// A TCP server at `at` that says `name` to whoever connects, then closes.
async fn whoami(at: SocketAddr, name: &str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(at).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let name = name.to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            use tokio::io::AsyncWriteExt;
            let _ = s.write_all(name.as_bytes()).await;
            let _ = s.shutdown().await;
        }
    });
    addr
}

/// Runs programs in the pod namespace.
struct Pod(String);

impl Pod {
    fn command(&self, program: &str) -> std::process::Command {
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }

    fn curl(&self, url: &str) -> std::process::Command {
        let mut c = self.command("curl");
        c.args(["-s", "-S", "-m", "5", url]);
        c
    }

    fn python(&self, script: &str, args: &[&str]) -> std::process::Command {
        let mut c = self.command("python3");
        c.arg("-c").arg(script).args(args);
        c
    }
}

/// Tries `f` until it gives a value, for 30 s; on timeout says what the
/// last try gave.
async fn until<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if tokio::time::Instant::now() >= deadline => {
                panic!("timed out: {what}; the last try gave: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
