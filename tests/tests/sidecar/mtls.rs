//! The mesh transport: a client sidecar and a server sidecar, each with a
//! SPIFFE certificate from a test CA, talking mTLS HTTP/2 CONNECT (the
//! 15008 transport) in front of a real app. Identity reaches the server;
//! bad certificates and plaintext in STRICT are refused; rotation under
//! load loses nothing; authorization and JWT authentication decide.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use isthmus_mesh::identity::{Credentials, Identity};
use isthmus_sample::{self as sample, SampleApp};
use isthmus_testkit::jwt::Issuer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use isthmus_testkit::pki::Ca;
use isthmus_tests::sidecar::*;

const TD: &str = "eu-west.isthmus.local";
const FRONTEND: &str = "spiffe://eu-west.isthmus.local/ns/shop/sa/frontend";

struct Mesh {
    server: Env,
    app: Arc<SampleApp>,
    app_port: u16,
    echo_port: u16,
    server_id: Arc<Identity>,
    _app: sample::Running,
    _echo: sample::Running,
}

/// The server side: app + TCP echo behind a sidecar with a tunnel listener
/// and a plaintext inbound listener, and `security` (YAML flow mapping
/// body, may be empty).
async fn server(ca: &Ca, security: &str) -> Mesh {
    let app = SampleApp::new("catalog", "eu-west", "v1");
    let running = sample::serve(app.clone(), LOCAL).await.unwrap();
    let echo = sample::serve_tcp_echo(LOCAL).await.unwrap();
    let (app_port, echo_port) = (running.addr.port(), echo.addr.port());
    let id = Identity::fixed(ca.issue("shop", "catalog"));
    let yaml = format!(
        "node: {{name: catalog-0, namespace: shop, cluster: eu-west, labels: {{app: catalog}}}}\n\
         listeners:\n\
         \x20 - {{name: tunnel, address: \"127.0.0.1:0\", tunnel: {{ports: [{{port: {app_port}, protocol: HTTP}}, {{port: {echo_port}, protocol: TCP}}]}}}}\n\
         \x20 - {{name: inbound, address: \"127.0.0.1:0\", inbound: {{ports: [{{port: {app_port}, protocol: HTTP}}]}}}}\n\
         services: []\n\
         security: {{{security}}}\n"
    );
    let server = start_with_identity(&yaml, Some(id.clone())).await;
    Mesh {
        server,
        app,
        app_port,
        echo_port,
        server_id: id,
        _app: running,
        _echo: echo,
    }
}

/// A client sidecar whose services `catalog` (HTTP) and `echo` (TCP) are the
/// server's, reached through its tunnel listener. `identity` pins the
/// server's expected SPIFFE ID ("" accepts any of the trust domain).
async fn client(m: &Mesh, creds: Credentials, identity: &str) -> (Env, Arc<Identity>) {
    let tunnel = m.server.addr("tunnel").port();
    let id = Identity::fixed(creds);
    let yaml = format!(
        "node: {{name: frontend-0, namespace: shop, cluster: eu-west}}\n\
         listeners:\n\
         \x20 - {{name: out, address: \"127.0.0.1:0\", http: {{}}}}\n\
         \x20 - {{name: echo, address: \"127.0.0.1:0\", tcp: {{service: echo.shop}}}}\n\
         services:\n\
         \x20 - name: catalog.shop\n\
         \x20   hosts: [catalog]\n\
         \x20   ports: [{{port: 80, targetPort: {app}, protocol: HTTP}}]\n\
         \x20   endpoints: [{{address: \"127.0.0.1\", tunnelPort: {tunnel}, identity: \"{identity}\"}}]\n\
         \x20   connectionPool: {{maxRequestsPerConnection: 20}}\n\
         \x20 - name: echo.shop\n\
         \x20   ports: [{{port: 9000, targetPort: {echo}, protocol: TCP}}]\n\
         \x20   endpoints: [{{address: \"127.0.0.1\", tunnelPort: {tunnel}}}]\n",
        app = m.app_port,
        echo = m.echo_port,
    );
    (start_with_identity(&yaml, Some(id.clone())).await, id)
}

