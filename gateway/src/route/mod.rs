//! Route selection: which route of a service a request takes, and which
//! backend of a weighted split it goes to. Pure functions over a compiled
//! route table and a view of the request; no I/O, no clocks. Randomness is
//! passed in so tests are deterministic.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method};
use regex::Regex;

use crate::policy::fault::Fault;
use crate::policy::retry::RetrySettings;

/// How a path is matched.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    /// Whole segments: "/api" matches "/api", "/api/" and "/api/x", not "/apix".
    Prefix(String),
    /// Anchored at both ends.
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub enum HeaderValueMatch {
    Exact(String),
    Regex(Regex),
    Present(bool),
}

#[derive(Debug, Clone)]
pub struct HeaderMatch {
    pub name: http::HeaderName,
    pub value: HeaderValueMatch,
    pub invert: bool,
}

/// A query parameter's first value, exact or by an anchored regex.
#[derive(Debug, Clone)]
pub struct QueryParamMatch {
    pub name: String,
    pub value: QueryValueMatch,
}

#[derive(Debug, Clone)]
pub enum QueryValueMatch {
    Exact(String),
    Regex(Regex),
}

/// All conditions must hold.
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    pub path: Option<PathMatch>,
    pub headers: Vec<HeaderMatch>,
    pub method: Option<Method>,
    pub query: Vec<QueryParamMatch>,
}

/// Header edits: remove, then set (replacing), then add (appending).
#[derive(Debug, Clone, Default)]
pub struct HeaderModifier {
    pub set: Vec<(http::HeaderName, http::HeaderValue)>,
    pub add: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove: Vec<http::HeaderName>,
}

impl HeaderModifier {
    pub fn apply(&self, h: &mut HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
    }
}

/// A backend of a weighted split: a service and its port (None = the port
/// the request was addressed to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub service: String,
    pub port: Option<u16>,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct MirrorSettings {
    pub service: String,
    pub port: Option<u16>,
    pub percentage: f64,
}

#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    pub per_second: f64,
    pub burst: f64,
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: Arc<str>,
    /// Any of these; empty matches everything.
    pub matches: Vec<RouteMatch>,
    pub backends: Vec<Backend>,
    pub timeout: Option<Duration>,
    pub retry: Option<RetrySettings>,
    pub fault: Option<Fault>,
    pub mirror: Option<MirrorSettings>,
    pub rate_limit: Option<RateLimitSettings>,
    pub request_headers: Option<HeaderModifier>,
    pub response_headers: Option<HeaderModifier>,
    /// The service ports it applies to; empty: all.
    pub ports: Vec<u16>,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<Rewrite>,
}

/// A new path: whole, or the matched prefix replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRewrite {
    Full(String),
    Prefix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathRewrite>,
    pub status: http::StatusCode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    pub hostname: Option<http::HeaderValue>,
    pub path: Option<PathRewrite>,
}

impl Route {
    /// The path prefix this route matched `path` with, if it matched by one.
    pub fn matched_prefix(&self, path: &str) -> Option<&str> {
        self.matches.iter().find_map(|m| match &m.path {
            Some(p @ PathMatch::Prefix(prefix)) if p.matches(path) => Some(prefix.as_str()),
            _ => None,
        })
    }
}

/// `path` rewritten (Gateway API): a full replacement, or `prefix` (the
/// matched one, whole segments) replaced, keeping one `/` between the new
/// prefix and the rest: `/foo/x` with `/foo`→`/bar` is `/bar/x`, with
/// `/foo`→`/` it is `/x`.
pub fn rewrite_path(path: &str, matched: Option<&str>, rw: &PathRewrite) -> String {
    match rw {
        PathRewrite::Full(p) => p.clone(),
        PathRewrite::Prefix(replacement) => {
            let prefix = matched.unwrap_or("/").trim_end_matches('/');
            let rest = path.get(prefix.len()..).unwrap_or("");
            let rest = rest.trim_start_matches('/');
            let mut out = format!("{}/{rest}", replacement.trim_end_matches('/'));
            // Nothing after the prefix: the replacement as written.
            if rest.is_empty() && !replacement.ends_with('/') && out.len() > 1 {
                out.pop();
            }
            out
        }
    }
}

