//! The admin listener: `/metrics`, `/healthz`, `/readyz` open to scrapers
//! and probes; everything else needs the admin bearer token.

use crate::body::Body;
use crate::error::json_response;
use crate::state::App;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Shortest admin token accepted: anything shorter is refused as unsafe.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// The error envelope shared with the data plane.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response<Body> {
    json_response(status, &json!({ "success": false, "error": message.into(), "code": code }))
}

/// `{"success": true, "data": ..., "meta": ...}`.
pub fn ok(status: StatusCode, data: serde_json::Value, meta: serde_json::Value) -> Response<Body> {
    json_response(status, &json!({ "success": true, "data": data, "meta": meta }))
}

/// Checks `Authorization: Bearer <admin token>` in constant time.
fn authorised(req: &Request<Incoming>, token_env: &str) -> Result<(), Box<Response<Body>>> {
    let expected = std::env::var(token_env).unwrap_or_default();
    if expected.len() < MIN_ADMIN_TOKEN_LEN {
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "admin_disabled",
            format!("the admin API is disabled: set {token_env} to a token of at least {MIN_ADMIN_TOKEN_LEN} characters"),
        )));
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .unwrap_or("");
    if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        let mut resp = error(StatusCode::UNAUTHORIZED, "unauthorized", "a valid admin bearer token is required");
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Err(Box::new(resp))
    }
}

/// Handles one admin request.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/metrics") => {
            let mut resp = Response::new(crate::body::full(app.metrics.render()));
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            return resp;
        }
        (&Method::GET, "/healthz") => return ok(StatusCode::OK, json!({ "status": "ok" }), json!({})),
        (&Method::GET, "/readyz") => {
            return match app.store.ping().await {
                Ok(()) => ok(StatusCode::OK, json!({ "status": "ready" }), json!({})),
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string()),
            };
        }
        _ => {}
    }
    let token_env = app.runtime.load().config.admin.token_env.clone();
    if let Err(resp) = authorised(&req, &token_env) {
        return *resp;
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/modules") => {
            let modules = serde_json::to_value(app.runtime.load().config.catalogue.modules()).unwrap_or_default();
            ok(StatusCode::OK, modules, json!({}))
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", format!("no admin endpoint {} {path}", req.method())),
    }
}