async fn tcp_echo(addr: std::net::SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(msg).await?;
    s.shutdown().await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::other("timed out"))??;
    Ok(out)
}

#[tokio::test]
async fn requests_and_tcp_cross_the_mtls_transport_with_the_client_identity() {
    let ca = Ca::new(TD);
    let mut m = server(&ca, "").await;
    let (c, _) = client(&m, ca.issue("shop", "frontend"), "").await;
    let (st, _, body) = get(c.addr("out"), "catalog", "/items", &[]).await;
    assert_eq!(st, 200, "{body}");
    let j = json(&body);
    assert_eq!(j["caller"], FRONTEND, "the app learns the verified caller");
    assert_eq!(j["service"], "catalog");
    // A forged identity header from the client is replaced.
    let (_, _, body) = get(
        c.addr("out"),
        "catalog",
        "/",
        &[("x-isthmus-peer-identity", "spiffe://evil/ns/x/sa/y")],
    )
    .await;
    assert_eq!(json(&body)["caller"], FRONTEND);
    let e = m
        .server
        .log_entry(|e| e.direction == "inbound" && e.path.as_deref() == Some("/items"))
        .await;
    assert_eq!(e.source_principal.as_deref(), Some(FRONTEND));
    assert_eq!(e.listener, "tunnel");
    assert!(
        m.server
            .metric(
                "isthmus_requests_total",
                &[
                    "direction=\"inbound\"",
                    "source_workload=\"frontend\"",
                    "source_namespace=\"shop\""
                ]
            )
            .await
            >= 2.0
    );
    assert_eq!(
        m.server
            .metric(
                "isthmus_inbound_connections_total",
                &["transport=\"mtls\"", "result=\"accepted\""]
            )
            .await,
        1.0,
        "requests multiplex over one mTLS connection"
    );
    // Opaque TCP through the same transport.
    let out = tcp_echo(c.addr("echo"), b"hello over mtls").await.unwrap();
    assert_eq!(out, b"hello over mtls");
    let e = m
        .server
        .log_entry(|e| e.direction == "inbound" && e.protocol == "TCP")
        .await;
    assert_eq!(e.source_principal.as_deref(), Some(FRONTEND));
    assert_eq!(m.app.hits(), 2);
}

#[tokio::test]
async fn strict_mode_refuses_plaintext_and_permissive_accepts_it() {
    let ca = Ca::new(TD);
    let mut m = server(&ca, "defaultMtlsMode: STRICT").await;
    let plain = m.server.addr("inbound");
    // Plaintext: the connection is closed without an answer.
    let mut s = TcpStream::connect(plain).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: catalog\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("closed promptly");
    assert!(
        n.is_err() || buf.is_empty(),
        "no response in STRICT: {buf:?}"
    );
    let e = m.server.log_entry(|e| e.response_flags == "MT").await;
    assert!(e.reason.unwrap().contains("STRICT"));
    assert_eq!(m.app.hits(), 0);
    // mTLS still works.
    let (c, _) = client(&m, ca.issue("shop", "frontend"), "").await;
    let (st, _, _) = get(c.addr("out"), "catalog", "/", &[]).await;
    assert_eq!(st, 200);
    // A workload-selected policy makes it PERMISSIVE for this app.
    let m2 = server(
        &ca,
        "defaultMtlsMode: STRICT, mtlsPolicies: [{name: shop/legacy, selector: {app: catalog}, mode: PERMISSIVE}]",
    )
    .await;
    let (st, _, body) = get(m2.server.addr("inbound"), "catalog", "/", &[]).await;
    assert_eq!(st, 200, "{body}");
    assert!(json(&body)["caller"].is_null(), "plaintext has no identity");
    let dump = get(m2.server.sidecar.admin_addr(), "admin", "/config_dump", &[])
        .await
        .2;
    let dump = json(&dump);
    assert_eq!(dump["security"]["mtlsMode"], "PERMISSIVE");
    assert_eq!(dump["security"]["mtlsModeFrom"], "shop/legacy");
    assert_eq!(
        dump["security"]["identity"],
        "spiffe://eu-west.isthmus.local/ns/shop/sa/catalog"
    );
}

