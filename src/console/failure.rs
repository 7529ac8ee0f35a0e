//! Why a console request did not get its page: no session (go sign in), a request
//! from another site (refused), or an error of the services, shown as the API would
//! word it (one mapping of service errors, `ApiError`, serves both).

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use maud::html;

use super::page;
use crate::api::problem::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// No valid session cookie: the answer is a redirect to the sign-in page.
    #[error("sign in first")]
    SignIn,
    /// A state-changing request that did not come from this origin.
    #[error("this request did not come from the console's own pages")]
    CrossSite,
    #[error("{}", .0.problem().detail)]
    Api(#[from] ApiError),
}

impl Failure {
    pub fn not_found(what: &str) -> Self {
        Self::Api(ApiError::not_found(what))
    }
}

impl ResponseError for Failure {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::SignIn => StatusCode::SEE_OTHER,
            Self::CrossSite => StatusCode::FORBIDDEN,
            Self::Api(api) => api.status_code(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::SignIn => HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/console/login"))
                .finish(),
            Self::CrossSite => page::bare(
                StatusCode::FORBIDDEN,
                "Refused",
                html! { h1 { "Refused" } p { (self.to_string()) ". Nothing was changed." } },
            ),
            Self::Api(api) => {
                let status = api.status_code();
                if status.is_server_error() {
                    tracing::error!(error = %crate::telemetry::ErrorChain(api), "console request failed");
                }
                let problem = api.problem();
                page::bare(
                    status,
                    &problem.title,
                    html! {
                        h1 { (problem.title) }
                        p.detail { (problem.detail) }
                        @if !problem.errors.is_empty() {
                            ul.errors { @for e in &problem.errors { li { code { (e.field) } " " (e.message) } } }
                        }
                        p { a href="/console" { "Back to the console" } }
                    },
                )
            }
        }
    }
}

/// Any console path that is not a page.
pub async fn not_found() -> Result<HttpResponse, Failure> {
    Err(Failure::not_found("this page"))
}
