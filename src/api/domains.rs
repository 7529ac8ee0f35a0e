//! `/v1/domains`: sender domains, the DNS records to publish for them, their checks
//! and DKIM key rotation.

use actix_web::http::header;
use actix_web::{delete, get, post, web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Authenticated, DomainsManage};
use super::body::JsonBody;
use super::problem::{ApiError, FieldError, Kind, Problem, PROBLEM_JSON};
use super::AppState;
use crate::dkim::Algorithm;
use crate::domain::sender_domain::{DnsRecord, DomainName, DomainStatus, KeyState, SenderDomain};
use crate::domains::DomainsError;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "acme.com", "ed25519": true}))]
pub struct CreateDomainRequest {
    /// The domain mail is sent from (`From: …@acme.com`); mail from its subdomains is
    /// signed with it too.
    pub name: String,
    /// Also make an Ed25519 key: mail then carries a second, `ed25519-sha256`
    /// signature beside the RSA-2048 one.
    #[serde(default)]
    pub ed25519: bool,
}

/// One DKIM key, without its private half.
#[derive(Debug, Serialize, ToSchema)]
pub struct DkimKeyView {
    pub selector: String,
    pub algorithm: Algorithm,
    /// `active` signs; `pending` waits for its record to verify after a rotation;
    /// `retired` was replaced and its record may be removed after `retire_after`.
    pub state: KeyState,
    pub created_at: DateTime<Utc>,
    pub retire_after: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "dom_01a2239b6f4576c6abf5dbfeff8e03ca", "name": "acme.com", "status": "pending",
    "records": [
        {"type": "TXT", "name": "mg1796419534r._domainkey.acme.com", "value": "v=DKIM1; k=rsa; p=MIIBIjANBgkqh…",
         "purpose": "dkim", "status": "pending", "required": true},
        {"type": "CNAME", "name": "bounces.acme.com", "value": "bounces.mail.example.net", "purpose": "return_path",
         "status": "pending", "required": true},
        {"type": "TXT", "name": "acme.com", "value": "v=spf1 a:smtp.relay.example.net ~all", "purpose": "spf",
         "status": "pending", "required": false},
        {"type": "TXT", "name": "_dmarc.acme.com", "value": "v=DMARC1; p=none; adkim=r; aspf=r", "purpose": "dmarc",
         "status": "pending", "required": false}
    ],
    "keys": [{"selector": "mg1796419534r", "algorithm": "rsa", "state": "active", "created_at": "2026-12-04T21:00:00Z", "retire_after": null}],
    "created_at": "2026-12-04T21:00:00Z", "checked_at": null, "verified_at": null
}))]
pub struct DomainView {
    pub id: String,
    pub name: String,
    /// `verified` once every required record is found; `failing` when one goes missing
    /// after that (mail from it is then not signed); `pending` before.
    pub status: DomainStatus,
    /// Every record to publish. `required` ones decide `status`; the SPF mechanism
    /// (merge it into your SPF record) and the DMARC record are advice, checked and
    /// reported too.
    pub records: Vec<DnsRecord>,
    pub keys: Vec<DkimKeyView>,
    pub created_at: DateTime<Utc>,
    pub checked_at: Option<DateTime<Utc>>,
    pub verified_at: Option<DateTime<Utc>>,
}

