//! W3C Trace Context: each hop keeps the trace id and adds its own span id
//! as the new parent id; a request without a valid `traceparent` starts a
//! new trace. The sampling decision travels in the flags: an incoming one
//! is kept (sampled or not), a new trace is sampled at the configured rate
//! (`Sampling`), never forced.

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub parent_id: u64,
    pub flags: u8,
}

impl TraceParent {
    /// Parses version 00 (and, as the spec asks, the first four fields of
    /// future versions). Invalid or all-zero ids yield None.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let mut parts = s.split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let parent = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2
            || version == "ff"
            || trace.len() != 32
            || parent.len() != 16
            || flags.len() != 2
        {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let lower_hex = |x: &str| {
            x.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if ![version, trace, parent, flags].iter().all(|x| lower_hex(x)) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let parent_id = u64::from_str_radix(parent, 16).ok()?;
        if trace_id == 0 || parent_id == 0 {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags: u8::from_str_radix(flags, 16).ok()?,
        })
    }

    /// Whether the trace is sampled (its spans recorded).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// This hop's context: same trace and flags (the caller's sampling
    /// decision), a new span id. Without a valid incoming context, a new
    /// trace, sampled at `rate` (0 to 1).
    pub fn next_hop<R: Rng + ?Sized>(incoming: Option<&str>, rate: f64, rng: &mut R) -> Self {
        let span = loop {
            let s: u64 = rng.random();
            if s != 0 {
                break s;
            }
        };
        match incoming.and_then(Self::parse) {
            Some(p) => Self {
                parent_id: span,
                ..p
            },
            None => Self {
                trace_id: loop {
                    let t: u128 = rng.random();
                    if t != 0 {
                        break t;
                    }
                },
                parent_id: span,
                flags: u8::from(rate > 0.0 && rng.random::<f64>() < rate),
            },
        }
    }

    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The header value, formatted without intermediate allocations.
    pub fn header_value(&self) -> http::HeaderValue {
        let mut b = [0u8; 55];
        b[..3].copy_from_slice(b"00-");
        hex(self.trace_id, &mut b[3..35]);
        b[35] = b'-';
        hex(u128::from(self.parent_id), &mut b[36..52]);
        b[52] = b'-';
        hex(u128::from(self.flags), &mut b[53..55]);
        http::HeaderValue::from_bytes(&b).expect("hex digits and dashes are valid header bytes")
    }
}

/// Lower-case hex of the low `out.len() / 2` bytes of `v`, zero padded.
pub fn hex(mut v: u128, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_round_trip() {
        let p = TraceParent::parse(TP).unwrap();
        assert_eq!(p.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.parent_id, 0x00f0_67aa_0ba9_02b7);
        assert_eq!(p.to_string(), TP);
        assert_eq!(p.header_value(), TP);
    }

    #[test]
    fn rejects_invalid_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad}");
        }
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future")
                .is_some(),
            "future versions may add fields"
        );
    }

    #[test]
    fn next_hop_keeps_trace_and_changes_span() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let incoming = TraceParent::parse(TP).unwrap();
        let next = TraceParent::next_hop(Some(TP), 0.0, &mut rng);
        assert_eq!(next.trace_id, incoming.trace_id);
        assert_eq!(next.flags, incoming.flags);
        assert_ne!(next.parent_id, incoming.parent_id);
        let fresh = TraceParent::next_hop(Some("garbage"), 1.0, &mut rng);
        assert_ne!(fresh.trace_id, incoming.trace_id);
        assert_eq!(fresh.flags, 1);
        assert!(TraceParent::parse(&fresh.to_string()).is_some());
    }

    #[test]
    fn the_callers_decision_is_kept_and_new_traces_sample_at_the_rate() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        // Kept whatever our rate: not sampled stays not sampled...
        let n = TraceParent::next_hop(Some(unsampled), 1.0, &mut rng);
        assert!(!n.sampled());
        // ...and sampled stays sampled.
        assert!(TraceParent::next_hop(Some(TP), 0.0, &mut rng).sampled());
        // New traces: never at 0, always at 1, about the rate between.
        assert!((0..100).all(|_| !TraceParent::next_hop(None, 0.0, &mut rng).sampled()));
        assert!((0..100).all(|_| TraceParent::next_hop(None, 1.0, &mut rng).sampled()));
        let sampled = (0..10_000)
            .filter(|_| TraceParent::next_hop(None, 0.1, &mut rng).sampled())
            .count();
        assert!((800..1200).contains(&sampled), "{sampled} of 10000 at 10 %");
    }
}
