//! What a proxy and a control plane decode from the wire: discovery
//! responses and their resources (then merged, validated and compiled as
//! a proxy would), proxy configs, the discovery requests a control plane
//! reads, the sync messages of a linked control plane (the policies it
//! shares read and translated as ours are), the peer liveness
//! stream a sidecar reads from its gateway (in any read sizes: the same
//! messages come out) and the gRPC health answers of an app. Never a
//! panic: bad bytes are a named error.
#![no_main]

use isthmus_api::discovery::v1::{DiscoveryRequest, DiscoveryResponse};
use isthmus_api::federation::v1 as sync;
use isthmus_api::model::ProxyConfig;
use isthmus_api::resource;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 7 {
        0 => {
            if let Ok(resp) = DiscoveryResponse::decode(bytes) {
                for r in &resp.resources {
                    let _ = resource::decode(r);
                }
            }
        }
        1 => {
            if let Ok(cfg) = ProxyConfig::decode(bytes) {
                let _ = isthmus_gateway::config::compile::compile(&cfg);
            }
        }
        2 => {
            let _ = DiscoveryRequest::decode(bytes);
        }
        3 => {
            let _ = sync::SyncRequest::decode(bytes);
        }
        4 => {
            // Whole, then one byte at a time: the same messages, the same end.
            let read = |step: usize| {
                let mut buf = bytes::BytesMut::new();
                let mut out = Vec::new();
                for chunk in bytes.chunks(step.max(1)) {
                    buf.extend_from_slice(chunk);
                    loop {
                        match isthmus_gateway::liveness::next_message(&mut buf) {
                            Ok(Some(m)) => out.push(m),
                            Ok(None) => break,
                            Err(e) => return (out, Some(e)),
                        }
                    }
                }
                (out, None)
            };
            let (whole, whole_err) = read(bytes.len());
            let (bytewise, bytewise_err) = read(1);
            assert_eq!(whole, bytewise);
            assert_eq!(whole_err.is_some(), bytewise_err.is_some());
        }
        5 => {
            let _ = isthmus_api::grpc_health::v1::HealthCheckResponse::decode(bytes);
        }
        _ => {
            // A linked cluster's exports, with the policies it shares: read
            // as our own resources are, applied over an empty cluster, and
            // translated.
            let Ok(sync::SyncResponse {
                kind: Some(sync::sync_response::Kind::Exports(e)),
            }) = sync::SyncResponse::decode(bytes)
            else {
                return;
            };
            let mut peer = isthmus_federation::sync::peers::Peer {
                cluster: "fuzz".into(),
                ..Default::default()
            };
            if peer.apply(&e, std::time::SystemTime::UNIX_EPOCH).is_err() {
                return;
            }
            let local = isthmus_federation::store::Snapshot::default();
            let (overlaid, _) =
                isthmus_federation::translate::received::overlay(&local, &peer.received());
            if let Some(snap) = overlaid {
                let inputs = isthmus_federation::translate::Inputs::new(&snap);
                let _ = isthmus_federation::translate::translate(&inputs).filled();
            }
        }
    }
});
