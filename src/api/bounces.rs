//! `/v1/bounces`: reports that arrive after delivery — raw DSN/ARF messages piped
//! from an MTA, and a generic JSON format for everything else.

use actix_web::{post, web, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::{Authenticated, BouncesWrite};
use super::body::RawBody;
use super::problem::{ApiError, FieldError, Kind, Problem, PROBLEM_JSON};
use super::query::Query;
use super::AppState;
use crate::bounces::ingest::{IngestError, Ingested, Statement};
use crate::bounces::providers::{mailgun, postmark, sendgrid, ses, ProviderError};
use crate::domain::auth::TenantId;
use crate::domain::bounce::{classify, Bounce, BounceKind};
use crate::domain::ids::MessageId;
use crate::domain::message::{ExternalReport, SmtpReply};
use crate::domain::status::EventType;
use crate::domain::ValidationError;

fn problem(err: IngestError) -> ApiError {
    match err {
        IngestError::Busy => ApiError::new(Kind::Unavailable, "message_busy", err.to_string())
            .with_header(actix_web::http::header::RETRY_AFTER, "5"),
        other => ApiError::internal(other),
    }
}

/// Ingest a raw delivery status notification (RFC 3464) or feedback report (RFC
/// 5965, ARF), e.g. piped from an MTA.
///
/// The report is matched by the VERP address it was sent to (`To`, `Delivered-To`),
/// falling back to the Message-ID of the returned original. `Action: failed` records
/// a bounce (hard ones suppress the address), `delayed` a `message.deferred` event
/// only, `delivered` a delivery; an ARF report records a complaint and suppresses the
/// address. Reports that cannot be parsed or matched are stored and still answered 202;
/// a body that is not a message at all (no header field first) is refused.
#[utoipa::path(
    tag = "bounces",
    request_body(content = String, content_type = "message/rfc822", description = "The raw report"),
    security(("bearer" = ["bounces:write"])),
    responses(
        (status = 202, description = "Stored (and recorded when matched)", body = Ingested),
        (status = 413, description = "Too large", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "The body does not start with a header field (`not_a_message`)", body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "The message is being delivered right now; retry (`message_busy`, with Retry-After)", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[post("/v1/bounces/dsn")]
pub async fn ingest_dsn(
    auth: Authenticated<BouncesWrite>,
    body: RawBody,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if body.0.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            Kind::BadRequest,
            "empty_body",
            "send the report as the request body",
        ));
    }
    if !crate::bounces::report::looks_like_message(&body.0) {
        return Err(ApiError::unprocessable(vec![FieldError::coded(
            "",
            "not_a_message",
            "the body is not an Internet message: it must start with a header field",
        )]));
    }
    let ingested = state
        .bounces
        .ingest_report(&auth.principal.tenant, body.0.to_vec())
        .await
        .map_err(problem)?;
    Ok(HttpResponse::Accepted().json(ingested))
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GenericReportType {
    Bounce,
    Complaint,
    Delivery,
    Delay,
}

/// A bounce, complaint, delivery or delay report in mailgate's own JSON format, for
/// sources without a dedicated endpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"type": "bounce", "message_id": "msg_01a2239f5e3276febeab035967b70001",
                          "recipient": "ana@example.test", "status": "5.1.1", "smtp_code": 550,
                          "diagnostic": "550 5.1.1 user unknown", "source": "edge-mta"}))]
pub struct GenericReport {
    #[serde(rename = "type")]
    pub report_type: GenericReportType,
    /// The `msg_…` id mailgate returned for the send.
    pub message_id: String,
    pub recipient: String,
    /// RFC 3463 status, e.g. `5.1.1`.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub smtp_code: Option<u16>,
    #[serde(default)]
    pub diagnostic: Option<String>,
    /// Overrides the classification of a bounce.
    #[serde(default)]
    pub kind: Option<BounceKind>,
    /// Where the report came from (free text, recorded on the event); default `api`.
    #[serde(default)]
    pub source: Option<String>,
}