impl From<SenderDomain> for DomainView {
    fn from(d: SenderDomain) -> Self {
        Self {
            id: d.id.to_string(),
            name: d.name.as_str().to_owned(),
            status: d.status,
            records: d.records,
            keys: d
                .keys
                .into_iter()
                .map(|k| DkimKeyView {
                    selector: k.selector,
                    algorithm: k.algorithm,
                    state: k.state,
                    created_at: k.created_at,
                    retire_after: k.retire_after,
                })
                .collect(),
            created_at: d.created_at,
            checked_at: d.checked_at,
            verified_at: d.verified_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DomainList {
    /// Oldest first.
    pub data: Vec<DomainView>,
    pub next_cursor: Option<String>,
}

pub(crate) fn problem(err: DomainsError) -> ApiError {
    match err {
        DomainsError::NotFound => ApiError::new(Kind::NotFound, "domain_not_found", err.to_string()),
        DomainsError::NameTaken(_) => ApiError::new(Kind::Conflict, "domain_exists", err.to_string()),
        DomainsError::RotationPending => ApiError::new(Kind::Conflict, "rotation_pending", err.to_string()),
        other @ (DomainsError::Key(_) | DomainsError::Store(_) | DomainsError::Join(_)) => ApiError::internal(other),
    }
}

/// Add a sender domain.
///
/// Answers with every DNS record to publish: a DKIM TXT record per key (RSA-2048,
/// and Ed25519 when asked), the return-path CNAME (bounces of its mail go to
/// `bounces.<domain>`, so SPF aligns with `From` for DMARC), the SPF mechanism of the
/// relays and a DMARC suggestion. Publish them, then `POST …/verify`. Mail from a
/// verified domain (or a subdomain) is DKIM-signed when it is delivered.
#[utoipa::path(
    tag = "domains",
    request_body = CreateDomainRequest,
    security(("bearer" = ["domains:manage"])),
    responses(
        (status = 201, description = "Created, pending", body = DomainView, headers(("Location" = String))),
        (status = 409, description = "The tenant already has this domain (`domain_exists`)", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "Not a domain name (`invalid_domain`)", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[post("/v1/domains")]
pub async fn create_domain(
    auth: Authenticated<DomainsManage>,
    body: JsonBody<CreateDomainRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let req = body.0;
    let name = DomainName::parse(&req.name).map_err(|e| ApiError::unprocessable(vec![FieldError::new("/name", &e)]))?;
    let domain = state
        .domains
        .create(&auth.principal.tenant, name, req.ed25519)
        .await
        .map_err(problem)?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/v1/domains/{}", domain.id)))
        .json(DomainView::from(domain)))
}

/// List sender domains.
#[utoipa::path(
    tag = "domains",
    security(("bearer" = ["domains:manage"])),
    responses((status = 200, description = "Every domain of the tenant", body = DomainList))
)]
#[get("/v1/domains")]
pub async fn list_domains(
    auth: Authenticated<DomainsManage>,
    state: web::Data<AppState>,
) -> Result<web::Json<DomainList>, ApiError> {
    let domains = state.domains.list(&auth.principal.tenant).await.map_err(problem)?;
    Ok(web::Json(DomainList {
        data: domains.into_iter().map(DomainView::from).collect(),
        next_cursor: None,
    }))
}

/// Get a sender domain by id or name, with its records as last checked.
#[utoipa::path(
    tag = "domains",
    params(("id_or_name" = String, Path, description = "`dom_…` or the domain name")),
    security(("bearer" = ["domains:manage"])),
    responses(
        (status = 200, description = "The domain", body = DomainView),
        (status = 404, description = "No such domain (`domain_not_found`)", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[get("/v1/domains/{id_or_name}")]
pub async fn get_domain(
    auth: Authenticated<DomainsManage>,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<web::Json<DomainView>, ApiError> {
    let domain = state
        .domains
        .get(&auth.principal.tenant, &path)
        .await
        .map_err(problem)?;
    Ok(web::Json(domain.into()))
}

/// Remove a sender domain and its keys: its mail is no longer signed.
#[utoipa::path(
    tag = "domains",
    params(("id_or_name" = String, Path, description = "`dom_…` or the domain name")),
    security(("bearer" = ["domains:manage"])),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such domain (`domain_not_found`)", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[delete("/v1/domains/{id_or_name}")]
pub async fn delete_domain(
    auth: Authenticated<DomainsManage>,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state
        .domains
        .delete(&auth.principal.tenant, &path)
        .await
        .map_err(problem)?;
    Ok(HttpResponse::NoContent().finish())
}

/// Check the domain's records in DNS now.
///
/// Each record's `status` says what was found: `verified`, `pending` (never found) or
/// `failing` (found before, missing or different now). The domain is `verified` when
/// every required record is. Domains are also re-checked on a schedule
/// (`[dns] recheck`). A lookup that gets no answer at all leaves the record as it was.
#[utoipa::path(
    tag = "domains",
    params(("id_or_name" = String, Path, description = "`dom_…` or the domain name")),
    security(("bearer" = ["domains:manage"])),
    responses(
        (status = 200, description = "The domain as checked now", body = DomainView),
        (status = 404, description = "No such domain (`domain_not_found`)", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[post("/v1/domains/{id_or_name}/verify")]
pub async fn verify_domain(
    auth: Authenticated<DomainsManage>,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<web::Json<DomainView>, ApiError> {
    let domain = state
        .domains
        .verify(&auth.principal.tenant, &path)
        .await
        .map_err(problem)?;
    Ok(web::Json(domain.into()))
}

/// Start a DKIM key rotation without downtime.
///
/// Adds a new key (a new selector) beside each active one, `pending`: publish its
/// record. Mail keeps being signed with the old key until a check finds the new
/// record; then the new key signs and the old one is `retired`, its record to be kept
/// until `retire_after` (7 days) for mail signed before the switch.
#[utoipa::path(
    tag = "domains",
    params(("id_or_name" = String, Path, description = "`dom_…` or the domain name")),
    security(("bearer" = ["domains:manage"])),
    responses(
        (status = 200, description = "The domain with its new pending key and record", body = DomainView),
        (status = 404, description = "No such domain (`domain_not_found`)", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "A rotation already waits for its record (`rotation_pending`)", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[post("/v1/domains/{id_or_name}/rotate-dkim")]
pub async fn rotate_domain_dkim(
    auth: Authenticated<DomainsManage>,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<web::Json<DomainView>, ApiError> {
    let domain = state
        .domains
        .rotate(&auth.principal.tenant, &path)
        .await
        .map_err(problem)?;
    Ok(web::Json(domain.into()))
}
