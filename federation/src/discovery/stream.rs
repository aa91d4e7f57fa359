//! The state of one proxy's stream, as plain data: what the proxy holds
//! (name -> version), what it refused, and the one response in flight. The
//! stream task feeds it the current resources and the proxy's answers; this
//! decides what to send. No I/O, no clocks.
//!
//! Rules (delta xDS, simplified to one response in flight):
//! - A response carries every wanted resource whose version the proxy does
//!   not hold, and the names of held resources no longer wanted.
//! - Nothing is sent while a response is unanswered; changes meanwhile
//!   coalesce into the next response.
//! - An ACK makes the response's content what the proxy holds.
//! - A NACK changes nothing the proxy holds. The resources it names (all of
//!   the response's, if it names none it was sent) are refused at that
//!   version: not sent again until they change. The rest goes out again in
//!   the next response, so a proxy converges on everything but the fault.

use std::collections::{BTreeMap, BTreeSet};

use isthmus_api::discovery::v1::{DiscoveryResponse, Rejection, Resource};

/// The resources one generation offers, by resource name.
pub trait Available {
    fn generation(&self) -> u64;
    fn get(&self, name: &str) -> Option<&Resource>;
}

/// A resource version the proxy refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Empty: the removal was refused.
    pub version: String,
    pub message: String,
}

#[derive(Debug, Clone)]
struct InFlight {
    nonce: String,
    generation: u64,
    changed: Vec<(String, String)>,
    removed: Vec<String>,
}

/// What an answer from the proxy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Acked {
        generation: u64,
    },
    Nacked {
        generation: u64,
        refused: Vec<String>,
    },
    /// Not the nonce in flight (late, duplicated, or made up): ignored.
    Stale,
}

#[derive(Debug, Default)]
pub struct StreamState {
    held: BTreeMap<String, String>,
    refused: BTreeMap<String, Refusal>,
    in_flight: Option<InFlight>,
    nonces: u64,
    sent_first: bool,
    /// The last generation the proxy was brought up to date with (by an ACK
    /// or because nothing for it changed).
    synced: Option<u64>,
}

impl StreamState {
    /// A stream whose proxy already holds `initial` (from an earlier stream).
    pub fn new(initial: BTreeMap<String, String>) -> Self {
        Self {
            held: initial,
            ..Default::default()
        }
    }

    /// The response that brings the proxy to `wanted` of `offer`, if one is
    /// due: none while one is in flight, and none when the proxy has it all
    /// already (except the first response of a stream, always sent so the
    /// proxy knows it is in sync).
    pub fn next(
        &mut self,
        offer: &impl Available,
        wanted: &BTreeSet<String>,
        control_plane: &str,
    ) -> Option<DiscoveryResponse> {
        if self.in_flight.is_some() {
            return None;
        }
        // Refusals hold only while the refused thing is still what is wanted.
        self.refused
            .retain(|name, r| match (wanted.contains(name), offer.get(name)) {
                (true, Some(res)) => res.version == r.version,
                (false, _) => r.version.is_empty(),
                (true, None) => false,
            });
        let mut resources = Vec::new();
        for name in wanted {
            let Some(res) = offer.get(name) else { continue };
            if self.held.get(name) == Some(&res.version)
                || self
                    .refused
                    .get(name)
                    .is_some_and(|r| r.version == res.version)
            {
                continue;
            }
            resources.push(res.clone());
        }
        let removed: Vec<String> = self
            .held
            .keys()
            .filter(|n| !wanted.contains(*n) || offer.get(n).is_none())
            .filter(|n| self.refused.get(*n).is_none_or(|r| !r.version.is_empty()))
            .cloned()
            .collect();
        if resources.is_empty() && removed.is_empty() && self.sent_first {
            self.synced = Some(offer.generation());
            return None;
        }
        self.sent_first = true;
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        self.in_flight = Some(InFlight {
            nonce: nonce.clone(),
            generation: offer.generation(),
            changed: resources
                .iter()
                .map(|r| (r.name.clone(), r.version.clone()))
                .collect(),
            removed: removed.clone(),
        });
        Some(DiscoveryResponse {
            system_version: offer.generation().to_string(),
            nonce,
            resources,
            removed_resources: removed,
            control_plane: control_plane.to_string(),
        })
    }

