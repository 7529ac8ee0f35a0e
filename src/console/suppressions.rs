//! Suppressions: find an address, see why and since when it is suppressed, add one
//! by hand, remove one. The same service calls as `/v1/suppressions`.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use maud::html;
use serde::Deserialize;

use super::failure::Failure;
use super::page::{self, Section};
use super::session::{ConsoleAction, ConsoleUser};
use crate::api::auth::{RequiredScope as _, SuppressionsManage};
use crate::api::suppressions::{suppress, unsuppress};
use crate::api::AppState;

const PAGE: usize = 50;

#[derive(Debug, Default, Deserialize)]
pub struct Search {
    /// The start of an address: every suppressed address that begins with it.
    #[serde(default)]
    q: String,
    /// The last address of the previous page.
    #[serde(default)]
    after: String,
}

#[derive(Debug, Deserialize)]
pub struct AddressForm {
    email: String,
}

fn back_to_list() -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/console/suppressions"))
        .finish()
}

/// `GET /console/suppressions`.
pub async fn list(
    ConsoleUser(user): ConsoleUser,
    search: web::Query<Search>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Failure> {
    page::require(&user, SuppressionsManage::SCOPE)?;
    let prefix = search.q.trim().to_ascii_lowercase();
    // Addresses are stored in order, so a prefix is a range: start just before it
    // (or after the last address shown) and stop at the first that does not match.
    let after = match search.after.trim() {
        "" => None,
        after => Some(after.to_owned()),
    };
    let wanted = prefix.clone();
    let (found, more) = state
        .store_call(&user.tenant, move |store, tenant| {
            let mut found = Vec::new();
            if after.is_none() && !wanted.is_empty() {
                found.extend(store.suppression(tenant, &wanted)?);
            }
            let start = after.or_else(|| (!wanted.is_empty()).then(|| wanted.clone()));
            let page = store.list_suppressions(tenant, start.as_deref(), PAGE + 1)?;
            found.extend(page.into_iter().take_while(|s| s.email.starts_with(&wanted)));
            let more = found.len() > PAGE;
            found.truncate(PAGE);
            Ok((found, more))
        })
        .await?;
    let next = more.then(|| found.last().map(|s| s.email.clone())).flatten();
    let body = html! {
        h1 { "Suppressions" }
        p.hint { "Mail to these addresses is not sent: the recipient's status is " code { "suppressed" } ". Hard bounces and complaints add themselves." }
        div.grid2 {
            form.filters method="get" action="/console/suppressions" {
                div { label for="q" { "Address starts with" } input #q type="search" name="q" value=(search.q); }
                button.secondary type="submit" { "Search" }
            }
            form.filters method="post" action="/console/suppressions" {
                div { label for="add-email" { "Suppress an address" } input #add-email type="email" name="email" required placeholder="someone@example.com"; }
                button type="submit" { "Add" }
            }
        }
        table.suppressions {
            thead { tr { th { "Address" } th { "Reason" } th { "Source" } th { "Since" } th {} } }
            tbody {
                @for s in &found {
                    tr {
                        td { (s.email) }
                        td { span.status.suppressed { (s.reason.as_str()) } }
                        td { (s.source) }
                        td { (page::when(&s.created_at)) }
                        td { form.inline method="post" action="/console/suppressions/remove" {
                            input type="hidden" name="email" value=(s.email);
                            button.secondary type="submit" aria-label={ "Remove " (s.email) } { "Remove" }
                        } }
                    }
                }
                @if found.is_empty() { tr { td colspan="5" .muted { "No suppressed addresses here." } } }
            }
        }
        @if let Some(last) = next {
            p.pager { a rel="next" href={ "/console/suppressions?" (serde_urlencoded::to_string([("q", search.q.as_str()), ("after", last.as_str())]).unwrap_or_default()) } { "More →" } }
        }
    };
    Ok(page::render(&user, Section::Suppressions, "Suppressions", body))
}

/// `POST /console/suppressions`: suppress an address by hand.
pub async fn add(
    ConsoleAction(user): ConsoleAction,
    form: web::Form<AddressForm>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Failure> {
    page::require(&user, SuppressionsManage::SCOPE)?;
    suppress(&state, &user.tenant, form.email.trim(), "console").await?;
    Ok(back_to_list())
}

/// `POST /console/suppressions/remove`.
pub async fn remove(
    ConsoleAction(user): ConsoleAction,
    form: web::Form<AddressForm>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Failure> {
    page::require(&user, SuppressionsManage::SCOPE)?;
    unsuppress(&state, &user.tenant, form.email.trim()).await?;
    Ok(back_to_list())
}
