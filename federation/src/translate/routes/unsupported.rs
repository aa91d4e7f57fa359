//! What a route asks that we cannot honour, named by field: the rule is
//! then left out and the route says why (`UnsupportedValue`), never
//! dropped silently. Unknown fields are kept by the resource types so
//! they can be named here.

use super::*;

/// What an HTTPRoute rule asks that we cannot honour, by field.
pub(super) fn unsupported_http(r: &crate::resources::gateway_api::HttpRouteRule) -> Vec<String> {
    let mut out: Vec<String> = r.other.keys().cloned().collect();
    for (j, m) in r.matches.iter().enumerate() {
        let at = format!("matches[{j}]");
        out.extend(m.other.keys().map(|k| format!("{at}.{k}")));
        if let Some(p) = &m.path
            && !["Exact", "PathPrefix", "RegularExpression"].contains(&p.match_type.as_str())
        {
            out.push(format!("{at}.path.type {}", p.match_type));
        }
        for (what, list) in [("headers", &m.headers), ("queryParams", &m.query_params)] {
            for (k, h) in list.iter().enumerate() {
                if let Some(t) = &h.match_type
                    && t != "Exact"
                    && t != "RegularExpression"
                {
                    out.push(format!("{at}.{what}[{k}].type {t}"));
                }
            }
        }
    }
    out.extend(unsupported_filters(&r.filters));
    out.extend(unsupported_backends(&r.backend_refs));
    let prefix_replaced = r.filters.iter().any(|f| {
        [
            f.request_redirect.as_ref().and_then(|x| x.path.as_ref()),
            f.url_rewrite.as_ref().and_then(|x| x.path.as_ref()),
        ]
        .into_iter()
        .flatten()
        .any(|p| p.modifier_type == "ReplacePrefixMatch")
    });
    if prefix_replaced
        && r.matches.iter().any(|m| {
            m.path
                .as_ref()
                .is_some_and(|p| p.match_type != "PathPrefix")
        })
    {
        out.push("ReplacePrefixMatch with a path match that is not a PathPrefix".into());
    }
    out
}

/// What a GRPCRoute rule asks that we cannot honour, by field.
pub(super) fn unsupported_grpc(r: &crate::resources::gateway_api::GrpcRouteRule) -> Vec<String> {
    let mut out: Vec<String> = r.other.keys().cloned().collect();
    for (j, m) in r.matches.iter().enumerate() {
        out.extend(m.other.keys().map(|k| format!("matches[{j}].{k}")));
        let types = m
            .method
            .iter()
            .map(|x| ("method", &x.match_type))
            .chain(m.headers.iter().map(|h| ("headers", &h.match_type)));
        for (what, t) in types {
            if let Some(t) = t
                && t != "Exact"
                && t != "RegularExpression"
            {
                out.push(format!("matches[{j}].{what}.type {t}"));
            }
        }
    }
    out.extend(unsupported_filters(&r.filters));
    out.extend(unsupported_backends(&r.backend_refs));
    out
}

fn unsupported_filters(filters: &[HttpRouteFilter]) -> Vec<String> {
    let mut out = Vec::new();
    for (k, f) in filters.iter().enumerate() {
        let before = out.len();
        let configured = match f.filter_type.as_str() {
            "RequestHeaderModifier" => f.request_header_modifier.is_some(),
            "ResponseHeaderModifier" => f.response_header_modifier.is_some(),
            "RequestMirror" => f.request_mirror.is_some(),
            "RequestRedirect" => {
                let r = f.request_redirect.as_ref();
                let parts = r.map(|r| (&r.other, r.path.as_ref()));
                path_filter_problems(&mut out, k, "requestRedirect", parts)
            }
            "URLRewrite" => {
                let r = f.url_rewrite.as_ref();
                let parts = r.map(|r| (&r.other, r.path.as_ref()));
                path_filter_problems(&mut out, k, "urlRewrite", parts)
            }
            "ExtensionRef" => match &f.extension_ref {
                Some(e) if e.group == crate::resources::GROUP && e.kind == "FaultInjection" => true,
                Some(e) => {
                    out.push(format!("filters[{k}].extensionRef {}/{}", e.group, e.kind));
                    true
                }
                None => false,
            },
            other => {
                out.push(format!("filters[{k}].type {other}"));
                true
            }
        };
        if !configured {
            out.push(format!(
                "filters[{k}] ({} without its configuration)",
                f.filter_type
            ));
        }
        // An unsupported filter's own configuration goes unsaid.
        if out.len() == before {
            out.extend(f.other.keys().map(|x| format!("filters[{k}].{x}")));
        }
    }
    out
}

/// The problems of a redirect or rewrite filter `k` (`field`, its unknown
/// fields and path modifier) into `out`; whether it was configured.
fn path_filter_problems(
    out: &mut Vec<String>,
    k: usize,
    field: &str,
    parts: Option<(
        &crate::resources::gateway_api::Unknown,
        Option<&HttpPathModifier>,
    )>,
) -> bool {
    let Some((other, path)) = parts else {
        return false;
    };
    out.extend(other.keys().map(|x| format!("filters[{k}].{field}.{x}")));
    if let Some(why) = path.and_then(path_modifier_problem) {
        out.push(format!("filters[{k}].{field}.path {why}"));
    }
    true
}

/// Why a path modifier cannot be honoured, if it cannot.
fn path_modifier_problem(p: &HttpPathModifier) -> Option<String> {
    match (
        p.modifier_type.as_str(),
        &p.replace_full_path,
        &p.replace_prefix_match,
    ) {
        ("ReplaceFullPath", Some(_), _) | ("ReplacePrefixMatch", _, Some(_)) => None,
        ("ReplaceFullPath" | "ReplacePrefixMatch", _, _) => {
            Some(format!("{} without its value", p.modifier_type))
        }
        (other, _, _) => Some(format!("type {other}")),
    }
}

fn unsupported_backends(backends: &[BackendRef]) -> Vec<String> {
    backends
        .iter()
        .enumerate()
        .flat_map(|(k, b)| b.other.keys().map(move |x| format!("backendRefs[{k}].{x}")))
        .collect()
}