/// Ingest one report in the generic JSON format.
#[utoipa::path(
    tag = "bounces",
    request_body = GenericReport,
    security(("bearer" = ["bounces:write"])),
    responses(
        (status = 202, description = "Stored (and recorded when matched)", body = Ingested),
        (status = 422, description = "Invalid field", body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "The message is being delivered right now; retry", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[post("/v1/bounces/events")]
pub async fn ingest_event(
    auth: Authenticated<BouncesWrite>,
    body: RawBody,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let raw = body.0;
    let report: GenericReport = super::body::parse(&raw)?;
    let message_id = MessageId::parse(&report.message_id)
        .map_err(|e| ApiError::unprocessable(vec![FieldError::new("/message_id", &e)]))?;
    if !report.recipient.contains('@') {
        return Err(ApiError::unprocessable(vec![FieldError::new(
            "/recipient",
            &ValidationError::new("invalid_address", "`recipient` is an email address"),
        )]));
    }
    let source = report.source.clone().unwrap_or_else(|| "api".into());
    let smtp = SmtpReply {
        code: report.smtp_code,
        enhanced: report.status.clone(),
        diagnostic: report.diagnostic.clone().unwrap_or_default(),
    };
    let (event_type, bounce) = match report.report_type {
        GenericReportType::Bounce => {
            let mut bounce = classify(smtp.code, smtp.enhanced.as_deref(), &smtp.diagnostic, &source);
            if let Some(kind) = report.kind {
                bounce.kind = kind;
            }
            (EventType::Bounced, Some(bounce))
        }
        GenericReportType::Complaint => (
            EventType::Complained,
            Some(Bounce {
                kind: BounceKind::Hard,
                bounce_type: crate::domain::bounce::BounceType::Spam,
                source: source.clone(),
            }),
        ),
        GenericReportType::Delivery => (EventType::Delivered, None),
        GenericReportType::Delay => (EventType::Deferred, None),
    };
    let statement = Statement {
        message_id: Some(message_id),
        index: None,
        recipient: report.recipient.to_ascii_lowercase(),
        report: ExternalReport {
            event_type,
            smtp: Some(smtp),
            bounce,
        },
    };
    let ingested = state
        .bounces
        .ingest(&auth.principal.tenant, "api", raw.to_vec(), vec![statement])
        .await
        .map_err(problem)?;
    Ok(HttpResponse::Accepted().json(ingested))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProviderQuery {
    /// The tenant whose configured provider key verifies the request.
    pub tenant: String,
}

fn provider_problem(err: ProviderError) -> ApiError {
    let code = match err {
        ProviderError::Stale => "stale_signature",
        _ => "invalid_signature",
    };
    ApiError::new(Kind::Unauthorized, code, err.to_string())
}

/// Stores and records what a provider reported; a payload that verified but does not
/// parse is stored unmatched (202), never refused.
async fn record(
    state: &AppState,
    tenant: &TenantId,
    source: &'static str,
    raw: web::Bytes,
    statements: Result<Vec<Statement>, ProviderError>,
) -> Result<HttpResponse, ApiError> {
    let ingested = state
        .bounces
        .ingest(tenant, source, raw.to_vec(), statements.unwrap_or_default())
        .await
        .map_err(problem)?;
    Ok(HttpResponse::Accepted().json(ingested))
}

fn unauthorized() -> ApiError {
    provider_problem(ProviderError::BadSignature)
}

/// Mailgun webhooks (bounces, complaints, deliveries). No bearer token: the request is
/// authenticated by Mailgun's HMAC signature with the tenant's configured signing key,
/// and refused when its timestamp is older than `bounces.max_signature_age`.
#[utoipa::path(
    tag = "bounces",
    params(ProviderQuery),
    request_body(content = Object, description = "Mailgun webhook JSON (`signature`, `event-data`)"),
    responses(
        (status = 202, description = "Stored (and recorded when matched)", body = Ingested),
        (status = 401, description = "Bad signature (`invalid_signature`) or too old (`stale_signature`)", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[post("/v1/bounces/mailgun")]
pub async fn ingest_mailgun(
    query: Query<ProviderQuery>,
    body: RawBody,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, keys) = state.bounces.provider_tenant(&query.tenant).ok_or_else(unauthorized)?;
    let key = keys.mailgun_signing_key.clone().ok_or_else(unauthorized)?;
    let json: serde_json::Value = serde_json::from_slice(&body.0).map_err(|_| unauthorized())?;
    mailgun::verify(&json, &key, state.bounces.max_signature_age).map_err(provider_problem)?;
    let token = json["signature"]["token"].as_str().unwrap_or_default();
    let timestamp = json["signature"]["timestamp"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    if !state.bounces.first_use(token, timestamp) {
        return Err(provider_problem(ProviderError::Stale));
    }
    record(&state, &tenant, "mailgun", body.0, mailgun::parse(&json)).await
}

/// Postmark webhooks (Bounce, SpamComplaint, Delivery), authenticated with the HTTP
/// Basic credentials configured for the tenant (put them in the webhook URL in
/// Postmark). Postmark does not return the Message-ID header: set message metadata
/// `mailgate_message_id` to match reports to messages; others are stored unmatched.
#[utoipa::path(
    tag = "bounces",
    params(ProviderQuery),
    request_body(content = Object, description = "Postmark webhook JSON"),
    responses(
        (status = 202, description = "Stored (and recorded when matched)", body = Ingested),
        (status = 401, description = "Missing or wrong Basic credentials (`invalid_signature`)", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[post("/v1/bounces/postmark")]
pub async fn ingest_postmark(
    req: actix_web::HttpRequest,
    query: Query<ProviderQuery>,
    body: RawBody,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, keys) = state.bounces.provider_tenant(&query.tenant).ok_or_else(unauthorized)?;
    let expected = keys.postmark_basic_auth.clone().ok_or_else(unauthorized)?;
    let authorization = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    postmark::verify(authorization, &expected).map_err(provider_problem)?;
    let statements = serde_json::from_slice(&body.0)
        .map_err(|_| ProviderError::Malformed("Postmark"))
        .and_then(|json| postmark::parse(&json));
    record(&state, &tenant, "postmark", body.0, statements).await
}

/// SendGrid Event Webhook (bounce, dropped, deferred, delivered, spamreport), verified
/// with the tenant's configured ECDSA verification key over timestamp and body, and
/// refused when the timestamp is older than `bounces.max_signature_age`.
#[utoipa::path(
    tag = "bounces",
    params(ProviderQuery),
    request_body(content = Vec<Object>, description = "SendGrid event array"),
    responses(
        (status = 202, description = "Stored (and recorded when matched)", body = Ingested),
        (status = 401, description = "Bad signature (`invalid_signature`) or too old (`stale_signature`)", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[post("/v1/bounces/sendgrid")]
pub async fn ingest_sendgrid(
    req: actix_web::HttpRequest,
    query: Query<ProviderQuery>,
    body: RawBody,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, keys) = state.bounces.provider_tenant(&query.tenant).ok_or_else(unauthorized)?;
    let key = keys.sendgrid_verification_key.clone().ok_or_else(unauthorized)?;
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    sendgrid::verify(
        &key,
        header(sendgrid::SIGNATURE_HEADER),
        header(sendgrid::TIMESTAMP_HEADER),
        &body.0,
        state.bounces.max_signature_age,
    )
    .map_err(provider_problem)?;
    let statements = serde_json::from_slice(&body.0)
        .map_err(|_| ProviderError::Malformed("SendGrid"))
        .and_then(|json| sendgrid::parse(&json));
    record(&state, &tenant, "sendgrid", body.0, statements).await
}

/// Amazon SES notifications (Bounce, Complaint, Delivery) through an SNS HTTPS
/// subscription. The SNS signature (versions 1 and 2) is verified with the
/// certificate at `SigningCertURL` — fetched only from `sns.<region>.amazonaws.com`,
/// or pinned with `bounces.sns_certificate_file` — the topic must be one of the
/// tenant's `ses_topic_arns`, and old `Timestamp`s are refused. A
/// `SubscriptionConfirmation` is confirmed by visiting its `SubscribeURL` on the same
/// kind of host.
#[utoipa::path(
    tag = "bounces",
    params(ProviderQuery),
    request_body(content = Object, description = "An SNS message (JSON)"),
    responses(
        (status = 202, description = "Stored (and recorded when matched), or subscription handled", body = Ingested),
        (status = 401, description = "Bad signature, unknown topic (`invalid_signature`) or too old (`stale_signature`)", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[post("/v1/bounces/ses")]
pub async fn ingest_ses(
    query: Query<ProviderQuery>,
    body: RawBody,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, keys) = state.bounces.provider_tenant(&query.tenant).ok_or_else(unauthorized)?;
    let envelope: serde_json::Value = serde_json::from_slice(&body.0).map_err(|_| unauthorized())?;
    let topic = envelope["TopicArn"].as_str().unwrap_or_default();
    if !keys.ses_topic_arns.iter().any(|t| t == topic) {
        return Err(unauthorized());
    }
    let cert_url = envelope["SigningCertURL"].as_str().unwrap_or_default();
    let certificate = state
        .bounces
        .sns_certificates
        .get(cert_url)
        .await
        .ok_or_else(unauthorized)?;
    ses::verify(&envelope, &certificate, state.bounces.max_signature_age).map_err(provider_problem)?;
    match envelope["Type"].as_str() {
        Some("Notification") => record(&state, &tenant, "ses", body.0, ses::parse(&envelope)).await,
        Some("SubscriptionConfirmation") => {
            let url = envelope["SubscribeURL"].as_str().unwrap_or_default();
            let confirmed = confirm_subscription(url).await;
            tracing::info!(topic, confirmed, "SNS subscription confirmation");
            record(&state, &tenant, "ses", body.0, Ok(Vec::new())).await
        }
        _ => record(&state, &tenant, "ses", body.0, Ok(Vec::new())).await,
    }
}

/// Visits an SNS `SubscribeURL`, only on `https://sns.<region>.amazonaws.com`.
async fn confirm_subscription(url: &str) -> bool {
    let allowed = reqwest::Url::parse(url).is_ok_and(|u| {
        let probe = format!("https://{}/x.pem", u.host_str().unwrap_or_default());
        u.scheme() == "https" && ses::cert_url_allowed(&probe)
    });
    if !allowed {
        return false;
    }
    let Ok(client) = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    else {
        return false;
    };
    client.get(url).send().await.is_ok_and(|r| r.status().is_success())
}
