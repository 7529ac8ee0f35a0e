//! Activity: the tenant's messages, newest first, narrowed like `GET /v1/messages`
//! (one [`MessageFilter`]) and by date, a page at a time.

use actix_web::{web, HttpResponse};
use chrono::{NaiveDate, TimeZone as _, Utc};
use maud::html;
use serde::Deserialize;

use super::failure::Failure;
use super::page::{self, Section};
use super::session::ConsoleUser;
use crate::api::auth::{MessagesRead, RequiredScope as _};
use crate::api::messages::LIST_BUDGET;
use crate::api::problem::ApiError;
use crate::api::AppState;
use crate::domain::ids::MessageId;
use crate::domain::message::MessageFilter;
use crate::domain::status::MessageStatus;

const PAGE: usize = 50;

const STATUSES: [MessageStatus; 7] = [
    MessageStatus::Scheduled,
    MessageStatus::Queued,
    MessageStatus::Sending,
    MessageStatus::Deferred,
    MessageStatus::Sent,
    MessageStatus::Failed,
    MessageStatus::Cancelled,
];

/// The search form as submitted: empty fields mean "any".
#[derive(Debug, Default, Deserialize)]
pub struct Search {
    #[serde(default)]
    recipient: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    template: String,
    /// `YYYY-MM-DD`: messages created on or before that day (UTC).
    #[serde(default)]
    until: String,
    #[serde(default)]
    cursor: String,
}

fn given(field: &str) -> Option<String> {
    let trimmed = field.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

impl Search {
    fn filter(&self) -> MessageFilter {
        MessageFilter {
            status: STATUSES.into_iter().find(|s| s.as_str() == self.status),
            tag: given(&self.tag),
            recipient: given(&self.recipient),
            template: given(&self.template),
        }
    }

    /// Where the page starts: the cursor of the previous page, else the end of `until`.
    fn start(&self) -> Result<Option<MessageId>, ApiError> {
        if let Some(cursor) = given(&self.cursor) {
            return MessageId::parse(&cursor)
                .map(Some)
                .map_err(|_| ApiError::not_found("this page"));
        }
        Ok(given(&self.until)
            .and_then(|day| NaiveDate::parse_from_str(&day, "%Y-%m-%d").ok())
            .and_then(|day| day.succ_opt())
            .and_then(|next| next.and_hms_opt(0, 0, 0))
            .map(|midnight| MessageId::bound_at(Utc.from_utc_datetime(&midnight))))
    }

    fn next_page(&self, cursor: &MessageId) -> String {
        let query: Vec<(&str, &str)> = [
            ("recipient", self.recipient.as_str()),
            ("status", self.status.as_str()),
            ("tag", self.tag.as_str()),
            ("template", self.template.as_str()),
            ("cursor", cursor.as_str()),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
        format!(
            "/console/messages?{}",
            serde_urlencoded::to_string(query).unwrap_or_default()
        )
    }
}

pub async fn list(
    ConsoleUser(user): ConsoleUser,
    search: web::Query<Search>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Failure> {
    page::require(&user, MessagesRead::SCOPE)?;
    let search = search.into_inner();
    let filter = search.filter();
    let start = search.start()?;
    let (found, next) = state
        .store_call(&user.tenant, move |store, tenant| {
            store.list_messages(tenant, start.as_ref(), PAGE, LIST_BUDGET, &|m| filter.matches(m))
        })
        .await?;
    let body = html! {
        h1 { "Activity" }
        form.filters method="get" action="/console/messages" {
            div { label for="recipient" { "Recipient" } input #recipient type="search" name="recipient" value=(search.recipient) placeholder="someone@example.com"; }
            div { label for="status" { "Status" }
                select #status name="status" {
                    option value="" { "any" }
                    @for s in STATUSES { option value=(s.as_str()) selected[search.status == s.as_str()] { (s.as_str()) } }
                }
            }
            div { label for="tag" { "Tag" } input #tag name="tag" value=(search.tag); }
            div { label for="template" { "Template" } input #template name="template" value=(search.template); }
            div { label for="until" { "Created on or before" } input #until type="date" name="until" value=(search.until); }
            button type="submit" { "Search" }
        }
        table.messages {
            thead { tr { th { "Created" } th { "Status" } th { "To" } th { "Subject" } th { "Tags" } } }
            tbody {
                @for m in &found {
                    tr {
                        td { a href={ "/console/messages/" (m.id) } { (page::when(&m.created_at)) } }
                        td { span class={ "status " (m.status.as_str()) } { (m.status.as_str()) } }
                        td { (m.to.join(", ")) }
                        td { a href={ "/console/messages/" (m.id) } { (m.subject) } }
                        td { (m.tags.join(", ")) }
                    }
                }
                @if found.is_empty() { tr { td colspan="5" .muted { "No messages on this page." } } }
            }
        }
        @if let Some(next) = &next {
            p.pager { a href=(search.next_page(next)) rel="next" { "Older →" } }
        }
    };
    Ok(page::render(&user, Section::Activity, "Activity", body))
}
