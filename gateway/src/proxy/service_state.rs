//! Runtime state of each destination service that must outlive a config
//! reload: per-endpoint outstanding requests and outlier state, the
//! connection pool, round-robin position, and per-route rate-limit buckets
//! and retry budgets. Keyed by name, so a reload that keeps a service keeps
//! its state; a removed service's state is dropped.

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use rand::Rng;
use tokio_util::task::TaskTracker;

use crate::balance::outlier::{Observation, OutlierState};
use crate::balance::{self, EndpointView, PickInput};
use crate::config::{EndpointKey, EndpointSpec, ServiceSpec, Snapshot};
use crate::policy::ratelimit::TokenBucket;
use crate::policy::retry::{BudgetSettings, RetryBudget};
use crate::pool::{Pool, SocketOptions};
use crate::route::Route;
use crate::telemetry::metrics::{Direction, Metrics, ServiceLabels};

pub struct EndpointState {
    pub in_flight: AtomicUsize,
    outlier: Mutex<OutlierState>,
    /// Its health in the last configuration (`EndpointSpec::healthy`).
    healthy: std::sync::atomic::AtomicBool,
    /// Its cluster's returns (peer liveness) seen so far.
    returns: std::sync::atomic::AtomicU64,
}

impl Default for EndpointState {
    fn default() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            outlier: Mutex::new(OutlierState::default()),
            healthy: std::sync::atomic::AtomicBool::new(true),
            returns: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// One endpoint as balancing sees it now, and why it is unavailable.
#[derive(Debug, Clone, Copy)]
pub struct LiveEndpoint {
    pub view: EndpointView,
    /// Ejected by outlier detection.
    pub ejected: bool,
    /// Its cluster's gateway is down (peer liveness).
    pub cluster_down: bool,
}

pub struct RouteState {
    bucket: Mutex<Option<TokenBucket>>,
    budget: Mutex<RetryBudget>,
    /// Caps moves (requests no application saw, sent elsewhere).
    moves: Mutex<RetryBudget>,
}

impl RouteState {
    /// Takes a token from the route's rate limit (always true without one).
    pub fn admit(&self, route: &Route, now: Instant) -> bool {
        let Some(rl) = &route.rate_limit else {
            return true;
        };
        let mut b = self.bucket.lock();
        match b.as_mut() {
            Some(bucket) if bucket.has_limits(rl.per_second, rl.burst) => bucket.try_take(now),
            _ => {
                let mut bucket = TokenBucket::new(rl.per_second, rl.burst, now);
                let ok = bucket.try_take(now);
                *b = Some(bucket);
                ok
            }
        }
    }

    /// Counts a request in the moves budget and, with a retry policy
    /// (`settings`), in the route's retry budget.
    pub fn deposit(&self, settings: Option<BudgetSettings>, now: Instant) {
        self.moves.lock().deposit(now);
        let Some(settings) = settings else { return };
        let mut b = self.budget.lock();
        if b.settings() != settings {
            *b = RetryBudget::new(settings);
        }
        b.deposit(now);
    }

    pub fn withdraw(&self, now: Instant) -> bool {
        self.budget.lock().try_withdraw(now)
    }

    pub fn withdraw_move(&self, now: Instant) -> bool {
        self.moves.lock().try_withdraw(now)
    }
}

pub struct ServiceState {
    pub name: Arc<str>,
    pub pool: Pool,
    /// isthmus_circuit_breaker_sheds of this service.
    pub sheds: prometheus_client::metrics::counter::Counter,
    pub active_requests: AtomicUsize,
    endpoints: Mutex<HashMap<EndpointKey, Arc<EndpointState>>>,
    /// The states of the endpoints of the last spec seen, index-aligned
    /// with its `endpoints`, so the request path does no lookups by key.
    aligned: Mutex<Aligned>,
    routes: Mutex<HashMap<Arc<str>, Arc<RouteState>>>,
    rr: AtomicUsize,
    /// Linked clusters' gateways as this cluster's gateway says they fare.
    liveness: Arc<crate::liveness::Liveness>,
}

#[derive(Default)]
struct Aligned {
    spec: std::sync::Weak<ServiceSpec>,
    states: Arc<Vec<Arc<EndpointState>>>,
}

impl ServiceState {
    pub fn endpoint_state(&self, e: &EndpointSpec) -> Arc<EndpointState> {
        self.endpoints.lock().entry(e.key()).or_default().clone()
    }

