//! Sender domains: each domain's status, the DNS records to publish with what the last
//! check found, its DKIM keys, and "check now". The same `Domains` service as
//! `/v1/domains`.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use maud::html;

use super::failure::Failure;
use super::page::{self, Section};
use super::session::{ConsoleAction, ConsoleUser};
use crate::api::auth::{DomainsManage, RequiredScope as _};
use crate::api::domains::problem;
use crate::api::AppState;
use crate::domain::sender_domain::DomainStatus;

fn status_class(status: DomainStatus) -> &'static str {
    match status {
        DomainStatus::Verified => "sent",
        DomainStatus::Pending => "queued",
        DomainStatus::Failing => "failed",
    }
}

/// `GET /console/domains`.
pub async fn list(ConsoleUser(user): ConsoleUser, state: web::Data<AppState>) -> Result<HttpResponse, Failure> {
    page::require(&user, DomainsManage::SCOPE)?;
    let domains = state.domains.list(&user.tenant).await.map_err(problem)?;
    let body = html! {
        h1 { "Sender domains" }
        p.hint { "Add a domain with " code { "POST /v1/domains" } ". Mail from a verified domain (or a subdomain) is DKIM-signed at delivery and its bounces return under it." }
        @for d in &domains {
            div.panel {
                h2 { (d.name.as_str()) " " span class={ "status " (status_class(d.status)) } { (d.status.as_str()) } }
                p.muted {
                    code { (d.id) }
                    @if let Some(at) = &d.checked_at { " · checked " (page::when(at)) }
                    @if let Some(at) = &d.verified_at { " · verified since " (page::when(at)) }
                }
                table.records {
                    thead { tr { th { "Type" } th { "Name" } th { "Value" } th { "Purpose" } th { "Status" } } }
                    tbody { @for r in &d.records {
                        tr {
                            td { code { (r.record_type) } }
                            td { code { (r.name) } }
                            td { code.value { (r.value) } }
                            td { (r.purpose.as_str()) @if !r.required { " (advice)" } }
                            td { span class={ "status " (status_class(r.status)) } { (r.status.as_str()) } }
                        }
                    } }
                }
                p { "Keys: " @for k in &d.keys { code { (k.selector) } " " (k.algorithm.tag()) " " (k.state.as_str()) "; " } }
                form.inline method="post" action={ "/console/domains/" (d.id) "/verify" } {
                    button.secondary type="submit" { "Check DNS now" }
                }
            }
        }
        @if domains.is_empty() { p.muted { "No sender domains yet." } }
    };
    Ok(page::render(&user, Section::Domains, "Sender domains", body))
}

/// `POST /console/domains/{id}/verify`: checks the records now.
pub async fn verify(
    ConsoleAction(user): ConsoleAction,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Failure> {
    page::require(&user, DomainsManage::SCOPE)?;
    state.domains.verify(&user.tenant, &path).await.map_err(problem)?;
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/console/domains"))
        .finish())
}
