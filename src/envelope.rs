//! The one JSON envelope of every answer keygate gives, from the data
//! plane, the admin API and the CLI's `--json` output alike:
//! `{"success": true, "data": …, "meta": …}` or
//! `{"success": false, "error": …, "code": …}` (some codes add fields).

use serde_json::{json, Value};

/// A success: `data`, and `meta` when there is any.
pub fn success(data: Value, meta: Option<Value>) -> Value {
    match meta {
        Some(meta) => json!({ "success": true, "data": data, "meta": meta }),
        None => json!({ "success": true, "data": data }),
    }
}

/// A failure: a sentence for people and a code for programs. Fields a code
/// carries (`required`, `retryAfter`, `field`, ...) are set on the result.
pub fn failure(code: &str, message: impl Into<String>) -> Value {
    json!({ "success": false, "error": message.into(), "code": code })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_shapes_carry_success_and_nothing_unasked() {
        assert_eq!(success(json!([1]), None).to_string(), r#"{"data":[1],"success":true}"#);
        assert_eq!(success(json!(1), Some(json!({"total": 1})))["meta"]["total"], 1);
        let f = failure("not_found", "key `k` not found");
        assert_eq!(f, json!({ "success": false, "error": "key `k` not found", "code": "not_found" }));
    }
}