    /// Endpoint states aligned with `spec.endpoints`.
    pub fn states(&self, spec: &Arc<ServiceSpec>) -> Arc<Vec<Arc<EndpointState>>> {
        let mut a = self.aligned.lock();
        if std::ptr::eq(a.spec.as_ptr(), Arc::as_ptr(spec)) {
            return a.states.clone();
        }
        let states: Vec<Arc<EndpointState>> = spec
            .endpoints
            .iter()
            .map(|e| self.endpoint_state(e))
            .collect();
        a.spec = Arc::downgrade(spec);
        a.states = Arc::new(states);
        a.states.clone()
    }

    pub fn route_state(&self, route: &Route) -> Arc<RouteState> {
        let mut routes = self.routes.lock();
        if let Some(r) = routes.get(&*route.name) {
            return r.clone();
        }
        routes
            .entry(route.name.clone())
            .or_insert_with(|| {
                Arc::new(RouteState {
                    bucket: Mutex::new(None),
                    budget: Mutex::new(RetryBudget::new(BudgetSettings::default())),
                    moves: Mutex::new(RetryBudget::new(BudgetSettings::MOVES)),
                })
            })
            .clone()
    }

    /// How each endpoint of `spec` fares now, index-aligned: what
    /// balancing sees, and why an endpoint is not available.
    pub fn live(&self, spec: &Arc<ServiceSpec>) -> Vec<LiveEndpoint> {
        let states = self.states(spec);
        self.each_live(spec, &states, Instant::now()).collect()
    }

    fn each_live<'a>(
        &'a self,
        spec: &'a ServiceSpec,
        states: &'a [Arc<EndpointState>],
        now: Instant,
    ) -> impl Iterator<Item = LiveEndpoint> + 'a {
        spec.endpoints
            .iter()
            .zip(&spec.priorities)
            .zip(states.iter())
            .map(move |((e, prio), st)| {
                // A linked cluster whose gateway is down takes nothing; one
                // that came back is no longer ejected for the failures its
                // loss caused (it takes traffic with its link, not when the
                // ejection ends).
                let cluster = e
                    .tunnel
                    .as_ref()
                    .and_then(|t| t.via.as_ref())
                    .map(|v| self.liveness.cluster(&v.cluster))
                    .unwrap_or_default();
                if cluster.returns > st.returns.load(Ordering::Relaxed) {
                    st.returns.store(cluster.returns, Ordering::Relaxed);
                    st.outlier.lock().health_returned();
                }
                let ejected = st.outlier.lock().is_ejected(now);
                LiveEndpoint {
                    view: EndpointView {
                        priority: *prio,
                        available: e.healthy && !ejected && !cluster.down,
                        weight: e.weight,
                        in_flight: st.in_flight.load(Ordering::Relaxed),
                    },
                    ejected,
                    cluster_down: cluster.down,
                }
            })
    }

    /// Chooses an endpoint of `spec` (see `balance::pick`).
    pub fn pick<R: Rng + ?Sized>(
        &self,
        spec: &Arc<ServiceSpec>,
        exclude: &[usize],
        hash: Option<u64>,
        rng: &mut R,
    ) -> Option<usize> {
        let states = self.states(spec);
        let views: Vec<EndpointView> = self
            .each_live(spec, &states, Instant::now())
            .map(|l| l.view)
            .collect();
        balance::pick(
            &PickInput {
                endpoints: &views,
                exclude,
                policy: spec.lb.policy,
                overprovisioning: spec.lb.overprovisioning,
                hash,
                ring: spec.ring.as_ref(),
                rr_counter: self.rr.fetch_add(1, Ordering::Relaxed),
            },
            rng,
        )
    }

    /// Feeds an attempt's result to outlier detection; counts ejections.
    pub fn observe(
        &self,
        spec: &Arc<ServiceSpec>,
        idx: usize,
        o: Observation,
        metrics: &Metrics,
        dir: Direction,
    ) {
        if !spec.outlier.enabled {
            return;
        }
        let now = Instant::now();
        let states = self.states(spec);
        let Some(st) = states.get(idx) else { return };
        // The share of ejected endpoints is counted only when this
        // observation would eject (never on the success path).
        let may_eject = || {
            let ejected = states
                .iter()
                .enumerate()
                .filter(|(i, s)| {
                    *i != idx && s.outlier.try_lock().is_some_and(|o| o.is_ejected(now))
                })
                .count();
            ejected < spec.outlier.max_ejected(states.len())
        };
        let newly = st.outlier.lock().observe(o, now, &spec.outlier, may_eject);
        if newly {
            let labels = ServiceLabels {
                direction: dir,
                destination_service: self.name.clone(),
            };
            metrics.ejections.get_or_create(&labels).inc();
            tracing::warn!(service = %self.name, endpoint = %spec.endpoints[idx].key(), "endpoint ejected by outlier detection");
        }
    }

    /// For /config_dump: endpoint key, outstanding requests, ejected.
    pub fn dump(&self) -> serde_json::Value {
        let now = Instant::now();
        let eps: serde_json::Map<String, serde_json::Value> = self
            .endpoints
            .lock()
            .iter()
            .map(|(k, s)| {
                let o = s.outlier.lock();
                (
                    k.to_string(),
                    serde_json::json!({
                        "inFlight": s.in_flight.load(Ordering::Relaxed),
                        "ejected": o.is_ejected(now),
                        "timesEjected": o.times_ejected(),
                    }),
                )
            })
            .collect();
        serde_json::json!({
            "activeRequests": self.active_requests.load(Ordering::Relaxed),
            "openConnections": self.pool.open_connections(),
            "endpoints": eps,
        })
    }
}