/// The Location of a redirect for a request to `host[:port]` over
/// `scheme` with `path` and `query`.
pub fn redirect_location(
    r: &Redirect,
    scheme: &str,
    host: &str,
    port: Option<u16>,
    path: &str,
    query: Option<&str>,
    matched: Option<&str>,
) -> String {
    let to_scheme = r.scheme.as_deref().unwrap_or(scheme);
    let host = r.hostname.as_deref().unwrap_or(host);
    // A changed scheme drops the request's port (the new scheme's default
    // applies) unless one is given.
    let port = r.port.or(if to_scheme == scheme { port } else { None });
    let default = match to_scheme {
        "https" => 443,
        _ => 80,
    };
    let port = port.filter(|p| *p != default);
    let path = r
        .path
        .as_ref()
        .map_or_else(|| path.to_string(), |rw| rewrite_path(path, matched, rw));
    let mut out = format!("{to_scheme}://{host}");
    if let Some(p) = port {
        out.push_str(&format!(":{p}"));
    }
    out.push_str(&path);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// What route matching looks at.
pub struct RequestView<'a> {
    /// The service port the request is for.
    pub port: u16,
    pub method: &'a Method,
    pub path: &'a str,
    /// The query string (after `?`), if any.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// The first value of parameter `name` in `query`, decoded as forms
/// encode it (`%XX`, `+` for a space).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

impl QueryParamMatch {
    pub fn matches(&self, query: Option<&str>) -> bool {
        let Some(v) = query.and_then(|q| query_param(q, &self.name)) else {
            return false;
        };
        match &self.value {
            QueryValueMatch::Exact(want) => v == want.as_str(),
            QueryValueMatch::Regex(re) => re
                .find(&v)
                .is_some_and(|m| m.start() == 0 && m.end() == v.len()),
        }
    }
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                let p = p.trim_end_matches('/');
                if p.is_empty() {
                    return true;
                }
                path == p || (path.starts_with(p) && path.as_bytes().get(p.len()) == Some(&b'/'))
            }
            PathMatch::Regex(re) => re
                .find(path)
                .is_some_and(|m| m.start() == 0 && m.end() == path.len()),
        }
    }
}

impl HeaderMatch {
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        let values = headers.get_all(&self.name);
        let hit = match &self.value {
            HeaderValueMatch::Present(want) => values.iter().next().is_some() == *want,
            HeaderValueMatch::Exact(v) => values.iter().any(|h| h.as_bytes() == v.as_bytes()),
            HeaderValueMatch::Regex(re) => values.iter().any(|h| {
                h.to_str().is_ok_and(|s| {
                    re.find(s)
                        .is_some_and(|m| m.start() == 0 && m.end() == s.len())
                })
            }),
        };
        hit != self.invert
    }
}

impl RouteMatch {
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        self.method.as_ref().is_none_or(|m| m == req.method)
            && self.path.as_ref().is_none_or(|p| p.matches(req.path))
            && self.headers.iter().all(|h| h.matches(req.headers))
            && self.query.iter().all(|q| q.matches(req.query))
    }
}

impl Route {
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        (self.ports.is_empty() || self.ports.contains(&req.port))
            && (self.matches.is_empty() || self.matches.iter().any(|m| m.matches(req)))
    }
}

/// The first route that matches, in order.
pub fn select<'r>(routes: &'r [Route], req: &RequestView<'_>) -> Option<&'r Route> {
    routes.iter().find(|r| r.matches(req))
}

