//! What the sidecar's DNS proxy makes of a datagram from the pod: never a
//! panic; an answer is a well-formed response with the query's ID, and a
//! query forwarded upstream decodes as a query.
#![no_main]

use hickory_proto::op::{Message, MessageType};
use isthmus_api::model;
use isthmus_gateway::dns::table::{Reply, Table, answer};
use libfuzzer_sys::fuzz_target;

fn table() -> Table {
    let svc = |name: &str, vip: &str| model::Service {
        name: name.into(),
        vips: vec![vip.into()],
        hosts: vec!["api.example.com".into()],
        ..Default::default()
    };
    Table::build(
        &model::ProxyConfig {
            services: vec![
                svc("catalog.shop.svc.clusterset.local", "240.240.0.1"),
                svc("catalog-eu-central.shop", "240.240.0.2"),
                svc("v6.shop", "fd00::1"),
            ],
            ..Default::default()
        },
        "cluster.local",
    )
}

fuzz_target!(|data: &[u8]| {
    thread_local!(static TABLE: Table = table());
    TABLE.with(|t| match answer(t, data) {
        Reply::Answer(bytes) => {
            let r = Message::from_vec(&bytes).expect("our answers decode");
            assert_eq!(r.metadata.message_type, MessageType::Response);
            assert_eq!(&bytes[..2], &data[..2], "the query's ID");
        }
        Reply::Forward { max_udp } => {
            assert!(max_udp >= 512);
            let q = Message::from_vec(data).expect("only decoded queries are forwarded");
            assert_eq!(q.metadata.message_type, MessageType::Query);
        }
        Reply::Drop => {}
    });
});
