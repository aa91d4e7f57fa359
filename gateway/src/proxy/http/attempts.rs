//! The attempts of one request: pick an endpoint not yet tried, the
//! circuit breakers, one try under the per-try timeout, outlier feedback,
//! then what `policy::attempts` decides (retry after a backoff within the
//! budget, or stop).

use super::*;

/// Decrements outstanding-request counters when the response is done.
pub(super) struct InFlight {
    pub(super) endpoint: Arc<EndpointState>,
    pub(super) state: Arc<ServiceState>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.state.active_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A successful attempt: the upstream response and what must live until
/// its body ends (an HTTP/1.1 body holds its own connection; an HTTP/2
/// stream's lease is kept here).
pub(super) struct Upstream {
    pub(super) response: Response<UpBody>,
    pub(super) lease: Option<Lease>,
    pub(super) in_flight: InFlight,
}

#[allow(clippy::too_many_arguments)] // the request's whole context, passed once
pub(super) async fn attempts(
    proxy: &Arc<Proxy>,
    state: &Arc<ServiceState>,
    spec: &Arc<ServiceSpec>,
    port: &PortSpec,
    route: &Route,
    rstate: &crate::proxy::service_state::RouteState,
    mut parts: http::request::Parts,
    body: ReqBody,
    recording: Option<&crate::proxy::body::Recording>,
    authority: &str,
    version: Version,
    hash: Option<u64>,
    rec: &mut Record,
    direction: Direction,
) -> Result<Upstream, ProxyError> {
    // The upstream head is shaped once; each attempt writes it as it is
    // (HTTP/1.1) or clones it (HTTP/2).
    parts.uri = shape_for_upstream(
        &parts.uri,
        &mut parts.headers,
        authority,
        version == Version::Http2,
        false,
    )
    .map_err(|e| ProxyError::Reset(format!("cannot build upstream request: {e}")))?;
    parts.version = match version {
        Version::Http1 => http::Version::HTTP_11,
        Version::Http2 => http::Version::HTTP_2,
    };
    let mut next_body = Some(body);
    let mut tried: Vec<usize> = Vec::new();
    let mut moved_to = None;
    let mut plan = Attempts::new(Plan::Http(route.retry.as_ref()));
    while let Some(body) = next_body.take() {
        let idx = match moved_to.take() {
            Some(idx) => Some(idx),
            None => {
                let mut rng = rand::rng();
                state.pick(spec, &tried, hash, &mut rng)
            }
        };
        let Some(idx) = idx else {
            return Err(ProxyError::NoHealthy(spec.name.to_string()));
        };
        tried.push(idx);
        let addr = spec.endpoints[idx].addr(port);
        rec.upstream = Some(addr);
        rec.chose(&spec.endpoints[idx]);
        rec.attempts += 1;
        if rec.attempts > 1 {
            parts
                .headers
                .insert("x-isthmus-attempt", HeaderValue::from(rec.attempts));
        }
        let per_try = route.retry.as_ref().and_then(|r| r.per_try_timeout);
        let once = attempt_once(state, spec, idx, addr, version, &parts, body);
        let result = match per_try {
            Some(t) => match tokio::time::timeout(t, once).await {
                Ok(r) => r,
                Err(_) => Err(ProxyError::PerTryTimeout(t)),
            },
            None => once.await,
        };
        let outcome = match &result {
            // Believed only from a sidecar reached over mTLS.
            Ok(up)
                if spec.endpoints[idx].tunnel.is_some()
                    && up
                        .response
                        .headers()
                        .contains_key(isthmus_mesh::headers::UNPROCESSED_HEADER) =>
            {
                Outcome::Unprocessed
            }
            Ok(up) => Outcome::Response {
                status: up.response.status(),
                grpc_status: grpc_status_of(up.response.headers()),
            },
            Err(ProxyError::Connect(_)) => Outcome::ConnectFailure,
            Err(ProxyError::Refused(_)) => Outcome::Unprocessed,
            Err(ProxyError::PerTryTimeout(_)) => Outcome::Timeout,
            Err(ProxyError::Reset(_)) => Outcome::Reset,
            // Shedding is not the endpoint's fault, nor worth a retry.
            Err(_) => return result,
        };
        let observation = match outcome {
            Outcome::Response { status, .. } => Observation::from_status(status.as_u16()),
            _ => Observation::GatewayError,
        };
        state.observe(spec, idx, observation, &proxy.metrics, direction);
        let mut ask = LoopAsk {
            state,
            spec,
            tried: &tried,
            hash,
            recording,
            rstate,
            replay: None,
            another: None,
        };
        let action = plan.next(outcome, &mut ask);
        let LoopAsk {
            replay, another, ..
        } = ask;
        let labels = || RouteLabels {
            destination_service: spec.name.clone(),
            route: route.name.clone(),
        };
        match action {
            Action::Stop(Stop::BudgetExhausted) => {
                proxy
                    .metrics
                    .retry_budget_exhausted
                    .get_or_create(&labels())
                    .inc();
                return result;
            }
            Action::Stop(_) => return result,
            Action::Move => {
                proxy.metrics.moves.get_or_create(&labels()).inc();
                discard(result);
                moved_to = another;
                next_body = replay;
            }
            Action::Retry { backoff } => {
                proxy.metrics.retries.get_or_create(&labels()).inc();
                discard(result);
                tokio::time::sleep(backoff).await;
                next_body = replay;
            }
        }
    }
    Err(ProxyError::NoHealthy(spec.name.to_string()))
}

/// An answer not forwarded (its request moves or is retried). A small
/// one is read to its end in the background and its connection goes back
/// to the pool: an HTTP/1.1 connection dropped mid-answer is closed, and
/// the next request to that endpoint would pay for a new one (through
/// the gateways, a tunnel and a TLS handshake across the WAN).
fn discard(result: Result<Upstream, ProxyError>) {
    let Ok(Upstream {
        response,
        lease,
        in_flight,
    }) = result
    else {
        return;
    };
    drop(in_flight);
    let body = response.into_body();
    let Some(lease) = lease.filter(|_| small_known_length(&http_body::Body::size_hint(&body)))
    else {
        return;
    };
    tokio::spawn(async move {
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), read_all(body)).await {
            lease.release();
        }
    });
}

