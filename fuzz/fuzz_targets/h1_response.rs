//! The HTTP/1.1 client's response decoder on arbitrary upstream bytes, fed
//! in arbitrary read sizes: it never panics, never hands out more body
//! than it was given, and gives the same answer however the bytes arrive.
#![no_main]

use bytes::BytesMut;
use isthmus_gateway::pool::h1::codec::{Event, ResponseDecoder};
use libfuzzer_sys::fuzz_target;

/// Body bytes and how it ended, reading `wire` `piece` bytes at a time.
fn run(wire: &[u8], piece: usize, head_only: bool) -> (Vec<u8>, String) {
    let mut d = ResponseDecoder::new(head_only);
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut body = Vec::new();
    let mut status = None;
    loop {
        match d.decode(&mut buf) {
            Err(e) => return (body, format!("refused: {e}")),
            Ok(Event::Head(h)) => status = Some(h.response.status()),
            Ok(Event::Data(x)) => {
                assert!(!x.is_empty(), "empty data event");
                body.extend_from_slice(&x)
            }
            Ok(Event::Trailers(_)) | Ok(Event::End) => {
                let left = buf.len() + wire.len() - fed;
                return (body, format!("{status:?} ended, {left} left"));
            }
            Ok(Event::NeedMore) if fed == wire.len() => {
                let clean = status.is_some() && d.eof();
                return (body, format!("{status:?} closed, clean {clean}"));
            }
            Ok(Event::NeedMore) => {
                let end = (fed + piece).min(wire.len());
                buf.extend_from_slice(&wire[fed..end]);
                fed = end;
            }
        }
        if status.is_some() && d.is_done() {
            let left = buf.len() + wire.len() - fed;
            return (body, format!("{status:?} done, {left} left"));
        }
        assert!(body.len() <= wire.len(), "more body than bytes");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, wire)) = data.split_first() else {
        return;
    };
    let head_only = control & 0x80 != 0;
    let piece = usize::from(control & 0x3f) + 1;
    let whole = run(wire, wire.len().max(1), head_only);
    let pieces = run(wire, piece, head_only);
    assert_eq!(whole, pieces, "the answer depends on how the bytes arrive");
});
