//! The control plane's files store on arbitrary YAML: every document is a
//! typed resource or a named error (file, line, kind, field), never a panic.
#![no_main]

use isthmus_federation::store::files::parse_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (loaded, errors) = parse_file(std::path::Path::new("fuzz.yaml"), text);
    for e in &errors {
        assert!(!e.to_string().is_empty());
    }
    let _ = loaded;
});