/// What the attempt loop answers `policy::attempts` (each asked only when
/// it decides).
struct LoopAsk<'a> {
    state: &'a ServiceState,
    spec: &'a Arc<ServiceSpec>,
    tried: &'a [usize],
    hash: Option<u64>,
    recording: Option<&'a crate::proxy::body::Recording>,
    rstate: &'a crate::proxy::service_state::RouteState,
    /// The body to send again, once asked for.
    replay: Option<ReqBody>,
    /// The endpoint a move goes to, once found.
    another: Option<usize>,
}

impl Ask for LoopAsk<'_> {
    fn replayable(&mut self) -> bool {
        if self.replay.is_none() {
            self.replay = self.recording.and_then(|r| r.replay());
        }
        self.replay.is_some()
    }

    fn another_endpoint(&mut self) -> bool {
        let mut rng = rand::rng();
        // `pick` falls back to tried endpoints when nothing else is left;
        // a move never goes back to one.
        self.another = self
            .state
            .pick(self.spec, self.tried, self.hash, &mut rng)
            .filter(|i| !self.tried.contains(i));
        self.another.is_some()
    }

    fn move_budget(&mut self) -> bool {
        self.rstate.withdraw_move(Instant::now())
    }

    fn budget(&mut self) -> bool {
        self.rstate.withdraw(Instant::now())
    }

    fn jitter(&mut self) -> f64 {
        rand::rng().random()
    }
}

pub(super) async fn attempt_once(
    state: &Arc<ServiceState>,
    spec: &Arc<ServiceSpec>,
    idx: usize,
    addr: SocketAddr,
    version: Version,
    head: &http::request::Parts,
    body: ReqBody,
) -> Result<Upstream, ProxyError> {
    let limit = spec.pool.max_requests;
    if state.active_requests.fetch_add(1, Ordering::AcqRel) >= limit {
        state.active_requests.fetch_sub(1, Ordering::AcqRel);
        state.sheds.inc();
        return Err(ProxyError::Overflow(crate::pool::PoolError::Overflow {
            what: "max requests",
            limit,
        }));
    }
    let endpoint = state.states(spec)[idx].clone();
    endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
    let in_flight = InFlight {
        endpoint,
        state: state.clone(),
    };
    let mut lease = state
        .pool
        .acquire(&spec.endpoints[idx], addr, version)
        .await
        .map_err(|e| match e {
            e @ crate::pool::PoolError::Overflow { .. } => {
                state.sheds.inc();
                ProxyError::Overflow(e)
            }
            e => ProxyError::Connect(e),
        })?;
    match lease.sender() {
        Sender::H1(conn) => match conn.send(head, body).await {
            Ok(mut exchange) => Ok(Upstream {
                response: {
                    let response = std::mem::take(&mut exchange.head.response);
                    let body = if exchange.head.upgraded {
                        H1Body::upgraded(lease, exchange)
                    } else {
                        H1Body::new(lease, exchange)
                    };
                    response.map(|()| UpBody::H1(body))
                },
                lease: None,
                in_flight,
            }),
            // The client's body failing is not the endpoint's fault: no
            // retry, no outlier mark.
            Err(e) if e.is_downstream() => Err(ProxyError::DownstreamBody(e.to_string())),
            Err(e) if e.not_sent() => Err(ProxyError::Refused(e.to_string())),
            Err(e) => Err(ProxyError::Reset(e.to_string())),
        },
        Sender::H2(s) => match s.send_request(clone_request(head, body)).await {
            Ok(response) => Ok(Upstream {
                response: response.map(UpBody::H2),
                lease: Some(lease),
                in_flight,
            }),
            // RFC 9113 §8.7: a stream refused is one the server did not
            // process.
            Err(e) if refused_stream(&e) => {
                Err(ProxyError::Refused(format!("HTTP/2 REFUSED_STREAM: {e}")))
            }
            Err(e) => Err(ProxyError::Reset(e.to_string())),
        },
    }
}

/// Whether an HTTP/2 request failed because the server refused its
/// stream (RST_STREAM or GOAWAY with REFUSED_STREAM): nothing of it was
/// processed, so it may go elsewhere whatever its method.
pub(super) fn refused_stream(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        cur = err.source();
    }
    false
}

/// An owned copy of a request head with `body`, for hyper's HTTP/2 client.
pub(super) fn clone_request(head: &http::request::Parts, body: ReqBody) -> Request<ReqBody> {
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    req
}
