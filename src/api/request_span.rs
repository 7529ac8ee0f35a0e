//! The span of each HTTP request, as tracing-actix-web's default builds it but with a
//! target that holds no secret: a one-time console link travels in the query of
//! `/console/login`, and an unsubscribe token is the path of `/u/{token}`. Logs are
//! read by more people than may sign in as a tenant or unsubscribe its recipients.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Uri;
use actix_web::{Error, HttpMessage as _};
use tracing::field::Empty;
use tracing::Span;
use tracing_actix_web::{DefaultRootSpanBuilder, RequestId, RootSpanBuilder};

pub struct RedactedRootSpan;

/// `uri`'s path and query, minus the secrets named above.
pub fn loggable_target(uri: &Uri) -> String {
    let path = uri.path();
    if path.starts_with("/u/") {
        return "/u/{token}".to_owned();
    }
    match uri.query() {
        Some(_) if path.starts_with("/console/login") => format!("{path}?(redacted)"),
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    }
}

impl RootSpanBuilder for RedactedRootSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let route = request.match_pattern().unwrap_or_else(|| "default".to_owned());
        let method = request.method().as_str().to_owned();
        let user_agent = request
            .headers()
            .get("User-Agent")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let request_id = request.extensions().get::<RequestId>().copied();
        let connection = request.connection_info().clone();
        tracing::info_span!(
            "HTTP request",
            http.method = %method,
            http.route = %route,
            http.scheme = %connection.scheme(),
            http.host = %connection.host(),
            http.client_ip = %connection.realip_remote_addr().unwrap_or(""),
            http.user_agent = %user_agent,
            http.target = %loggable_target(request.uri()),
            http.status_code = Empty,
            otel.name = %format!("{method} {route}"),
            otel.kind = "server",
            otel.status_code = Empty,
            request_id = %request_id.map(|id| id.to_string()).unwrap_or_default(),
            exception.message = Empty,
            exception.details = Empty,
        )
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_unsubscribe_tokens_never_reach_the_log() {
        let target = |s: &str| loggable_target(&s.parse::<Uri>().unwrap());
        assert_eq!(
            target("/console/login?link=eyJ.secret.sig"),
            "/console/login?(redacted)"
        );
        assert_eq!(target("/u/YWNtZQ.msg_1.0.mac"), "/u/{token}");
        assert_eq!(target("/v1/messages?status=sent"), "/v1/messages?status=sent");
    }
}
