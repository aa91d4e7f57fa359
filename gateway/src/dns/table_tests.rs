use super::*;

fn cfg() -> m::ProxyConfig {
    let svc = |name: &str, vips: &[&str], hosts: &[&str]| m::Service {
        name: name.into(),
        vips: vips.iter().map(|v| v.to_string()).collect(),
        hosts: hosts.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    };
    m::ProxyConfig {
        services: vec![
            svc("catalog.shop", &["10.96.0.10"], &[]),
            svc("catalog.shop.svc.clusterset.local", &["240.240.1.1"], &[]),
            svc("catalog-eu-central.shop", &["240.240.1.2", "fd00::2"], &[]),
            svc("headless.shop", &[], &[]),
            svc(
                "api.ext",
                &["10.96.0.11"],
                &["api.example.com", "*.example.org"],
            ),
        ],
        ..Default::default()
    }
}

fn query(name: &str, t: RecordType) -> Message {
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    q
}

fn reply(table: &Table, q: &Message) -> Message {
    match answer(table, &q.to_vec().unwrap()) {
        Reply::Answer(b) => Message::from_vec(&b).unwrap(),
        other => panic!("not answered: {other:?}"),
    }
}

fn addrs(r: &Message) -> Vec<String> {
    r.answers
        .iter()
        .map(|a| match &a.data {
            RData::A(a) => a.0.to_string(),
            RData::AAAA(a) => a.0.to_string(),
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn names_the_proxy_knows_and_their_search_forms() {
    let t = Table::build(&cfg(), "cluster.local");
    let known = |n: &str| match t.lookup(n) {
        Lookup::Known(ips) => ips.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        other => panic!("{n}: {other:?}"),
    };
    assert_eq!(known("catalog.shop.svc.clusterset.local"), ["240.240.1.1"]);
    for n in [
        "catalog-eu-central.shop",
        "catalog-eu-central.shop.svc",
        "catalog-eu-central.shop.svc.cluster.local",
    ] {
        assert_eq!(known(n), ["240.240.1.2", "fd00::2"], "{n}");
    }
    assert_eq!(known("catalog.shop.svc.cluster.local"), ["10.96.0.10"]);
    assert_eq!(known("api.example.com"), ["10.96.0.11"]);
    // Our zone: unknown names do not exist; so do search expansions of it.
    for n in [
        "nothing.shop.svc.clusterset.local",
        "svc.clusterset.local",
        "catalog.shop.svc.clusterset.local.shop.svc.cluster.local",
    ] {
        assert_eq!(t.lookup(n), Lookup::NxDomain, "{n}");
    }
    // Everything else is someone else's: no VIP, wildcards, the world.
    for n in [
        "headless.shop.svc.cluster.local",
        "x.example.org",
        "example.com",
        "clusterset.local",
        "xsvc.clusterset.local",
        "catalog.shop.shop.svc.cluster.local",
    ] {
        assert_eq!(t.lookup(n), Lookup::Forward, "{n}");
    }
}

#[test]
fn queries_are_answered_authoritatively_with_the_right_family() {
    let t = Table::build(&cfg(), "cluster.local");
    let q = query("Catalog-EU-Central.shop.svc.cluster.local.", RecordType::A);
    let r = reply(&t, &q);
    assert_eq!(r.metadata.id, q.metadata.id);
    assert_eq!(r.metadata.message_type, MessageType::Response);
    assert!(r.metadata.authoritative && r.metadata.recursion_desired);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.queries, q.queries, "the question is echoed as asked");
    assert_eq!(addrs(&r), ["240.240.1.2"]);
    assert_eq!(r.answers[0].ttl, TTL);
    let r = reply(&t, &query("catalog-eu-central.shop.", RecordType::AAAA));
    assert_eq!(addrs(&r), ["fd00::2"]);
    // A name with no address of the type asked: NOERROR, nothing (NODATA).
    let r = reply(
        &t,
        &query("catalog.shop.svc.clusterset.local.", RecordType::AAAA),
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
    let r = reply(
        &t,
        &query("catalog.shop.svc.clusterset.local.", RecordType::MX),
    );
    assert!(r.answers.is_empty());
    let r = reply(
        &t,
        &query("ghost.shop.svc.clusterset.local.", RecordType::A),
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert!(r.metadata.authoritative);
}

#[test]
fn everything_else_is_forwarded_with_the_clients_udp_limit() {
    let t = Table::build(&cfg(), "cluster.local");
    let mut q = query("example.com.", RecordType::A);
    assert_eq!(
        answer(&t, &q.to_vec().unwrap()),
        Reply::Forward { max_udp: 512 }
    );
    let mut e = Edns::new();
    e.set_max_payload(4096);
    q.set_edns(e);
    assert_eq!(
        answer(&t, &q.to_vec().unwrap()),
        Reply::Forward { max_udp: 4096 }
    );
    // Our answers carry EDNS when the query did.
    let mut q = query("catalog.shop.svc.clusterset.local.", RecordType::A);
    q.set_edns(Edns::new());
    assert!(reply(&t, &q).edns.is_some());
    let mut chaos = query("version.bind.", RecordType::TXT);
    chaos.queries[0].query_class = DNSClass::CH;
    assert!(matches!(
        answer(&t, &chaos.to_vec().unwrap()),
        Reply::Forward { .. }
    ));
}

#[test]
fn bad_queries_get_formerr_or_nothing_never_a_panic() {
    let t = Table::build(&cfg(), "cluster.local");
    // Garbage after a header: FORMERR with the ID.
    let mut junk = vec![0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    junk.extend_from_slice(&[0x3f, 0xff, 0xff]);
    let Reply::Answer(b) = answer(&t, &junk) else {
        panic!("no FORMERR")
    };
    let r = Message::from_vec(&b).unwrap();
    assert_eq!(r.metadata.id, 0xabcd);
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    // Two questions: FORMERR too.
    let mut two = query("a.example.", RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii("b.example.").unwrap(),
        RecordType::A,
    ));
    assert_eq!(
        reply(&t, &two).metadata.response_code,
        ResponseCode::FormErr
    );
    // Not a query: NOTIMP. A response, or two bytes: nothing.
    let mut notify = query("a.example.", RecordType::SOA);
    notify.metadata.op_code = OpCode::Notify;
    assert_eq!(
        reply(&t, &notify).metadata.response_code,
        ResponseCode::NotImp
    );
    let mut resp = query("a.example.", RecordType::A);
    resp.metadata.message_type = MessageType::Response;
    assert_eq!(answer(&t, &resp.to_vec().unwrap()), Reply::Drop);
    assert_eq!(answer(&t, &[1, 2]), Reply::Drop);
    assert_eq!(answer(&t, &[]), Reply::Drop);
    let mut bad_response = junk.clone();
    bad_response[2] |= 0x80;
    assert_eq!(answer(&t, &bad_response), Reply::Drop);
}

#[test]
fn a_headless_clusterset_name_answers_with_all_its_pods() {
    let svc = |name: &str, vips: &[&str]| m::Service {
        name: name.into(),
        vips: vips.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    };
    let cfg = m::ProxyConfig {
        services: vec![
            // The set itself has no address; its pods in two clusters do
            // (a cluster name may hold dots).
            svc("db.shop.svc.clusterset.local", &[]),
            svc(
                "db-1.eu-central.db.shop.svc.clusterset.local",
                &["240.240.3.2"],
            ),
            svc(
                "db-0.eu-central.db.shop.svc.clusterset.local",
                &["240.240.3.1"],
            ),
            svc(
                "db-0.us.east.db.shop.svc.clusterset.local",
                &["240.240.3.9"],
            ),
            // Another set's pod, and a service with the same name in
            // another namespace.
            svc(
                "web-0.eu-central.web.shop.svc.clusterset.local",
                &["240.240.4.1"],
            ),
            svc("db.other.svc.clusterset.local", &["240.240.5.1"]),
        ],
        ..Default::default()
    };
    let t = Table::build(&cfg, "cluster.local");
    let known = |n: &str| match t.lookup(n) {
        Lookup::Known(ips) => ips.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        other => panic!("{n}: {other:?}"),
    };
    assert_eq!(
        known("db.shop.svc.clusterset.local"),
        ["240.240.3.1", "240.240.3.2", "240.240.3.9"]
    );
    assert_eq!(
        known("db-1.eu-central.db.shop.svc.clusterset.local"),
        ["240.240.3.2"]
    );
    assert_eq!(known("web.shop.svc.clusterset.local"), ["240.240.4.1"]);
    assert_eq!(known("db.other.svc.clusterset.local"), ["240.240.5.1"]);
    assert_eq!(
        t.lookup("db-2.eu-central.db.shop.svc.clusterset.local"),
        Lookup::NxDomain,
        "a pod nobody named"
    );
    // The set's name as a client asks it: every pod, one A record each.
    let r = reply(&t, &query("db.shop.svc.clusterset.local.", RecordType::A));
    assert_eq!(addrs(&r), ["240.240.3.1", "240.240.3.2", "240.240.3.9"]);
    assert!(headless_set("x.shop.svc.clusterset.local").is_none());
    assert!(headless_set("a.b.shop.svc.clusterset.local").is_none());
}