/// Sends one request and returns the client sidecar's answer.
async fn status_via(c: &Env) -> (u16, String) {
    let (st, h, body) = get(c.addr("out"), "catalog", "/", &[]).await;
    let flags = h
        .get("x-isthmus-flags")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    (st.as_u16(), format!("{flags}: {body}"))
}

#[tokio::test]
async fn bad_certificates_are_refused_both_ways() {
    let ca = Ca::new(TD);
    let m = server(&ca, "").await;
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);

    // Unknown CA: a CA of the same trust domain name, but not ours.
    let rogue = Ca::new(TD);
    let mut creds = rogue.issue("shop", "frontend");
    creds.trust_bundles = ca.issue("x", "y").trust_bundles; // the client trusts the real CA
    let (c, _) = client(&m, creds, "").await;
    let (st, why) = status_via(&c).await;
    assert_eq!(st, 503, "{why}");

    // Wrong trust domain: a domain the server has no bundle for.
    let other = Ca::new("evil.example");
    let mut creds = other.issue("shop", "frontend");
    creds.trust_bundles.insert(TD.into(), ca.pem.clone());
    let (c, _) = client(&m, creds, "").await;
    assert_eq!(status_via(&c).await.0, 503);

    // A certificate claiming our domain, signed by another trusted domain's
    // CA: the chain must end at the roots of the domain the ID names.
    let us_east = Ca::new("us-east.isthmus.local");
    let forged = us_east.issue_raw(FRONTEND, now - hour, now + hour);
    let mut creds = forged;
    creds.trust_bundles.insert(TD.into(), ca.pem.clone());
    let m2 = server(&ca, &format!(
        "trustBundles: [{{trustDomain: us-east.isthmus.local, rootsPem: {}, cluster: us-east}}]",
        serde_json::to_string(&us_east.pem).unwrap()
    ))
    .await;
    let (c, _) = client(&m2, creds, "").await;
    assert_eq!(status_via(&c).await.0, 503);
    // ...while a genuine us-east identity is accepted there.
    let mut remote = us_east.issue("shop", "frontend");
    remote.trust_bundles.insert(TD.into(), ca.pem.clone());
    let (c, _) = client(
        &m2,
        remote,
        "spiffe://eu-west.isthmus.local/ns/shop/sa/catalog",
    )
    .await;
    let (st, body) = status_via(&c).await;
    assert_eq!(st, 200, "{body}");
    assert!(
        body.contains("spiffe://us-east.isthmus.local/ns/shop/sa/frontend"),
        "{body}"
    );

    // Expired.
    let expired = ca.issue_raw(FRONTEND, now - 3 * hour, now - hour);
    let (c, _) = client(&m, expired, "").await;
    assert_eq!(status_via(&c).await.0, 503);

    // The client checks the server too: a pinned identity that the server
    // does not have is refused before any request is sent.
    let (c, _) = client(
        &m,
        ca.issue("shop", "frontend"),
        "spiffe://eu-west.isthmus.local/ns/shop/sa/payments",
    )
    .await;
    let (st, why) = status_via(&c).await;
    assert_eq!(st, 503);
    assert!(
        why.contains("expected spiffe://eu-west.isthmus.local/ns/shop/sa/payments"),
        "{why}"
    );
    assert!(
        c.metric(
            "isthmus_tunnel_handshakes_total",
            &["result=\"wrong_identity\""]
        )
        .await
            >= 1.0
    );

    assert!(
        m.server
            .metric(
                "isthmus_inbound_connections_total",
                &["result=\"handshake\""]
            )
            .await
            >= 3.0,
        "unknown CA, wrong domain and expired counted"
    );
    assert_eq!(m.app.hits(), 0, "nothing reached the app");
    // The real identity still works.
    let (c, _) = client(
        &m,
        ca.issue("shop", "frontend"),
        "spiffe://eu-west.isthmus.local/ns/shop/sa/catalog",
    )
    .await;
    assert_eq!(status_via(&c).await.0, 200);
}

