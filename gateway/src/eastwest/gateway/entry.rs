//! The local entry: this cluster's workloads open mTLS HTTP/2 CONNECTs
//! naming the peer cluster (`isthmus-cluster`); each is opened on that
//! peer's link and the two streams joined.

use super::*;

impl Gateway {
    /// Serves this cluster's workloads on `listener` (mTLS HTTP/2 CONNECT)
    /// until `stop`. Callers must be workloads of our own trust domain.
    pub async fn serve_local(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        stop: CancellationToken,
    ) {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.server.clone());
        // No handshake before the gateway holds its certificate: it would
        // fail with the alert access_denied, which reads like a refusal of
        // the caller (this cluster's control plane logged it at every
        // gateway start). Callers wait in the backlog meanwhile.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = self.tls.identity().wait_held() => {}
        }
        loop {
            let (tcp, remote) = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(_) => continue,
                },
            };
            let _ = tcp.set_nodelay(true);
            let (me, acceptor, stop) = (self.clone(), acceptor.clone(), stop.clone());
            self.tasks.spawn(async move {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                else {
                    return;
                };
                let ours = me.tls.own_id().map(|i| i.trust_domain().to_string());
                let Some(caller) = isthmus_mesh::tls::peer_id(tls.get_ref().1)
                    .filter(|id| Some(id.trust_domain()) == ours.as_deref())
                else {
                    tracing::warn!(%remote, "local gateway entry refused: not a workload of this mesh");
                    return;
                };
                let caller = Arc::new(caller);
                let served = isthmus_mesh::h2connect::server::serve(
                    tls,
                    &isthmus_mesh::h2connect::Settings::MESH,
                    &stop,
                    |inc| {
                        let (me, caller) = (me.clone(), caller.clone());
                        me.tasks
                            .clone()
                            .spawn(async move { me.forward(inc, caller).await });
                    },
                );
                if let Err(e) = served.await {
                    tracing::debug!(%remote, "local gateway entry connection ended: {e}");
                }
            });
        }
    }

    /// Carries one stream of a workload to the peer cluster it names.
    async fn forward(&self, inc: isthmus_mesh::h2connect::Incoming, caller: Arc<SpiffeId>) {
        let req = inc.request();
        if req.method() != Method::CONNECT {
            return inc.refuse(crate::eastwest::refused(
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT only",
            ));
        }
        let Some(authority) = req.uri().authority().map(|a| a.to_string()) else {
            return inc.refuse(crate::eastwest::refused(
                StatusCode::BAD_REQUEST,
                "no authority",
            ));
        };
        if authority == isthmus_mesh::headers::PEERS_AUTHORITY {
            return self.serve_liveness(inc).await;
        }
        let Some(cluster) = req
            .headers()
            .get(CLUSTER_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
        else {
            return inc.refuse(crate::eastwest::refused(
                StatusCode::BAD_REQUEST,
                &format!("name the peer cluster in {CLUSTER_HEADER}"),
            ));
        };
        let count = |status: StatusCode| {
            self.metrics
                .eastwest_connects
                .get_or_create(&PeerResultLabels {
                    peer: cluster.clone(),
                    result: status.as_u16().to_string(),
                })
                .inc();
        };
        let source = crate::eastwest::Source {
            cluster: self.cluster.clone(),
            identity: Some(caller.to_string()),
            traceparent: req
                .headers()
                .get(crate::eastwest::TRACEPARENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        };
        let opened = match self.open_on(&cluster, &authority, &source).await {
            Ok(x) => x,
            Err(GatewayError::Link(LinkError::Refused { status, reason, .. })) => {
                count(status);
                return inc.refuse(crate::eastwest::refused(status, &reason));
            }
            Err(e) => {
                if matches!(e, GatewayError::Link(_)) {
                    count(e.status());
                }
                let mut r = crate::eastwest::refused(e.status(), &e.to_string());
                if e.untrusted() {
                    // The caller tells a trust failure from an outage.
                    r.headers_mut().insert(
                        LINK_FAILURE_HEADER,
                        http::HeaderValue::from_static(UNTRUSTED),
                    );
                }
                return inc.refuse(r);
            }
        };
        let link = (opened.send, opened.recv);
        // The caller learns which transport carries it (the control plane
        // shows it on the ClusterLink), and the port the peer joined.
        let mut headers = http::HeaderMap::new();
        headers.insert(
            TRANSPORT_HEADER,
            http::HeaderValue::from_static(opened.transport.as_str()),
        );
        crate::eastwest::set_target_port(&mut headers, opened.target_port);
        let local = match inc.accept_with(headers) {
            Ok(s) => s.into_split(),
            Err(e) => return tracing::debug!("local CONNECT not established: {e}"),
        };
        count(StatusCode::OK);
        tracing::debug!(%caller, %cluster, %authority, "tunnelled to the peer");
        let open = self
            .metrics
            .eastwest_open_streams
            .get_or_create(&PeerLabels {
                peer: cluster.clone(),
            })
            .clone();
        open.inc();
        match crate::splice::splice(local, link).await {
            Ok((sent, received)) => {
                for (direction, n) in [("sent", sent), ("received", received)] {
                    self.metrics
                        .eastwest_bytes
                        .get_or_create(&PeerDirectionLabels {
                            peer: cluster.clone(),
                            direction,
                        })
                        .inc_by(n);
                }
            }
            Err((side, e)) => {
                let by = match side {
                    crate::splice::Side::A => "the workload",
                    crate::splice::Side::B => "the peer",
                };
                tracing::debug!(%cluster, "cross-cluster stream aborted by {by}: {e}");
            }
        }
        open.dec();
    }
}
