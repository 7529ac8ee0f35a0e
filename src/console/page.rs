//! The page shell: navigation, the strict Content-Security-Policy and the headers
//! every console answer carries.

use actix_web::http::{header, StatusCode};
use actix_web::HttpResponse;
use maud::{html, Markup, DOCTYPE};

use crate::auth::Principal;
use crate::domain::auth::Scope;

/// No inline script or style anywhere; frames only from this origin (the sandboxed
/// email frame); forms only to this origin.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                            connect-src 'self'; frame-src 'self'; form-action 'self'; base-uri 'none'; \
                            frame-ancestors 'none'";

/// htmx without eval, inline scripts or injected styles, so it runs under [`PAGE_CSP`].
const HTMX_CONFIG: &str =
    r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false,"historyCacheSize":0}"#;

/// The console's sections, for the navigation bar.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    Activity,
    Templates,
    Suppressions,
    Webhooks,
    Domains,
}

const SECTIONS: [(Section, &str, &str); 6] = [
    (Section::Overview, "/console", "Overview"),
    (Section::Activity, "/console/messages", "Activity"),
    (Section::Templates, "/console/templates", "Templates"),
    (Section::Suppressions, "/console/suppressions", "Suppressions"),
    (Section::Webhooks, "/console/webhooks", "Webhooks"),
    (Section::Domains, "/console/domains", "Domains"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="htmx-config" content=(HTMX_CONFIG);
            meta name="referrer" content="same-origin";
            title { (title) " · mailgate" }
            link rel="stylesheet" href="/console/assets/console.css";
            script src="/console/assets/htmx.min.js" defer {}
        }
    }
}

/// A page of the signed-in console.
pub fn render(user: &Principal, section: Section, title: &str, body: Markup) -> HttpResponse {
    respond(StatusCode::OK, user, section, title, body)
}

/// [`render`] with another status (a form shown again with its errors is a 422).
pub fn respond(status: StatusCode, user: &Principal, section: Section, title: &str, body: Markup) -> HttpResponse {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top {
                    a.brand href="/console" { "mailgate" }
                    nav {
                        @for (s, href, label) in SECTIONS {
                            a href=(href) aria-current=[(s == section).then_some("page")] { (label) }
                        }
                    }
                    div.who {
                        span.tenant title="tenant" { (user.tenant.as_str()) }
                        form method="post" action="/console/logout" { button.link type="submit" { "Sign out" } }
                    }
                }
                main { (body) }
            }
        }
    };
    html_response(status, markup)
}

/// A page outside the signed-in shell (sign-in, errors).
pub fn bare(status: StatusCode, title: &str, body: Markup) -> HttpResponse {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body { main.narrow { (body) } }
        }
    };
    html_response(status, markup)
}

/// An HTML fragment for htmx to swap in (same headers as a page).
pub fn fragment(markup: Markup) -> HttpResponse {
    html_response(StatusCode::OK, markup)
}

fn html_response(status: StatusCode, markup: Markup) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, PAGE_CSP))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(markup.into_string())
}

/// Whether the signed-in token grants `scope` (what greys out forms it cannot use).
pub fn can(user: &Principal, scope: Scope) -> bool {
    user.scopes.grants(scope)
}

/// Refuses a request whose token lacks `scope`, as the API would (403
/// `insufficient_scope`).
pub fn require(user: &Principal, scope: Scope) -> Result<(), super::Failure> {
    if can(user, scope) {
        Ok(())
    } else {
        Err(crate::api::problem::ApiError::insufficient_scope(scope.as_str()).into())
    }
}

/// A note shown where a form is read-only for this token.
pub fn read_only(scope: Scope) -> Markup {
    html! { p.readonly { "Read-only: this session's token lacks the " code { (scope.as_str()) } " scope." } }
}

/// A timestamp as people read it, to the second, in UTC.
pub fn when(at: &chrono::DateTime<chrono::Utc>) -> Markup {
    html! { time datetime=(at.to_rfc3339()) { (at.format("%Y-%m-%d %H:%M:%S")) } }
}