/// Picks a backend of a weighted split. `r` is uniform in [0, 1).
/// Backends with weight 0 are never chosen; None when all weigh 0.
pub fn split(backends: &[Backend], r: f64) -> Option<&Backend> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut point = (r.clamp(0.0, 1.0) * total as f64) as u64;
    if point >= total {
        point = total - 1;
    }
    for b in backends {
        let w = u64::from(b.weight);
        if point < w {
            return Some(b);
        }
        point -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn view<'a>(m: &'a Method, p: &'a str, h: &'a HeaderMap) -> RequestView<'a> {
        RequestView {
            port: 80,
            method: m,
            path: p,
            query: None,
            headers: h,
        }
    }

    #[test]
    fn exact_prefix_and_regex_paths() {
        let exact = PathMatch::Exact("/a".into());
        assert!(exact.matches("/a"));
        assert!(!exact.matches("/a/"));
        assert!(!exact.matches("/ab"));

        let prefix = PathMatch::Prefix("/api".into());
        for p in ["/api", "/api/", "/api/v1/x"] {
            assert!(prefix.matches(p), "{p}");
        }
        for p in ["/apix", "/ap", "/", "/v1/api"] {
            assert!(!prefix.matches(p), "{p}");
        }
        let slash = PathMatch::Prefix("/api/".into());
        assert!(slash.matches("/api") && slash.matches("/api/x") && !slash.matches("/apix"));
        let root = PathMatch::Prefix("/".into());
        assert!(root.matches("/") && root.matches("/anything"));

        let re = PathMatch::Regex(Regex::new("/items/[0-9]+").unwrap());
        assert!(re.matches("/items/42"));
        assert!(!re.matches("/items/42/x"), "regex is anchored at the end");
        assert!(!re.matches("/x/items/42"), "regex is anchored at the start");
    }

    #[test]
    fn header_matches_and_inversion() {
        let mut h = HeaderMap::new();
        h.insert("x-canary", HeaderValue::from_static("always"));
        h.append("x-multi", HeaderValue::from_static("a"));
        h.append("x-multi", HeaderValue::from_static("b"));
        let m = |value, invert| HeaderMatch {
            name: http::HeaderName::from_static("x-canary"),
            value,
            invert,
        };
        assert!(m(HeaderValueMatch::Exact("always".into()), false).matches(&h));
        assert!(!m(HeaderValueMatch::Exact("alway".into()), false).matches(&h));
        assert!(m(HeaderValueMatch::Exact("never".into()), true).matches(&h));
        assert!(m(HeaderValueMatch::Present(true), false).matches(&h));
        assert!(!m(HeaderValueMatch::Present(false), false).matches(&h));
        assert!(m(HeaderValueMatch::Regex(Regex::new("al.*").unwrap()), false).matches(&h));
        assert!(!m(HeaderValueMatch::Regex(Regex::new("al").unwrap()), false).matches(&h));
        let multi = HeaderMatch {
            name: http::HeaderName::from_static("x-multi"),
            value: HeaderValueMatch::Exact("b".into()),
            invert: false,
        };
        assert!(multi.matches(&h), "any value of a repeated header");
        let absent = HeaderMatch {
            name: http::HeaderName::from_static("x-none"),
            value: HeaderValueMatch::Present(false),
            invert: false,
        };
        assert!(absent.matches(&h));
    }

    fn route(name: &str, matches: Vec<RouteMatch>) -> Route {
        Route {
            name: name.into(),
            matches,
            backends: vec![],
            timeout: None,
            retry: None,
            fault: None,
            mirror: None,
            rate_limit: None,
            request_headers: None,
            response_headers: None,
            ports: vec![],
            redirect: None,
            rewrite: None,
        }
    }

    #[test]
    fn first_matching_route_wins_and_conditions_combine() {
        let get_api = RouteMatch {
            path: Some(PathMatch::Prefix("/api".into())),
            method: Some(Method::GET),
            headers: vec![],
            query: vec![],
        };
        let canary = RouteMatch {
            headers: vec![HeaderMatch {
                name: http::HeaderName::from_static("x-canary"),
                value: HeaderValueMatch::Exact("always".into()),
                invert: false,
            }],
            ..Default::default()
        };
        let routes = vec![
            route("canary", vec![canary]),
            route("api", vec![get_api]),
            route("default", vec![]),
        ];
        let mut h = HeaderMap::new();
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(
            &*select(&routes, &view(&get, "/api/x", &h)).unwrap().name,
            "api"
        );
        assert_eq!(
            &*select(&routes, &view(&post, "/api/x", &h)).unwrap().name,
            "default",
            "method must match too"
        );
        h.insert("x-canary", HeaderValue::from_static("always"));
        assert_eq!(
            &*select(&routes, &view(&get, "/api/x", &h)).unwrap().name,
            "canary"
        );
        assert!(select(&routes[..2], &view(&post, "/", &HeaderMap::new())).is_none());
    }

    fn b(s: &str, w: u32) -> Backend {
        Backend {
            service: s.into(),
            port: None,
            weight: w,
        }
    }

    #[test]
    fn split_follows_weights_exactly_over_the_unit_interval() {
        let bs = vec![b("v1", 90), b("v2", 10), b("off", 0)];
        let mut counts = [0; 3];
        let n = 10_000;
        for i in 0..n {
            let r = i as f64 / n as f64;
            let pick = split(&bs, r).unwrap();
            counts[bs.iter().position(|x| x == pick).unwrap()] += 1;
        }
        assert_eq!(counts, [9000, 1000, 0]);
        assert_eq!(split(&bs, 0.999_999_9).unwrap().service, "v2");
        assert_eq!(
            split(&bs, 1.0).unwrap().service,
            "v2",
            "r=1 clamps to the last"
        );
        assert!(split(&[b("a", 0)], 0.5).is_none());
        assert!(split(&[], 0.5).is_none());
    }

    #[test]
    fn query_params_match_their_first_decoded_value_and_all_must_hold() {
        let canary = |value| QueryParamMatch {
            name: "canary".into(),
            value,
        };
        let exact = canary(QueryValueMatch::Exact("true".into()));
        for (q, want) in [
            (Some("canary=true"), true),
            (Some("a=1&canary=true"), true),
            (Some("canary=%74rue"), true),
            (Some("canary=false&canary=true"), false),
            (Some("canary=TRUE"), false),
            (Some("Canary=true"), false),
            (Some("canary"), false),
            (Some(""), false),
            (None, false),
        ] {
            assert_eq!(exact.matches(q), want, "{q:?}");
        }
        let re = canary(QueryValueMatch::Regex(Regex::new("t.*").unwrap()));
        assert!(re.matches(Some("canary=true")));
        assert!(!re.matches(Some("canary=xtrue")), "anchored");
        let spaced = QueryParamMatch {
            name: "q".into(),
            value: QueryValueMatch::Exact("a b".into()),
        };
        assert!(spaced.matches(Some("q=a+b")) && spaced.matches(Some("q=a%20b")));

        // A route on /api with the parameter does not take /api without it.
        let m = RouteMatch {
            path: Some(PathMatch::Prefix("/api".into())),
            query: vec![exact],
            ..Default::default()
        };
        let h = HeaderMap::new();
        let get = Method::GET;
        let view = |query| RequestView {
            port: 80,
            method: &get,
            path: "/api/items",
            query,
            headers: &h,
        };
        assert!(m.matches(&view(Some("canary=true"))));
        assert!(!m.matches(&view(None)));
        assert!(!m.matches(&view(Some("canary=false"))));
    }

    #[test]
    fn header_modifiers_remove_then_set_then_add() {
        use http::HeaderName as N;
        let m = HeaderModifier {
            set: vec![(N::from_static("x-env"), HeaderValue::from_static("canary"))],
            add: vec![(N::from_static("x-tag"), HeaderValue::from_static("b"))],
            remove: vec![N::from_static("x-secret"), N::from_static("x-env")],
        };
        let mut h = HeaderMap::new();
        h.append("x-env", HeaderValue::from_static("prod"));
        h.append("x-env", HeaderValue::from_static("prod2"));
        h.insert("x-tag", HeaderValue::from_static("a"));
        h.insert("x-secret", HeaderValue::from_static("s"));
        m.apply(&mut h);
        assert_eq!(h.get_all("x-env").iter().collect::<Vec<_>>(), ["canary"]);
        assert_eq!(h.get_all("x-tag").iter().collect::<Vec<_>>(), ["a", "b"]);
        assert!(!h.contains_key("x-secret"));
    }

    #[test]
    fn a_route_for_some_ports_leaves_the_others_alone() {
        let mut r = route("grpc-only", vec![]);
        r.ports = vec![9090];
        let (h, get) = (HeaderMap::new(), Method::GET);
        let at = |port| RequestView {
            port,
            method: &get,
            path: "/",
            query: None,
            headers: &h,
        };
        assert!(r.matches(&at(9090)));
        assert!(!r.matches(&at(80)));
    }

    #[test]
    fn paths_are_rewritten_as_the_gateway_api_says() {
        let prefix = |p: &str| PathRewrite::Prefix(p.into());
        for (path, matched, to, want) in [
            ("/foo/x", "/foo", "/bar", "/bar/x"),
            ("/foo", "/foo", "/bar", "/bar"),
            ("/foo/", "/foo", "/bar", "/bar"),
            ("/foo/x", "/foo", "/", "/x"),
            ("/foo", "/foo", "/", "/"),
            ("/foo/x/y", "/foo/", "/bar/", "/bar/x/y"),
            ("/foo/x", "/", "/bar", "/bar/foo/x"),
        ] {
            assert_eq!(
                rewrite_path(path, Some(matched), &prefix(to)),
                want,
                "{path} {matched}->{to}"
            );
        }
        assert_eq!(
            rewrite_path("/a/b", None, &PathRewrite::Full("/c".into())),
            "/c"
        );
    }

    #[test]
    fn redirects_keep_what_they_do_not_change() {
        let base = Redirect {
            scheme: None,
            hostname: None,
            port: None,
            path: None,
            status: http::StatusCode::FOUND,
        };
        let loc = |r: &Redirect, port| {
            redirect_location(
                r,
                "http",
                "shop.example",
                port,
                "/old/x",
                Some("a=1"),
                Some("/old"),
            )
        };
        assert_eq!(loc(&base, None), "http://shop.example/old/x?a=1");
        assert_eq!(loc(&base, Some(8080)), "http://shop.example:8080/old/x?a=1");
        let https = Redirect {
            scheme: Some("https".into()),
            ..base.clone()
        };
        assert_eq!(
            loc(&https, Some(8080)),
            "https://shop.example/old/x?a=1",
            "a new scheme drops the port"
        );
        let moved = Redirect {
            hostname: Some("new.example".into()),
            port: Some(8443),
            path: Some(PathRewrite::Prefix("/new".into())),
            ..https
        };
        assert_eq!(loc(&moved, None), "https://new.example:8443/new/x?a=1");
    }
}