/// All clusters of a proxy.
pub struct ServiceStates {
    map: Mutex<HashMap<String, Arc<ServiceState>>>,
    tracker: TaskTracker,
    socket: SocketOptions,
    metrics: Arc<Metrics>,
    connector: Option<Arc<isthmus_mesh::transport::Connector>>,
    /// Peer liveness from this cluster's gateway (`liveness::follow`).
    pub liveness: Arc<crate::liveness::Liveness>,
}

impl ServiceStates {
    pub fn new(
        tracker: TaskTracker,
        socket: SocketOptions,
        metrics: Arc<Metrics>,
        connector: Option<Arc<isthmus_mesh::transport::Connector>>,
    ) -> Self {
        Self {
            connector,
            map: Mutex::new(HashMap::new()),
            tracker,
            socket,
            metrics,
            liveness: Default::default(),
        }
    }

    /// The mesh transport, when the proxy has an identity.
    pub fn connector(&self) -> Option<&Arc<isthmus_mesh::transport::Connector>> {
        self.connector.as_ref()
    }

    pub fn get(&self, spec: &ServiceSpec) -> Arc<ServiceState> {
        let mut map = self.map.lock();
        if let Some(c) = map.get(&*spec.name) {
            return c.clone();
        }
        let labels = ServiceLabels {
            direction: if spec.inbound {
                Direction::Inbound
            } else {
                Direction::Outbound
            },
            destination_service: spec.name.clone(),
        };
        let c = Arc::new(ServiceState {
            name: spec.name.clone(),
            sheds: self
                .metrics
                .circuit_breaker_sheds
                .get_or_create(&labels)
                .clone(),
            pool: Pool::new(
                spec.pool,
                self.tracker.clone(),
                self.socket,
                self.metrics
                    .upstream_connections
                    .get_or_create(&labels)
                    .clone(),
                self.connector.clone(),
            ),
            active_requests: AtomicUsize::new(0),
            endpoints: Mutex::new(HashMap::new()),
            aligned: Mutex::new(Aligned::default()),
            routes: Mutex::new(HashMap::new()),
            rr: AtomicUsize::new(0),
            liveness: self.liveness.clone(),
        });
        map.insert(spec.name.to_string(), c.clone());
        c
    }

    /// Aligns state with a new snapshot: drops what is gone, updates limits.
    pub fn refresh(&self, snap: &Snapshot) {
        let mut map = self.map.lock();
        map.retain(|name, _| snap.services.contains_key(name));
        for (name, c) in map.iter() {
            let spec = &snap.services[name];
            c.pool.set_limits(spec.pool);
            let keys: Vec<EndpointKey> = spec.endpoints.iter().map(|e| e.key()).collect();
            let known: HashSet<&EndpointKey> = keys.iter().collect();
            let mut states = c.endpoints.lock();
            states.retain(|k, _| known.contains(k));
            let mut live = HashSet::new();
            for (e, key) in spec.endpoints.iter().zip(&keys) {
                // An endpoint whose health returned (its sidecar's check,
                // or a linked cluster's healthy count) is no longer
                // ejected: it takes traffic with this configuration, not
                // at the ejection's end.
                if let Some(st) = states.get(key)
                    && !st.healthy.swap(e.healthy, Ordering::Relaxed)
                    && e.healthy
                {
                    st.outlier.lock().health_returned();
                }
                for p in &spec.ports {
                    live.insert(key.at(e.addr(p).port()));
                }
            }
            drop(states);
            c.pool.retain(&live);
            let routes: Vec<&str> = spec
                .routes
                .iter()
                .map(|r| &*r.name)
                .chain(std::iter::once(&*spec.default_route.name))
                .collect();
            c.routes.lock().retain(|k, _| routes.contains(&&**k));
        }
    }