    /// The proxy answered the response with `nonce`: an ACK, or a NACK
    /// when `error` is set.
    pub fn answer(&mut self, nonce: &str, error: Option<&Rejection>) -> Answer {
        if self.in_flight.as_ref().is_none_or(|f| f.nonce != nonce) {
            return Answer::Stale;
        }
        let Some(f) = self.in_flight.take() else {
            return Answer::Stale;
        };
        match error {
            None => {
                for (name, version) in f.changed {
                    self.refused.remove(&name);
                    self.held.insert(name, version);
                }
                for name in f.removed {
                    self.refused.remove(&name);
                    self.held.remove(&name);
                }
                self.synced = Some(f.generation);
                Answer::Acked {
                    generation: f.generation,
                }
            }
            Some(rej) => {
                let in_response =
                    |n: &String| f.changed.iter().any(|(c, _)| c == n) || f.removed.contains(n);
                let named: Vec<String> = rej
                    .resource_names
                    .iter()
                    .filter(|n| in_response(n))
                    .cloned()
                    .collect();
                let refused = if named.is_empty() {
                    f.changed
                        .iter()
                        .map(|(n, _)| n.clone())
                        .chain(f.removed.iter().cloned())
                        .collect()
                } else {
                    named
                };
                for name in &refused {
                    let version = f
                        .changed
                        .iter()
                        .find(|(c, _)| c == name)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    self.refused.insert(
                        name.clone(),
                        Refusal {
                            version,
                            message: rej.message.clone(),
                        },
                    );
                }
                Answer::Nacked {
                    generation: f.generation,
                    refused,
                }
            }
        }
    }

    /// What the proxy holds (name -> version).
    pub fn held(&self) -> &BTreeMap<String, String> {
        &self.held
    }

    /// What the proxy refused and still would.
    pub fn refused(&self) -> &BTreeMap<String, Refusal> {
        &self.refused
    }

    pub fn synced(&self) -> Option<u64> {
        self.synced
    }

