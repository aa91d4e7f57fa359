//! OpenMetrics text (what our /metrics serve, `prometheus-client`'s
//! encoding) read by a real parser: the Python `prometheus_client`
//! library's OpenMetrics parser, run as a subprocess.
//! None when it is not installed, unless ISTHMUS_REQUIRE_PROMETHEUS_PARSER
//! is set (CI installs it), then a panic.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

/// One metric family as the parser read it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Family {
    /// counter, gauge, histogram, info, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// (sample name, labels, value).
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = {"type": f.type, "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(out))
"#;

/// `text` parsed, by family name (counters without `_total`); a parse
/// error panics with the parser's message.
pub fn parse(text: &str) -> Option<BTreeMap<String, Family>> {
    let available = Command::new("python3")
        .args(["-c", "import prometheus_client.parser"])
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        assert!(
            std::env::var_os("ISTHMUS_REQUIRE_PROMETHEUS_PARSER").is_none(),
            "ISTHMUS_REQUIRE_PROMETHEUS_PARSER is set but python3 cannot import prometheus_client (pip install prometheus-client)"
        );
        eprintln!("skipped: no prometheus_client for python3");
        return None;
    }
    let mut child = Command::new("python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("the text goes to the parser");
    let out = child.wait_with_output().expect("the parser ends");
    assert!(
        out.status.success(),
        "the Prometheus parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("the parser's JSON"))
}
