//! `/v1/events`: the tenant's event stream, in order, with a cursor — the same events
//! webhooks push, so a consumer can catch up after downtime.

use actix_web::{get, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Authenticated, MessagesRead};
use super::pagination::{invalid_cursor, page_size};
use super::problem::{ApiError, FieldError, Problem, PROBLEM_JSON};
use super::query::Query;
use super::AppState;
use crate::domain::event::PublishedEvent;
use crate::domain::status::EventType;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Continue after this cursor (a `next_cursor` of an earlier page); from the
    /// beginning when absent.
    pub after: Option<String>,
    /// Only these types, comma-separated (e.g. `message.bounced,message.complained`).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub event_type: Option<String>,
    /// 1 to 100, default 20.
    #[param(minimum = 1, maximum = 100, default = 20)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    /// Oldest first.
    pub data: Vec<PublishedEvent>,
    /// Where to continue: pass it as `after`. It moves past filtered-out events too,
    /// and stays put while no new events exist, so polling with it never misses one.
    pub next_cursor: Option<String>,
}

/// List events in stream order.
///
/// Each event is written in the same transaction as the status change it records.
/// The stream is ordered: an event appears only after every event before it.
#[utoipa::path(
    tag = "events",
    params(EventsQuery),
    security(("bearer" = ["messages:read"])),
    responses(
        (status = 200, description = "A page of events", body = EventList),
        (status = 422, description = "Invalid `after`, `type` or `limit`", body = Problem, content_type = PROBLEM_JSON),
    )
)]
#[get("/v1/events")]
pub async fn list_events(
    auth: Authenticated<MessagesRead>,
    query: Query<EventsQuery>,
    state: web::Data<AppState>,
) -> Result<web::Json<EventList>, ApiError> {
    let limit = page_size(query.limit)?;
    let after = match &query.after {
        Some(raw) => Some(raw.parse::<u64>().map_err(|_| invalid_cursor("after"))?),
        None => None,
    };
    let types = match &query.event_type {
        Some(raw) => raw
            .split(',')
            .map(|t| EventType::parse(t.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| ApiError::unprocessable(vec![FieldError::new("type", &err)]))?,
        None => Vec::new(),
    };
    let (data, last) = state
        .store_call(&auth.principal.tenant, move |store, tenant| {
            store.events(tenant, after, &types, limit)
        })
        .await?;
    Ok(web::Json(EventList {
        data,
        next_cursor: last.map(|p| p.to_string()),
    }))
}