    /// The nonce and generation of the response awaiting an answer.
    pub fn in_flight(&self) -> Option<(&str, u64)> {
        self.in_flight
            .as_ref()
            .map(|f| (f.nonce.as_str(), f.generation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[derive(Default)]
    struct Gen {
        generation: u64,
        resources: BTreeMap<String, Resource>,
    }

    impl Available for Gen {
        fn generation(&self) -> u64 {
            self.generation
        }
        fn get(&self, name: &str) -> Option<&Resource> {
            self.resources.get(name)
        }
    }

    fn generation(n: u64, rs: &[(&str, &str)]) -> Gen {
        Gen {
            generation: n,
            resources: rs
                .iter()
                .map(|(name, v)| {
                    (
                        name.to_string(),
                        Resource {
                            name: name.to_string(),
                            version: v.to_string(),
                            body: Bytes::new(),
                        },
                    )
                })
                .collect(),
        }
    }

    fn want(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn names(r: &DiscoveryResponse) -> Vec<String> {
        r.resources
            .iter()
            .map(|x| format!("{}@{}", x.name, x.version))
            .collect()
    }

    fn nack(names: &[&str]) -> Rejection {
        Rejection {
            message: "bad".into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn first_response_always_then_only_differences() {
        let mut s = StreamState::default();
        let g1 = generation(1, &[("a", "1"), ("b", "1"), ("c", "1")]);
        let r = s.next(&g1, &want(&["a", "b"]), "cp").unwrap();
        assert_eq!(names(&r), ["a@1", "b@1"], "only what the proxy wants");
        assert_eq!((r.nonce.as_str(), r.system_version.as_str()), ("1", "1"));
        assert!(s.next(&g1, &want(&["a", "b"]), "cp").is_none(), "in flight");
        assert_eq!(s.answer("1", None), Answer::Acked { generation: 1 });
        assert_eq!(s.synced(), Some(1));
        // Nothing changed for this proxy: nothing sent, but it is in sync.
        let g2 = generation(2, &[("a", "1"), ("b", "1"), ("c", "2")]);
        assert!(s.next(&g2, &want(&["a", "b"]), "cp").is_none());
        assert_eq!(s.synced(), Some(2));
        // A change and a removal.
        let g3 = generation(3, &[("a", "2"), ("c", "2")]);
        let r = s.next(&g3, &want(&["a", "b"]), "cp").unwrap();
        assert_eq!(names(&r), ["a@2"]);
        assert_eq!(r.removed_resources, ["b"]);
        assert_eq!(s.answer("2", None), Answer::Acked { generation: 3 });
        assert_eq!(s.held().len(), 1);
        // An empty first response when there is nothing at all.
        let mut empty = StreamState::default();
        let r = empty.next(&generation(1, &[]), &want(&[]), "cp").unwrap();
        assert!(r.resources.is_empty() && r.removed_resources.is_empty());
    }

    #[test]
    fn a_reconnecting_proxy_gets_only_what_it_lacks() {
        let initial = [("a", "1"), ("b", "1"), ("gone", "1")]
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        let mut s = StreamState::new(initial);
        let g = generation(7, &[("a", "1"), ("b", "2")]);
        let r = s.next(&g, &want(&["a", "b"]), "cp").unwrap();
        assert_eq!(names(&r), ["b@2"]);
        assert_eq!(r.removed_resources, ["gone"]);
    }

    #[test]
    fn stale_and_unknown_nonces_are_ignored() {
        let mut s = StreamState::default();
        let g = generation(1, &[("a", "1")]);
        s.next(&g, &want(&["a"]), "cp").unwrap();
        assert_eq!(s.answer("0", None), Answer::Stale);
        assert_eq!(s.answer("", None), Answer::Stale);
        assert_eq!(s.answer("1", None), Answer::Acked { generation: 1 });
        assert_eq!(s.answer("1", None), Answer::Stale, "answered already");
    }

    #[test]
    fn a_nack_refuses_what_it_names_and_the_rest_is_resent() {
        let mut s = StreamState::default();
        let g1 = generation(1, &[("a", "1"), ("b", "1")]);
        s.next(&g1, &want(&["a", "b"]), "cp").unwrap();
        s.answer("1", None);
        let g2 = generation(2, &[("a", "2"), ("b", "2")]);
        let r = s.next(&g2, &want(&["a", "b"]), "cp").unwrap();
        assert_eq!(names(&r), ["a@2", "b@2"]);
        assert_eq!(
            s.answer(&r.nonce, Some(&nack(&["b", "not-in-response"]))),
            Answer::Nacked {
                generation: 2,
                refused: vec!["b".into()]
            }
        );
        assert_eq!(s.held()["b"], "1", "the proxy kept its last good");
        assert_eq!(s.refused()["b"].message, "bad");
        // The good half goes again; the refused version does not.
        let r = s.next(&g2, &want(&["a", "b"]), "cp").unwrap();
        assert_eq!(names(&r), ["a@2"]);
        s.answer(&r.nonce, None);
        assert!(s.next(&g2, &want(&["a", "b"]), "cp").is_none(), "no loop");
        assert_eq!(s.synced(), Some(2));
        // A new version of the refused resource is offered again.
        let g3 = generation(3, &[("a", "2"), ("b", "3")]);
        let r = s.next(&g3, &want(&["a", "b"]), "cp").unwrap();
        assert_eq!(names(&r), ["b@3"]);
        assert!(s.refused().is_empty(), "the refusal was of another version");
        s.answer(&r.nonce, None);
        assert_eq!(s.held()["b"], "3");
    }

    #[test]
    fn a_nack_naming_nothing_refuses_the_whole_response_including_removals() {
        let mut s = StreamState::default();
        let g1 = generation(1, &[("a", "1"), ("b", "1")]);
        s.next(&g1, &want(&["a", "b"]), "cp").unwrap();
        s.answer("1", None);
        // b disappears and a changes; the proxy refuses (say a listener of
        // its own needs b).
        let g2 = generation(2, &[("a", "2")]);
        let r = s.next(&g2, &want(&["a"]), "cp").unwrap();
        assert_eq!(r.removed_resources, ["b"]);
        assert!(matches!(
            s.answer(&r.nonce, Some(&nack(&[]))),
            Answer::Nacked { .. }
        ));
        assert!(s.next(&g2, &want(&["a"]), "cp").is_none(), "nothing resent");
        assert_eq!(s.refused()["b"].version, "", "the removal was refused");
        // b comes back as it was: the refusal of its removal is moot.
        let g3 = generation(3, &[("a", "2"), ("b", "1")]);
        assert!(s.next(&g3, &want(&["a", "b"]), "cp").is_none());
        assert!(!s.refused().contains_key("b"));
        assert!(s.refused().contains_key("a"), "a@2 is still refused");
    }
}
