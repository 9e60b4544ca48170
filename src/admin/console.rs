//! The web console's static files, embedded in the binary (no separate web
//! server, no build step). The console only talks to the admin API.

use crate::body::{full, Body};
use http::{header, HeaderValue, Method, Response, StatusCode};

const INDEX: &str = include_str!("console/index.html");
const APP_JS: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/style.css");

/// Only our own files may load; nothing may frame the console.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
                   base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn redirect(to: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(""));
    *resp.status_mut() = StatusCode::FOUND;
    resp.headers_mut().insert(header::LOCATION, HeaderValue::from_static(to));
    resp
}

/// The console's answer for `path`, or `None` when the path is not the console's.
pub fn serve(method: &Method, path: &str) -> Option<Response<Body>> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    let (body, content_type) = match path {
        "/" | "/console" => return Some(redirect("/console/")),
        "/console/" | "/console/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/console/app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "/console/style.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut resp = Response::new(full(body));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(resp)
}