    pub fn dump(&self) -> serde_json::Value {
        let map = self.map.lock();
        serde_json::Value::Object(map.iter().map(|(k, c)| (k.clone(), c.dump())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A proxy's service states with no mesh transport.
    fn states() -> ServiceStates {
        ServiceStates::new(
            TaskTracker::new(),
            SocketOptions::default(),
            Arc::new(Metrics::default()),
            None,
        )
    }

    /// A gateway error of endpoint `idx`, as outlier detection sees it.
    fn gateway_error(state: &ServiceState, spec: &Arc<ServiceSpec>, idx: usize) {
        state.observe(
            spec,
            idx,
            crate::balance::outlier::Observation::GatewayError,
            &Metrics::default(),
            Direction::Outbound,
        );
    }

    /// A clusterset service whose two endpoints are two linked clusters
    /// behind our gateway entry (one address, one port).
    fn two_clusters(settings: &str) -> Arc<ServiceSpec> {
        let yaml = format!(
            r#"
services:
  - name: catalog.shop.svc.clusterset.local
    ports: [{{port: 80, protocol: HTTP}}]
    {settings}
    endpoints:
      - {{address: 10.0.0.9, tunnelPort: 15009, viaCluster: eu-central, viaService: catalog.shop,
         identity: "spiffe://eu-central.isthmus.local", ports: [{{port: 80, targetPort: 8080}}]}}
      - {{address: 10.0.0.9, tunnelPort: 15009, viaCluster: us-east, viaService: catalog.shop,
         identity: "spiffe://us-east.isthmus.local", ports: [{{port: 80, targetPort: 8080}}]}}
"#
        );
        let snap =
            crate::config::compile::compile(&isthmus_api::parse_yaml(&yaml).unwrap()).unwrap();
        snap.services["catalog.shop.svc.clusterset.local"].clone()
    }

    /// Ring-hash points come from endpoint keys: two clusters behind one
    /// entry own points of their own (equal keys would give one of them
    /// every point's tie, so all the traffic).
    #[test]
    fn clusters_behind_one_gateway_entry_share_a_ring() {
        let spec = two_clusters("loadBalancer: {policy: RING_HASH, hashKey: {header: x-user}}");
        let states = states();
        let state = states.get(&spec);
        let mut rng = rand::rng();
        let mut seen = [0usize; 2];
        for h in 0..1000u64 {
            let hash = h.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            seen[state.pick(&spec, &[], Some(hash), &mut rng).unwrap()] += 1;
        }
        assert!(seen[0] > 200 && seen[1] > 200, "{seen:?}");
    }

    /// Every linked cluster's endpoint of a clusterset service is our
    /// gateway entry: one address and port. Outlier state, in-flight counts
    /// and the dump keep them apart by the cluster they stand for, so a
    /// failing cluster is ejected alone.
    #[test]
    fn clusters_behind_one_gateway_entry_are_ejected_apart() {
        let spec = two_clusters(
            "outlierDetection: {consecutiveGatewayErrors: 2, maxEjectionPercent: 100}",
        );
        let states = states();
        let state = states.get(&spec);
        for _ in 0..2 {
            gateway_error(&state, &spec, 0);
        }
        state.states(&spec)[1]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        let mut rng = rand::rng();
        for _ in 0..50 {
            assert_eq!(
                state.pick(&spec, &[], None, &mut rng),
                Some(1),
                "eu-central is ejected, us-east is not"
            );
        }
        let dump = state.dump();
        let eps = dump["endpoints"].as_object().unwrap();
        assert_eq!(eps.len(), 2, "{dump}");
        let central = &eps["10.0.0.9 via catalog.shop@eu-central"];
        let east = &eps["10.0.0.9 via catalog.shop@us-east"];
        assert_eq!(central["ejected"], true);
        assert_eq!(central["inFlight"], 0);
        assert_eq!(east["ejected"], false);
        assert_eq!(east["inFlight"], 1);
    }

    /// A linked cluster lost, its endpoint ejected for the failures that
    /// caused (streams reset when its gateway went): when its link is up
    /// again it takes traffic at once, not when the ejection ends (which
    /// grows with each ejection: a minute or more after a few).
    #[test]
    fn a_cluster_whose_link_returns_is_no_longer_ejected() {
        use isthmus_api::eastwest::v1::PeerState;
        let spec = two_clusters(
            "outlierDetection: {consecutiveGatewayErrors: 1, maxEjectionPercent: 100}",
        );
        let states = states();
        let state = states.get(&spec);
        let entry: std::net::SocketAddr = "10.0.0.9:15009".parse().unwrap();
        let say = |up: bool| {
            [(
                "eu-central".to_string(),
                PeerState {
                    up,
                    reason: String::new(),
                    since_unix_ms: 1,
                },
            )]
            .into()
        };
        let mut rng = rand::rng();
        let picks = |rng: &mut rand::rngs::ThreadRng| {
            (0..50)
                .filter(|_| state.pick(&spec, &[], None, rng) == Some(0))
                .count()
        };
        assert!(picks(&mut rng) > 0);
        states.liveness.set(entry, say(false));
        gateway_error(&state, &spec, 0);
        assert_eq!(picks(&mut rng), 0, "down, and ejected");
        states.liveness.set(entry, say(true));
        assert!(picks(&mut rng) > 0, "its link returned: no longer ejected");
        // A later ejection, the link up all along, stands.
        gateway_error(&state, &spec, 0);
        assert_eq!(picks(&mut rng), 0);
    }

    /// An ejected endpoint whose health check says it is back takes traffic
    /// with that configuration, not 30 s later when the ejection ends.
    #[test]
    fn an_endpoint_whose_health_returns_is_no_longer_ejected() {
        let snap = |unhealthy: bool| {
            let yaml = format!(
                "services:\n  - name: catalog\n    ports: [{{port: 80, protocol: HTTP}}]\n    outlierDetection: {{consecutiveGatewayErrors: 1, maxEjectionPercent: 100}}\n    endpoints:\n      - {{address: \"127.0.0.1:9\", unhealthy: {unhealthy}}}\n      - {{address: \"127.0.0.1:10\"}}\n"
            );
            crate::config::compile::compile(&isthmus_api::parse_yaml(&yaml).unwrap()).unwrap()
        };
        let states = states();
        let healthy = snap(false);
        let spec = healthy.services["catalog"].clone();
        let state = states.get(&spec);
        gateway_error(&state, &spec, 0);
        let ejected = |spec: &Arc<ServiceSpec>| {
            state.states(spec)[0]
                .outlier
                .lock()
                .is_ejected(Instant::now())
        };
        assert!(ejected(&spec));
        // Its check fails (the control plane marks it), then passes again.
        let sick = snap(true);
        states.refresh(&sick);
        assert!(ejected(&sick.services["catalog"]), "still ejected");
        let back = snap(false);
        states.refresh(&back);
        assert!(!ejected(&back.services["catalog"]), "health returned");
        // A reload with no change of health leaves ejections alone.
        gateway_error(&state, &back.services["catalog"], 0);
        let again = snap(false);
        states.refresh(&again);
        assert!(ejected(&again.services["catalog"]));
    }

    /// A panic while a lock of the request path is held (a bug, an
    /// allocation failure) must not poison it: every later request to that
    /// service would panic too.
    #[test]
    fn a_panic_under_a_lock_does_not_break_later_requests() {
        let snap = crate::config::compile::compile(
            &isthmus_api::parse_yaml(
                "services:\n  - name: catalog\n    ports: [{port: 80, protocol: HTTP}]\n    endpoints:\n      - {address: \"127.0.0.1:9\"}\n",
            )
            .unwrap(),
        )
        .unwrap();
        let spec = snap.services["catalog"].clone();
        let states = Arc::new(states());
        let state = states.get(&spec);
        let held = state.clone();
        let panicked = std::thread::spawn(move || {
            let _endpoints = held.endpoints.lock();
            let _aligned = held.aligned.lock();
            let _routes = held.routes.lock();
            panic!("a bug while the service state is locked");
        })
        .join();
        assert!(panicked.is_err());
        let held = states.clone();
        assert!(
            std::thread::spawn(move || {
                let _map = held.map.lock();
                panic!("a bug while the state map is locked");
            })
            .join()
            .is_err()
        );
        let again = states.get(&spec);
        let mut rng = rand::rng();
        assert_eq!(again.pick(&spec, &[], None, &mut rng), Some(0));
        gateway_error(&state, &spec, 0);
        assert!(again.dump().is_object());
    }
}
