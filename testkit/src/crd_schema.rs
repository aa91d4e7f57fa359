//! What the API server would do to an object of a CRD, checked offline
//! against the CRD's structural schema (openAPIV3Schema): fields it does
//! not know (it would prune them silently), missing required fields,
//! values outside an enum, wrong JSON types, too many items. Enough to
//! catch a writer and a schema drifting apart; not a full validator.

use serde_json::Value;

/// The schema of `version` in a CRD manifest (YAML).
pub fn schema(crd_yaml: &str, version: &str) -> Value {
    let crd: Value = serde_saphyr::from_str(crd_yaml).expect("a CRD in YAML");
    crd["spec"]["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == version))
        .map(|v| v["schema"]["openAPIV3Schema"].clone())
        .unwrap_or_else(|| panic!("the CRD has no version {version}"))
}

/// Every way `object` breaks `schema`, by JSON path (`metadata` is the
/// API server's, not checked).
pub fn problems(schema: &Value, object: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(schema, object, "", &mut out);
    out
}

fn walk(schema: &Value, v: &Value, path: &str, out: &mut Vec<String>) {
    if path == ".metadata" || schema["x-kubernetes-preserve-unknown-fields"] == true {
        return;
    }
    let ty = schema["type"].as_str().unwrap_or_default();
    let ok = match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    };
    if !ok {
        out.push(format!("{path}: {v} is not of type {ty}"));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        out.push(format!("{path}: {v} is not one of {allowed:?}"));
    }
    match v {
        Value::Object(map) => {
            let props = schema["properties"].as_object();
            for r in schema["required"].as_array().into_iter().flatten() {
                if let Some(r) = r.as_str()
                    && !map.contains_key(r)
                {
                    out.push(format!("{path}.{r}: required"));
                }
            }
            for (k, child) in map {
                let p = format!("{path}.{k}");
                match props.and_then(|p| p.get(k)) {
                    Some(s) => walk(s, child, &p, out),
                    None if schema["additionalProperties"].is_object() => {
                        walk(&schema["additionalProperties"], child, &p, out)
                    }
                    None => out.push(format!(
                        "{p}: not in the schema (the API server would drop it)"
                    )),
                }
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema["maxItems"].as_u64()
                && items.len() as u64 > max
            {
                out.push(format!("{path}: {} items, at most {max}", items.len()));
            }
            for (i, item) in items.iter().enumerate() {
                walk(&schema["items"], item, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_missing_and_mistyped_fields_are_named() {
        let s = json!({"type": "object", "required": ["spec"], "properties": {
            "spec": {"type": "object", "required": ["type"], "properties": {
                "type": {"type": "string", "enum": ["A", "B"]},
                "ips": {"type": "array", "maxItems": 1, "items": {"type": "string"}}}}}});
        assert!(problems(&s, &json!({"spec": {"type": "A", "ips": ["x"]}})).is_empty());
        let mut p = problems(
            &s,
            &json!({"spec": {"type": "C", "ips": ["x", 1], "extra": true}}),
        );
        p.sort();
        assert_eq!(
            p,
            [
                ".spec.extra: not in the schema (the API server would drop it)",
                ".spec.ips: 2 items, at most 1",
                ".spec.ips[1]: 1 is not of type string",
                ".spec.type: \"C\" is not one of [String(\"A\"), String(\"B\")]",
            ]
        );
        assert_eq!(problems(&s, &json!({})), [".spec: required"]);
    }
}
