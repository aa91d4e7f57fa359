//! The injection webhook on arbitrary request bodies (what reaches port
//! 15017): always an AdmissionReview answer — a patch that applies to the
//! pod it came with, an allowed review without one, or a refusal with a
//! message — never a panic.
#![no_main]

use isthmus_federation::inject::{Template, webhook};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let t = Template {
        cluster: "eu-west".into(),
        ..Default::default()
    };
    let answer = webhook::review(data, &t);
    let response = &answer["response"];
    assert!(response["allowed"].is_boolean());
    if response["allowed"] == false {
        assert!(response["status"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
});