#[tokio::test]
async fn certificate_rotation_under_load_fails_no_request() {
    let ca = Ca::new(TD);
    let m = server(&ca, "").await;
    let (c, client_id) = client(&m, ca.issue("shop", "frontend"), "").await;
    let out = c.addr("out");
    let stop = tokio_util::sync::CancellationToken::new();
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let client = h1();
            while !stop.is_cancelled() {
                let r = client.request(request(out, "catalog", "/", &[], "")).await;
                match r {
                    Ok(resp) if resp.status() == 200 => {
                        use http_body_util::BodyExt;
                        if resp.into_body().collect().await.is_ok() {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let handshakes = || c.metric("isthmus_tunnel_handshakes_total", &["result=\"ok\""]);
    for round in 0..4 {
        let before = handshakes().await;
        let served = ok.load(Ordering::Relaxed);
        m.server_id.install(ca.issue("shop", "catalog"));
        client_id.install(ca.issue("shop", "frontend"));
        // A new mesh connection with the new certificates, and traffic on it.
        eventually("a handshake with the rotated certificates", || async {
            handshakes().await > before
        })
        .await;
        eventually("requests after the rotation", || async {
            ok.load(Ordering::Relaxed) > served + 50
        })
        .await;
        assert_eq!(failed.load(Ordering::Relaxed), 0, "round {round}");
    }
    stop.cancel();
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 200);
    assert_eq!(
        c.metric("isthmus_certificate_rotations_total", &[]).await,
        4.0
    );
}

#[tokio::test]
async fn authorization_policies_decide_on_the_verified_identity() {
    let ca = Ca::new(TD);
    let policies = "authorizationPolicies: [\
        {name: shop/frontend-reads, action: ALLOW, rules: [{from: [{principals: [\"spiffe://eu-west.isthmus.local/ns/shop/sa/frontend\"]}], to: [{methods: [GET], paths: [\"/items*\"]}]}]},\
        {name: shop/echo-from-shop, action: ALLOW, rules: [{from: [{namespaces: [shop]}], to: [{ports: [ECHO]}]}]},\
        {name: shop/no-admin, action: DENY, rules: [{to: [{ports: [APP], paths: [\"/items/admin\"]}]}]}]";
    // The echo port is known once the server runs: start, then rewrite.
    let mut m = server(&ca, "").await;
    let yaml = std::fs::read_to_string(&m.server.path).unwrap().replace(
        "security: {}",
        &format!(
            "security: {{{}}}",
            policies
                .replace("ECHO", &m.echo_port.to_string())
                .replace("APP", &m.app_port.to_string())
        ),
    );
    m.server.reload(&yaml).await;
    let (front, _) = client(&m, ca.issue("shop", "frontend"), "").await;
    let (ops, _) = client(&m, ca.issue("ops", "prober"), "").await;
    let matrix: &[(&Env, &str, &str, u16)] = &[
        (&front, "GET", "/items", 200),
        (&front, "GET", "/items/42", 200),
        (&front, "POST", "/items", 403),
        (&front, "GET", "/items/admin", 403),
        (&front, "GET", "/orders", 403),
        (&ops, "GET", "/items", 403),
    ];
    for (c, method, path, want) in matrix {
        let req = http::Request::builder()
            .method(*method)
            .uri(format!("http://{}{path}", c.addr("out")))
            .header("host", "catalog")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let (st, h, body) = send(&h1(), req).await;
        assert_eq!(st.as_u16(), *want, "{method} {path}: {body}");
        if *want == 403 {
            assert_eq!(h["x-isthmus-flags"], "AD");
            assert!(body.contains("RBAC: access denied"), "{body}");
        }
    }
    let e = m
        .server
        .log_entry(|e| e.path.as_deref() == Some("/items/admin"))
        .await;
    assert_eq!(e.response_code, 403);
    assert_eq!(e.authz.as_deref(), Some("shop/no-admin#0"));
    let e = m
        .server
        .log_entry(|e| e.path.as_deref() == Some("/orders"))
        .await;
    assert_eq!(e.authz.as_deref(), Some("default-deny"));
    assert_eq!(
        m.server
            .metric(
                "isthmus_authorization_decisions_total",
                &[
                    "decision=\"deny\"",
                    "policy=\"shop/no-admin\"",
                    "protocol=\"HTTP\""
                ]
            )
            .await,
        1.0
    );
    assert_eq!(
        m.server
            .metric(
                "isthmus_authorization_decisions_total",
                &["decision=\"allow\"", "policy=\"shop/frontend-reads\""]
            )
            .await,
        2.0
    );
    // TCP: shop may use the echo port, ops may not (CONNECT answered 403,
    // the client's connection closed).
    assert_eq!(
        tcp_echo(front.addr("echo"), b"ping").await.unwrap(),
        b"ping"
    );
    let denied = tcp_echo(ops.addr("echo"), b"ping").await;
    assert!(denied.map(|b| b.is_empty()).unwrap_or(true));
    let e = m
        .server
        .log_entry(|e| e.protocol == "TCP" && e.response_flags == "AD")
        .await;
    assert_eq!(
        e.source_principal.as_deref(),
        Some("spiffe://eu-west.isthmus.local/ns/ops/sa/prober")
    );
    assert_eq!(e.authz.as_deref(), Some("default-deny"));
    assert_eq!(
        m.server
            .metric(
                "isthmus_authorization_decisions_total",
                &["decision=\"deny\"", "protocol=\"TCP\""]
            )
            .await,
        1.0
    );
}

#[tokio::test]
async fn jwt_request_authentication_answers_401_and_feeds_authorization() {
    let ca = Ca::new(TD);
    let issuer = Issuer::es256("https://issuer.example", "k1");
    let security = format!(
        "jwtPolicies: [{{name: shop/jwt, rules: [{{issuer: \"https://issuer.example\", audiences: [catalog], jwks: {}}}], excludedPaths: [/healthz]}}],\
         authorizationPolicies: [{{name: shop/admins, action: ALLOW, rules: [\
            {{to: [{{paths: [/healthz]}}]}},\
            {{from: [{{requestPrincipals: [\"https://issuer.example/*\"]}}], when: [{{key: \"request.auth.claims[groups]\", values: [admins]}}]}}]}}]",
        serde_json::to_string(&issuer.jwks()).unwrap()
    );
    let mut m = server(&ca, &security).await;
    let (c, _) = client(&m, ca.issue("shop", "frontend"), "").await;
    let hour = Duration::from_secs(3600);
    let admin = issuer.token(
        "alice",
        "catalog",
        hour,
        serde_json::json!({"groups": ["admins"]}),
    );
    let user = issuer.token(
        "bob",
        "catalog",
        hour,
        serde_json::json!({"groups": ["users"]}),
    );
    let expired = issuer.expired("alice", "catalog", hour);
    let wrong_aud = issuer.token(
        "alice",
        "billing",
        hour,
        serde_json::json!({"groups": ["admins"]}),
    );
    let other = Issuer::es256("https://other.example", "k1").token(
        "alice",
        "catalog",
        hour,
        serde_json::json!({"groups": ["admins"]}),
    );
    let bearer = |t: &str| format!("Bearer {t}");
    let cases: Vec<(Option<String>, &str, u16)> = vec![
        (Some(bearer(&admin)), "/items", 200),
        (Some(bearer(&user)), "/items", 403),
        (Some(bearer(&expired)), "/items", 401),
        (Some(bearer(&wrong_aud)), "/items", 401),
        (Some(bearer(&other)), "/items", 401),
        (None, "/items", 401),
        (Some("Bearer not-a-token".into()), "/items", 401),
        (None, "/healthz", 200),
    ];
    for (auth, path, want) in &cases {
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        let (st, h, body) = get(c.addr("out"), "catalog", path, &headers).await;
        assert_eq!(st.as_u16(), *want, "{auth:?} {path}: {body}");
        if *want == 401 {
            assert_eq!(h["x-isthmus-flags"], "UA");
        }
    }
    let e = m
        .server
        .log_entry(|e| e.response_code == 200 && e.path.as_deref() == Some("/items"))
        .await;
    assert_eq!(
        e.request_principal.as_deref(),
        Some("https://issuer.example/alice")
    );
    for reason in ["expired", "audience", "issuer", "missing", "malformed"] {
        assert_eq!(
            m.server
                .metric(
                    "isthmus_authentication_failures_total",
                    &[&format!("reason=\"{reason}\"")]
                )
                .await,
            1.0,
            "{reason}"
        );
    }
}
