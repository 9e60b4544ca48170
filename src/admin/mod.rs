//! The admin listener: `/metrics`, `/healthz`, `/readyz` and
//! `/openapi.json` open to scrapers, probes and tooling; the admin REST API
//! (docs/interface.md, "Admin API") behind the admin bearer token, and the web console
//! (static files, open; it signs in with the token).

mod api;
mod console;
mod input;
pub mod routes;

use crate::body::{Body, ReadError};
use crate::config::{AdminConfig, Scopes};
use crate::error::json_response;
use crate::keys::token::TokenHash;
use crate::manage::Manager;
use crate::state::App;
use http::{header, HeaderValue, Request, Response, StatusCode};
use routes::Endpoint;
use serde_json::json;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Shortest admin token accepted: anything shorter is refused as unsafe.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// The error envelope shared with the data plane.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response<Body> {
    json_response(status, &crate::envelope::failure(code, message))
}

/// `{"success": true, "data": ..., "meta": ...}`.
pub fn ok(status: StatusCode, data: serde_json::Value, meta: serde_json::Value) -> Response<Body> {
    json_response(status, &crate::envelope::success(data, Some(meta)))
}

/// The full-scope token in the variable `token_env`, if it holds one long
/// enough to be used.
pub fn usable_env_token(token_env: &str) -> Option<String> {
    std::env::var(token_env).ok().filter(|t| t.len() >= MIN_ADMIN_TOKEN_LEN)
}

/// Who is calling the admin API, and what they may do.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `admin` for the `token_env` token, else the `[[admin.tokens]]` name.
    pub name: String,
    pub scopes: Scopes,
}

/// Finds the caller by `Authorization: Bearer <token>`: the `token_env`
/// token (compared in constant time) or a named token (its SHA-256
/// compared in constant time with every configured hash, no early exit).
fn authorised(req: &Request<Body>, admin: &AdminConfig) -> Result<Caller, Box<Response<Body>>> {
    let env_token = usable_env_token(&admin.token_env);
    if env_token.is_none() && admin.tokens.is_empty() {
        let token_env = &admin.token_env;
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "admin_disabled",
            format!("the admin API is disabled: set {token_env} to a token of at least {MIN_ADMIN_TOKEN_LEN} characters, or declare [[admin.tokens]]"),
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
    if env_token.is_some_and(|expected| bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))) {
        return Ok(Caller { name: "admin".into(), scopes: Scopes::ADMIN });
    }
    let hash = TokenHash::of(presented);
    let mut found = None;
    for t in &admin.tokens {
        if hash.ct_eq(&t.hash) && !presented.is_empty() {
            found = Some(Caller { name: t.name.clone(), scopes: t.scopes });
        }
    }
    if let Some(caller) = found {
        Ok(caller)
    } else {
        let mut resp = error(StatusCode::UNAUTHORIZED, "unauthorized", "a valid admin bearer token is required");
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Err(Box::new(resp))
    }
}

/// The OpenAPI 3 document of this API (kept true by `tests/it/admin_api.rs`).
pub const OPENAPI: &str = include_str!("openapi.json");
/// Largest admin request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest import (JSON lines of keys or roles): some 100,000 keys.
pub const MAX_IMPORT_BYTES: usize = 64 * 1024 * 1024;
/// How long an admin request body may take to arrive.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Handles one admin request.
pub async fn handle(app: Arc<App>, req: Request<Body>, peer: std::net::SocketAddr) -> Response<Body> {
    let rt = app.runtime.load_full();
    // A Host that is not text names no host this listener answers.
    let host = match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => req.headers().get(header::HOST).map(|h| h.to_str().unwrap_or("\u{fffd}")),
    };
    if !rt.config.admin.allowed_hosts.admits(host) {
        let host = host.unwrap_or_default().chars().take(100).collect::<String>();
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            "host_not_allowed",
            format!("this admin listener does not answer for `{host}`: use a loopback address, or list the name in admin.allowed_hosts"),
        );
    }
    let path = req.uri().path().to_string();
    if let Some(resp) = console::serve(req.method(), &path) {
        return resp;
    }
    let query = req.uri().query().unwrap_or("").to_string();
    let (endpoint, id) = match routes::resolve(req.method().as_str(), &path) {
        Ok(found) => found,
        Err(routes::Miss::MethodNotAllowed) => {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{} is not allowed on {path}", req.method()),
            )
        }
        Err(routes::Miss::NotFound) => {
            return error(StatusCode::NOT_FOUND, "not_found", format!("no admin endpoint {} {path}", req.method()))
        }
    };
    match endpoint {
        Endpoint::Metrics => {
            let mut resp = Response::new(crate::body::full(app.metrics.render()));
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            return resp;
        }
        Endpoint::Healthz => return ok(StatusCode::OK, json!({ "status": "ok" }), json!({})),
        Endpoint::Readyz => {
            if app.draining() {
                return error(StatusCode::SERVICE_UNAVAILABLE, "draining", "shutting down: finishing the requests in flight");
            }
            return match app.store.ping().await {
                Ok(()) => ok(StatusCode::OK, json!({ "status": "ready" }), json!({})),
                Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string()),
            };
        }
        Endpoint::OpenApi => {
            let mut resp = Response::new(crate::body::full(OPENAPI));
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return resp;
        }
        _ => {}
    }
    let caller = match authorised(&req, &rt.config.admin) {
        Ok(caller) => caller,
        Err(resp) => return *resp,
    };
    if let Some(needed) = endpoint.scope() {
        if !caller.scopes.grants(needed) {
            let needed = needed.names().join(", ");
            let message = format!("the admin token `{}` lacks the `{needed}` scope this endpoint needs", caller.name);
            let mut body = crate::envelope::failure("insufficient_scope", message);
            body["required"] = needed.into();
            return json_response(StatusCode::FORBIDDEN, &body);
        }
    }
    let limit = match endpoint {
        Endpoint::ImportKeys | Endpoint::ImportRoles => MAX_IMPORT_BYTES,
        _ => MAX_BODY_BYTES,
    };
    let accept = req.headers().get(http::header::ACCEPT).and_then(|v| v.to_str().ok()).map(str::to_string);
    let if_match = match input::if_match(req.headers()) {
        Ok(v) => v,
        Err(e) => return api::refusal(e),
    };
    let read = tokio::time::timeout(BODY_TIMEOUT, crate::body::read_to_bytes(req.into_body(), limit));
    let body = match read.await.unwrap_or_else(|_| Err(ReadError::Failed(format!("it took longer than {BODY_TIMEOUT:?}")))) {
        Ok(b) => b,
        Err(e @ ReadError::TooLarge(_)) => return error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", e.to_string()),
        Err(e @ ReadError::Failed(_)) => return error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    };
    let actor = format!("admin-api ({}@{})", caller.name, peer.ip());
    let live = crate::manage::Live::of(&app);
    let manager = Manager { store: app.store.as_ref(), config: &rt.config, actor, meter: Some(live) };
    let asked = api::Asked { id, query: &query, body: &body, accept: accept.as_deref(), if_match };
    match api::run(&manager, &caller, endpoint, asked).await {
        Ok(resp) => resp,
        Err(e) => api::refusal(e),
    }
}
