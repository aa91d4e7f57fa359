//! What a proxy and a control plane decode from the wire: discovery
//! responses and their resources (then merged, validated and compiled as
//! a proxy would), proxy configs, the discovery requests a control plane
//! reads and the sync messages of a linked control plane. Never a panic:
//! bad bytes are a named error.
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
    match which % 5 {
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
        _ => {
            let _ = sync::SyncResponse::decode(bytes);
        }
    }
});
