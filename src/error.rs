//! Every way the data plane refuses a request, and the one place that turns
//! a refusal into the contract's JSON response.

use crate::body::{full, Body};
use crate::keys::model::KeyState;
use http::{header, HeaderValue, Response, StatusCode};

/// A refusal of the data plane (docs/interface.md, "Answers").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no API key was presented")]
    MissingKey,
    #[error("the API key is not valid")]
    InvalidKey,
    #[error("the API key is disabled")]
    KeyDisabled,
    #[error("the API key has expired")]
    KeyExpired,
    #[error("the API key belongs to another environment")]
    WrongEnvironment,
    #[error("the request carries two different API keys")]
    AmbiguousCredentials,
    #[error("requests from this IP address are not allowed for this API key")]
    IpBlocked,
    /// The client's address is on a deny list (`server.deny`, a route's `deny`).
    #[error("requests from this IP address are not allowed")]
    IpDenied,
    #[error("the API key lacks the permission this route needs")]
    InsufficientPermissions { required: String },
    #[error("no route matches this request")]
    NoRoute,
    /// A WebSocket handshake (`Upgrade: websocket`) on a route that does
    /// not take one: refused, never forwarded as a plain request.
    #[error("this route does not take WebSocket connections")]
    UpgradeRefused,
    /// A browser's preflight that `[cors]` does not allow.
    #[error("{0}")]
    CorsRefused(String),
    #[error("rate limit exceeded")]
    RateLimited { retry_after: u64 },
    /// The client's address sent too many bad credentials and is blocked
    /// (`[abuse] failed_credentials`).
    #[error("too many failed credentials from this address: try again later")]
    TooManyFailures { retry_after: u64 },
    /// The key (or owner) has `max_in_flight` requests in flight already.
    #[error("this API key has too many requests in flight: wait for one to finish")]
    TooManyInFlight,
    /// The key holds `[realtime] per_key_connections` event streams open.
    #[error("this API key has too many live connections open")]
    TooManyConnections,
    /// An hour, day or month quota has no room for the request's cost.
    #[error("the {window} quota of this API key is used up")]
    QuotaExceeded { window: &'static str, retry_after: u64 },
    /// `retry_after` is the next refill, `None` when none will come.
    #[error("this API key has no credits left for this request")]
    CreditsExhausted { retry_after: Option<u64> },
    #[error("the request body is larger than this gateway accepts")]
    PayloadTooLarge,
    /// The client paused inside its request body for longer than
    /// `server.body_read_timeout` (not in the contract's table, which has
    /// no client-side timeout; 408 is HTTP's answer, as nginx gives).
    #[error("the request body paused for longer than this gateway waits")]
    RequestTimeout,
    #[error("the upstream could not be reached")]
    UpstreamUnavailable,
    #[error("the key store is unavailable")]
    StoreUnavailable,
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
    /// A signed report (a leak report) whose signature is missing, names
    /// an unknown key or does not verify over the body as received.
    #[error("{0}")]
    BadSignature(String),
}

impl GatewayError {
    /// The refusal of a key in `state`, if it may not be used.
    pub fn of_state(state: KeyState) -> Option<GatewayError> {
        match state {
            KeyState::Usable => None,
            KeyState::SecretRetired => Some(GatewayError::InvalidKey),
            KeyState::Disabled => Some(GatewayError::KeyDisabled),
            KeyState::Expired => Some(GatewayError::KeyExpired),
            KeyState::WrongEnvironment => Some(GatewayError::WrongEnvironment),
        }
    }

    /// The refusal of a request its limits, quotas or credits refused.
    pub fn of_metered(m: &crate::ratelimit::meter::Metered) -> Option<GatewayError> {
        use crate::ratelimit::meter::Refused;
        let retry_after = m.retry_after();
        Some(match m.refused? {
            Refused::Window(p) if p.is_quota() => {
                GatewayError::QuotaExceeded { window: p.name(), retry_after: retry_after.unwrap_or(1) }
            }
            Refused::Window(_) => GatewayError::RateLimited { retry_after: retry_after.unwrap_or(1) },
            Refused::Credits => GatewayError::CreditsExhausted { retry_after },
        })
    }

