//! Routes compiled: matches (regexes built once), splits, retries,
//! timeouts, faults, mirrors, header modifiers, redirects and rewrites.

use super::*;

pub(super) fn regex(re: &str, what: &str) -> Result<Regex, CompileError> {
    Regex::new(re).map_err(|e| CompileError::Invalid(format!("{what}: {e}")))
}

pub(super) fn compile_route(
    r: &m::HttpRoute,
    index: usize,
    service: &Arc<str>,
) -> Result<Route, CompileError> {
    let name: Arc<str> = if r.name.is_empty() {
        format!("route-{index}").into()
    } else {
        r.name.as_str().into()
    };
    let mut matches = Vec::new();
    for mm in &r.matches {
        let path = match mm.path.as_ref().and_then(|p| p.kind.clone()) {
            Some(m::path_match::Kind::Exact(p)) => Some(PathMatch::Exact(p)),
            Some(m::path_match::Kind::Prefix(p)) => Some(PathMatch::Prefix(p)),
            Some(m::path_match::Kind::Regex(p)) => Some(PathMatch::Regex(regex(&p, &name)?)),
            None => None,
        };
        let mut headers = Vec::new();
        for h in &mm.headers {
            let hname = http::HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| CompileError::Invalid(format!("{name}: header {:?}", h.name)))?;
            let value = match h.kind.clone() {
                Some(m::header_match::Kind::Exact(v)) => HeaderValueMatch::Exact(v),
                Some(m::header_match::Kind::Regex(v)) => HeaderValueMatch::Regex(regex(&v, &name)?),
                Some(m::header_match::Kind::Present(p)) => HeaderValueMatch::Present(p),
                None => HeaderValueMatch::Present(true),
            };
            headers.push(HeaderMatch {
                name: hname,
                value,
                invert: h.invert,
            });
        }
        let method = if mm.method.is_empty() {
            None
        } else {
            Some(
                http::Method::from_bytes(mm.method.as_bytes())
                    .map_err(|_| CompileError::Invalid(format!("{name}: method")))?,
            )
        };
        let mut query = Vec::new();
        for q in &mm.query_params {
            let value = match q.kind.clone() {
                Some(m::query_param_match::Kind::Exact(v)) => QueryValueMatch::Exact(v),
                Some(m::query_param_match::Kind::Regex(v)) => {
                    QueryValueMatch::Regex(regex(&v, &name)?)
                }
                None => {
                    return Err(CompileError::Invalid(format!(
                        "{name}: query parameter {:?} without a value to match",
                        q.name
                    )));
                }
            };
            query.push(QueryParamMatch {
                name: q.name.clone(),
                value,
            });
        }
        matches.push(RouteMatch {
            path,
            headers,
            method,
            query,
        });
    }
    let backends = if r.backends.is_empty() {
        vec![Backend {
            service: service.to_string(),
            port: None,
            weight: 1,
        }]
    } else {
        r.backends
            .iter()
            .map(|b| Backend {
                service: b.service.clone(),
                port: opt_port(b.port),
                weight: b.weight,
            })
            .collect()
    };
    let retry = match &r.retry {
        None => Some(default_retry()),
        Some(rp) if rp.attempts == 0 => None,
        Some(rp) => {
            let d = default_retry();
            let budget = rp.budget.map_or(d.budget, |b| BudgetSettings {
                retry_ratio: if b.retry_ratio > 0.0 {
                    b.retry_ratio
                } else {
                    0.2
                },
                min_retries_per_second: b.min_retries_per_second,
                ttl: dur(b.ttl.as_ref()).unwrap_or(Duration::from_secs(10)),
            });
            Some(RetrySettings {
                attempts: rp.attempts,
                per_try_timeout: dur(rp.per_try_timeout.as_ref()),
                retry_on: if rp.retry_on.is_empty() {
                    d.retry_on
                } else {
                    rp.retry_on
                        .iter()
                        .filter_map(|c| RetryOn::parse(c))
                        .collect()
                },
                backoff_base: dur(rp.backoff_base.as_ref()).unwrap_or(d.backoff_base),
                backoff_max: dur(rp.backoff_max.as_ref()).unwrap_or(d.backoff_max),
                budget,
            })
        }
    };
    let fault = r.fault.as_ref().map(|f| Fault {
        delay: f
            .delay
            .as_ref()
            .and_then(|d| dur(d.fixed_delay.as_ref()).map(|t| (t, d.percentage))),
        abort: f.abort.as_ref().and_then(|a| {
            let status = match a.status? {
                m::fault_injection::abort::Status::HttpStatus(s) => AbortStatus::Http(s as u16),
                m::fault_injection::abort::Status::GrpcStatus(s) => AbortStatus::Grpc(s),
            };
            Some((status, a.percentage))
        }),
    });
    let mirror = r.mirror.as_ref().map(|mi| MirrorSettings {
        service: mi.service.clone(),
        port: opt_port(mi.port),
        percentage: if mi.percentage == 0.0 {
            100.0
        } else {
            mi.percentage
        },
    });
    let rate_limit = r.rate_limit.as_ref().map(|rl| RateLimitSettings {
        per_second: rl.requests_per_second,
        burst: if rl.burst == 0 {
            rl.requests_per_second.ceil().max(1.0)
        } else {
            f64::from(rl.burst)
        },
    });
    let request_headers = r
        .request_headers
        .as_ref()
        .map(|h| header_modifier(h, &name))
        .transpose()?;
    let response_headers = r
        .response_headers
        .as_ref()
        .map(|h| header_modifier(h, &name))
        .transpose()?;
    let ports = r
        .ports
        .iter()
        .map(|p| {
            u16::try_from(*p)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| CompileError::Invalid(format!("{name}: port {p}")))
        })
        .collect::<Result<_, _>>()?;
    let path_rewrite = |p: Option<&m::PathRewrite>| match p.and_then(|p| p.kind.clone()) {
        Some(m::path_rewrite::Kind::Full(v)) => Some(PathRewrite::Full(v)),
        Some(m::path_rewrite::Kind::Prefix(v)) => Some(PathRewrite::Prefix(v)),
        None => None,
    };
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let redirect = match &r.redirect {
        None => None,
        Some(rd) => Some(Redirect {
            scheme: nonempty(&rd.scheme),
            hostname: nonempty(&rd.hostname),
            port: match rd.port {
                0 => None,
                p => Some(
                    u16::try_from(p)
                        .map_err(|_| CompileError::Invalid(format!("{name}: redirect port {p}")))?,
                ),
            },
            path: path_rewrite(rd.path.as_ref()),
            status: match rd.status_code {
                0 => http::StatusCode::FOUND,
                c => u16::try_from(c)
                    .ok()
                    .and_then(|c| http::StatusCode::from_u16(c).ok())
                    .filter(|c| c.is_redirection())
                    .ok_or_else(|| CompileError::Invalid(format!("{name}: redirect status {c}")))?,
            },
        }),
    };
    let rewrite = match &r.rewrite {
        None => None,
        Some(rw) => Some(Rewrite {
            hostname: match nonempty(&rw.hostname) {
                None => None,
                Some(h) => Some(http::HeaderValue::from_str(&h).map_err(|_| {
                    CompileError::Invalid(format!("{name}: rewrite hostname {h:?}"))
                })?),
            },
            path: path_rewrite(rw.path.as_ref()),
        }),
    };
    Ok(Route {
        name,
        matches,
        backends,
        timeout: dur(r.timeout.as_ref()),
        retry,
        fault,
        mirror,
        rate_limit,
        request_headers,
        response_headers,
        ports,
        redirect,
        rewrite,
    })
}

pub(super) fn header_modifier(
    h: &m::HeaderModifier,
    route: &str,
) -> Result<HeaderModifier, CompileError> {
    let name = |n: &str| {
        http::HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| CompileError::Invalid(format!("{route}: header name {n:?}")))
    };
    let pair = |v: &m::HeaderValue| {
        let value = http::HeaderValue::from_str(&v.value)
            .map_err(|_| CompileError::Invalid(format!("{route}: the value of {}", v.name)))?;
        Ok::<_, CompileError>((name(&v.name)?, value))
    };
    Ok(HeaderModifier {
        set: h.set.iter().map(pair).collect::<Result<_, _>>()?,
        add: h.add.iter().map(pair).collect::<Result<_, _>>()?,
        remove: h.remove.iter().map(|n| name(n)).collect::<Result<_, _>>()?,
    })
}
