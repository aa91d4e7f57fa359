//! What the DNS proxy answers itself, decided without I/O: the names of
//! the services the proxy knows that have virtual IPs (local Services'
//! ClusterIPs, imported services' ClusterSet IPs), and the clusterset
//! zone, which is ours alone (a name in it we do not know does not
//! exist). Everything else is forwarded.
//!
//! `answer` turns a query's bytes into a reply's bytes, or says to
//! forward it; malformed queries get FORMERR, never a panic (fuzzed:
//! `fuzz/fuzz_targets/dns_query.rs`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use isthmus_api::model as m;

/// The zone of clusterset names (MCS): `<svc>.<ns>.svc.clusterset.local`.
pub const CLUSTERSET_ZONE: &str = "svc.clusterset.local";

/// The zone as a suffix, and as it appears inside a search expansion
/// (no allocation on the query path).
const DOT_ZONE: &str = ".svc.clusterset.local";
const DOT_ZONE_DOT: &str = ".svc.clusterset.local.";

/// How long clients may cache our answers: virtual IPs are stable.
pub const TTL: u32 = 30;

/// What the largest UDP reply we send may be when a query has no EDNS.
pub const PLAIN_UDP_LIMIT: usize = 512;

/// Our answer for one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// A name we know: its addresses.
    Known(&'a [IpAddr]),
    /// In our zone but unknown (or a search-path expansion of a clusterset
    /// name): it does not exist.
    NxDomain,
    /// Not ours: ask the upstream resolvers.
    Forward,
}

/// Names → addresses, lower case, no trailing dot.
#[derive(Debug, Default)]
pub struct Table {
    names: HashMap<Box<str>, Arc<[IpAddr]>>,
}

impl Table {
    /// The names of every service of `cfg` with virtual IPs: a clusterset
    /// name as it is; `<name>.<ns>` also as `<name>.<ns>.svc` and
    /// `<name>.<ns>.svc.<cluster_domain>` (what a pod's search path turns
    /// `<name>`, `<name>.<ns>` into); and the service's other host names.
    /// A headless service's clusterset name (it has no address of its
    /// own) answers with the addresses of all its pods' names,
    /// `<pod>.<cluster>.<svc>.<ns>.svc.clusterset.local` (MCS).
    pub fn build(cfg: &m::ProxyConfig, cluster_domain: &str) -> Self {
        let mut names: HashMap<Box<str>, Arc<[IpAddr]>> = HashMap::new();
        let mut headless: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for s in &cfg.services {
            let ips: Arc<[IpAddr]> = s.vips.iter().filter_map(|v| v.parse().ok()).collect();
            if ips.is_empty() {
                continue;
            }
            let name = s.name.to_ascii_lowercase();
            if let Some(set) = headless_set(&name) {
                headless.entry(set).or_default().extend(ips.iter().copied());
            }
            let mut forms = vec![name.clone()];
            if !name.ends_with(DOT_ZONE) && name.matches('.').count() == 1 {
                forms.push(format!("{name}.svc"));
                forms.push(format!("{name}.svc.{cluster_domain}"));
            }
            forms.extend(
                s.hosts
                    .iter()
                    .filter(|h| !h.starts_with('*'))
                    .map(|h| h.trim_end_matches('.').to_ascii_lowercase()),
            );
            for f in forms {
                names
                    .entry(f.into_boxed_str())
                    .or_insert_with(|| ips.clone());
            }
        }
        for (set, mut ips) in headless {
            ips.sort_unstable();
            ips.dedup();
            names
                .entry(set.into_boxed_str())
                .or_insert_with(|| ips.into());
        }
        Self { names }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// `name`: lower case, without the trailing dot.
    pub fn lookup(&self, name: &str) -> Lookup<'_> {
        if let Some(ips) = self.names.get(name) {
            return Lookup::Known(ips);
        }
        let in_zone = name == CLUSTERSET_ZONE || name.ends_with(DOT_ZONE);
        // `catalog.shop.svc.clusterset.local.shop.svc.cluster.local`: a
        // resolver walking its search list; it exists nowhere.
        let expanded = name.contains(DOT_ZONE_DOT);
        if in_zone || expanded {
            Lookup::NxDomain
        } else {
            Lookup::Forward
        }
    }
}

