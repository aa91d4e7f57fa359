//! The sidecar's DNS proxy (UDP and TCP, 15053 in a pod, where
//! `init-iptables --dns-port` sends the pod's DNS traffic; the proxy's own
//! queries are exempt by its uid). It answers the names of the services
//! it knows from their virtual IPs, imported ones included
//! (`<svc>.<ns>.svc.clusterset.local`, `<svc>-<cluster>.<ns>` and their
//! search-path forms), says NXDOMAIN for unknown clusterset names, and
//! forwards everything else to the resolvers of the pod's
//! `/etc/resolv.conf`.
//!
//! - `table`: the answers, pure (names from the configuration; queries'
//!   bytes in, replies' bytes out; FORMERR for bad ones).
//! - `upstream`: forwarding (UDP with a timeout per server, TCP when the
//!   answer is truncated or the query came over TCP).
//! - here: the listeners, and the table rebuilt on every configuration.

pub mod table;
pub mod upstream;

mod server;

pub use server::{DnsProxy, DnsSettings};