    /// The HTTP status of this refusal.
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            BadRequest(_) | UpgradeRefused => StatusCode::BAD_REQUEST,
            MissingKey | InvalidKey | KeyDisabled | KeyExpired | WrongEnvironment | AmbiguousCredentials | BadSignature(_) => {
                StatusCode::UNAUTHORIZED
            }
            IpBlocked | IpDenied | InsufficientPermissions { .. } | CorsRefused(_) => StatusCode::FORBIDDEN,
            NoRoute => StatusCode::NOT_FOUND,
            RateLimited { .. }
            | QuotaExceeded { .. }
            | CreditsExhausted { .. }
            | TooManyFailures { .. }
            | TooManyInFlight
            | TooManyConnections => StatusCode::TOO_MANY_REQUESTS,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The machine-readable `code` of the JSON body.
    pub fn code(&self) -> &'static str {
        use GatewayError::*;
        match self {
            BadRequest(_) => "bad_request",
            UpgradeRefused => "upgrade_not_allowed",
            MissingKey => "missing_key",
            InvalidKey => "invalid_key",
            KeyDisabled => "key_disabled",
            KeyExpired => "key_expired",
            WrongEnvironment => "wrong_environment",
            AmbiguousCredentials => "ambiguous_credentials",
            IpBlocked => "ip_blocked",
            IpDenied => "ip_denied",
            InsufficientPermissions { .. } => "insufficient_permissions",
            NoRoute => "no_route",
            CorsRefused(_) => "cors_not_allowed",
            RateLimited { .. } => "rate_limited",
            TooManyFailures { .. } => "too_many_failures",
            TooManyInFlight => "too_many_in_flight",
            TooManyConnections => "too_many_connections",
            QuotaExceeded { .. } => "quota_exceeded",
            CreditsExhausted { .. } => "credits_exhausted",
            PayloadTooLarge => "payload_too_large",
            RequestTimeout => "request_timeout",
            UpstreamUnavailable => "upstream_unavailable",
            StoreUnavailable => "store_unavailable",
            UpstreamTimeout => "upstream_timeout",
            BadSignature(_) => "invalid_signature",
        }
    }

    /// Seconds until a refused request could pass, when that is known.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            GatewayError::RateLimited { retry_after }
            | GatewayError::QuotaExceeded { retry_after, .. }
            | GatewayError::TooManyFailures { retry_after } => Some(*retry_after),
            // A slot is freed when a request ends: soon, but when is unknown.
            GatewayError::TooManyInFlight => Some(1),
            GatewayError::TooManyConnections => Some(1),
            GatewayError::CreditsExhausted { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// The `outcome` label of `keygate_requests_total`.
    pub fn outcome(&self) -> &'static str {
        match self.status().as_u16() {
            401 => "unauthenticated",
            403 => "forbidden",
            429 => "rate_limited",
            500..=599 => "gateway_error",
            _ => "rejected",
        }
    }

    /// `{"success": false, "error": ..., "code": ...}` plus the extras some codes carry.
    pub fn to_response(&self) -> Response<Body> {
        self.to_response_for(None)
    }

    /// The response, its body naming the request's id.
    pub fn to_response_for(&self, request_id: Option<&crate::correlation::RequestId>) -> Response<Body> {
        let mut body = crate::envelope::failure(self.code(), self.to_string());
        if let Some(id) = request_id {
            body["requestId"] = id.as_str().into();
        }
        match self {
            GatewayError::InsufficientPermissions { required } => body["required"] = required.clone().into(),
            GatewayError::QuotaExceeded { window, .. } => body["window"] = (*window).into(),
            _ => {}
        }
        if let Some(retry_after) = self.retry_after() {
            body["retryAfter"] = retry_after.into();
        }
        let mut resp = json_response(self.status(), &body);
        if let GatewayError::MissingKey = self {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(retry_after) = self.retry_after() {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        resp
    }
}

/// A JSON response with the right content type.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_status_and_message() {
        let all = [
            GatewayError::BadRequest("x".into()),
            GatewayError::MissingKey,
            GatewayError::InvalidKey,
            GatewayError::KeyDisabled,
            GatewayError::KeyExpired,
            GatewayError::WrongEnvironment,
            GatewayError::AmbiguousCredentials,
            GatewayError::UpgradeRefused,
            GatewayError::IpBlocked,
            GatewayError::IpDenied,
            GatewayError::InsufficientPermissions { required: "lists.view".into() },
            GatewayError::NoRoute,
            GatewayError::CorsRefused("x".into()),
            GatewayError::RateLimited { retry_after: 7 },
            GatewayError::TooManyFailures { retry_after: 7 },
            GatewayError::TooManyInFlight,
            GatewayError::TooManyConnections,
            GatewayError::QuotaExceeded { window: "day", retry_after: 7 },
            GatewayError::CreditsExhausted { retry_after: None },
            GatewayError::PayloadTooLarge,
            GatewayError::UpstreamUnavailable,
            GatewayError::StoreUnavailable,
            GatewayError::UpstreamTimeout,
            GatewayError::BadSignature("x".into()),
        ];
        for e in all {
            let r = e.to_response();
            assert_eq!(r.status(), e.status());
            assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        }
        let r = GatewayError::MissingKey.to_response();
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let r = GatewayError::RateLimited { retry_after: 7 }.to_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "7");
        let r = GatewayError::QuotaExceeded { window: "month", retry_after: 9 }.to_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "9");
        let r = GatewayError::CreditsExhausted { retry_after: None }.to_response();
        assert!(r.headers().get(header::RETRY_AFTER).is_none(), "no refill: no time to give");
    }
}