/// The clusterset name a pod's clusterset name belongs to:
/// `<pod>.<cluster>.<svc>.<ns>.svc.clusterset.local` →
/// `<svc>.<ns>.svc.clusterset.local` (the last two labels before the zone;
/// a cluster name may hold dots).
fn headless_set(name: &str) -> Option<String> {
    let prefix = name.strip_suffix(DOT_ZONE)?;
    let mut labels = prefix.rsplitn(3, '.');
    let (ns, svc, rest) = (labels.next()?, labels.next()?, labels.next()?);
    // `rest` is `<pod>.<cluster>`.
    rest.contains('.').then(|| format!("{svc}.{ns}{DOT_ZONE}"))
}

/// What to do with a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Send these bytes back.
    Answer(Vec<u8>),
    /// Forward the query as it is; `max_udp` is the largest reply the
    /// client takes over UDP.
    Forward { max_udp: usize },
    /// Not a query (a response, or too short to have an ID): say nothing.
    Drop,
}

/// The reply to the query in `bytes`.
pub fn answer(table: &Table, bytes: &[u8]) -> Reply {
    let request = match Message::from_vec(bytes) {
        Ok(m) => m,
        Err(_) => return formerr(bytes),
    };
    if request.metadata.message_type != MessageType::Query {
        return Reply::Drop;
    }
    let max_udp = request.edns.as_ref().map_or(PLAIN_UDP_LIMIT, |e| {
        usize::from(e.max_payload()).max(PLAIN_UDP_LIMIT)
    });
    if request.metadata.op_code != OpCode::Query {
        return Reply::Answer(error(&request, ResponseCode::NotImp));
    }
    let [query] = &request.queries[..] else {
        return Reply::Answer(error(&request, ResponseCode::FormErr));
    };
    if query.query_class != DNSClass::IN {
        return Reply::Forward { max_udp };
    }
    let name = query
        .name
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    match table.lookup(&name) {
        Lookup::Forward => Reply::Forward { max_udp },
        Lookup::NxDomain => {
            Reply::Answer(authoritative(&request, query, ResponseCode::NXDomain, &[]))
        }
        Lookup::Known(ips) => {
            let wanted: Vec<IpAddr> = ips
                .iter()
                .copied()
                .filter(|ip| match query.query_type {
                    RecordType::A => ip.is_ipv4(),
                    RecordType::AAAA => ip.is_ipv6(),
                    RecordType::ANY => true,
                    _ => false,
                })
                .collect();
            Reply::Answer(authoritative(
                &request,
                query,
                ResponseCode::NoError,
                &wanted,
            ))
        }
    }
}

/// The response header for `request`: its ID, opcode, RD and CD; we
/// recurse (RA).
fn response(request: &Message, code: ResponseCode) -> Message {
    let mut r = Message::response(request.metadata.id, request.metadata.op_code);
    r.metadata.recursion_desired = request.metadata.recursion_desired;
    r.metadata.checking_disabled = request.metadata.checking_disabled;
    r.metadata.recursion_available = true;
    r.metadata.response_code = code;
    if request.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        r.set_edns(e);
    }
    r
}

fn encode(m: &Message) -> Vec<u8> {
    m.to_vec().expect("our own small messages encode")
}

fn error(request: &Message, code: ResponseCode) -> Vec<u8> {
    let mut r = response(request, code);
    r.add_queries(request.queries.iter().cloned());
    encode(&r)
}

fn authoritative(request: &Message, query: &Query, code: ResponseCode, ips: &[IpAddr]) -> Vec<u8> {
    let mut r = response(request, code);
    r.metadata.authoritative = true;
    r.add_query(query.clone());
    let name: Name = query.name.clone();
    for ip in ips {
        let rdata = match ip {
            IpAddr::V4(v4) => RData::A(A(*v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
        };
        r.add_answer(Record::from_rdata(name.clone(), TTL, rdata));
    }
    encode(&r)
}

/// SERVFAIL for a query we could not get answered upstream.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    Some(error(&request, ResponseCode::ServFail))
}

/// FORMERR for bytes that do not decode, when they hold an ID at all.
fn formerr(bytes: &[u8]) -> Reply {
    // A response (QR set) is never answered: two proxies must not bounce
    // errors off each other.
    if bytes.len() < 3 || bytes[2] & 0x80 != 0 {
        return Reply::Drop;
    }
    let id = u16::from_be_bytes([bytes[0], bytes[1]]);
    let opcode = OpCode::from_u8((bytes[2] >> 3) & 0x0f);
    let mut r = Message::error_msg(id, opcode, ResponseCode::FormErr);
    r.metadata.recursion_available = true;
    Reply::Answer(encode(&r))
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
