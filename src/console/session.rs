//! Signing in and out, the session cookie, and the same-origin check that guards
//! every state-changing request.
//!
//! The cookie holds a token the verifier checks on every request, like a bearer
//! token: its expiry, its revocation and its scopes apply unchanged, and nothing
//! about sessions is kept on the server. A pasted API token becomes the cookie as it
//! is. A one-time link from `mailgate console-link` carries a short-lived
//! `console-link` token: signing in with it revokes it (durably, so it works once)
//! and mints a `console-session` token for the cookie. The API refuses both kinds.

use std::future::{ready, Ready};
use std::time::Duration;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::Payload;
use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use maud::html;
use serde::Deserialize;

use super::failure::Failure;
use super::page;
use crate::api::problem::{ApiError, Kind};
use crate::api::AppState;
use crate::auth::{Principal, TokenPurpose};

pub const SESSION_COOKIE: &str = "mailgate_console";

/// How long a session started from a link lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// The signed-in person: the principal of the cookie's token.
pub struct ConsoleUser(pub Principal);

fn state(req: &HttpRequest) -> Result<&web::Data<AppState>, Failure> {
    req.app_data::<web::Data<AppState>>()
        .ok_or_else(|| Failure::Api(ApiError::internal(std::io::Error::other("application state missing"))))
}

fn session(req: &HttpRequest) -> Result<ConsoleUser, Failure> {
    let state = state(req)?;
    let cookie = req.cookie(SESSION_COOKIE).ok_or(Failure::SignIn)?;
    let principal = state.tokens.verify(cookie.value()).map_err(|_| Failure::SignIn)?;
    let usable = matches!(principal.purpose, TokenPurpose::Api | TokenPurpose::ConsoleSession);
    let revoked = principal
        .jti
        .as_deref()
        .is_some_and(|jti| state.revocations.is_revoked(jti));
    if !usable || revoked {
        return Err(Failure::SignIn);
    }
    Ok(ConsoleUser(principal))
}

impl FromRequest for ConsoleUser {
    type Error = Failure;
    type Future = Ready<Result<Self, Failure>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(session(req))
    }
}

/// A signed-in person on a state-changing request that came from the console's own
/// pages. Handlers that change anything take this instead of [`ConsoleUser`], so
/// none can forget the check.
pub struct ConsoleAction(pub Principal);

impl FromRequest for ConsoleAction {
    type Error = Failure;
    type Future = Ready<Result<Self, Failure>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(
            same_origin(req)
                .and_then(|()| session(req))
                .map(|user| ConsoleAction(user.0)),
        )
    }
}

/// CSRF defence beside SameSite=Strict: a browser names where a request comes from in
/// `Sec-Fetch-Site` and `Origin`; anything but this origin is refused, and so is a
/// request that names neither (every browser sends `Origin` on a POST).
pub fn same_origin(req: &HttpRequest) -> Result<(), Failure> {
    let headers = req.headers();
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if fetch_site.is_some_and(|site| site != "same-origin") {
        return Err(Failure::CrossSite);
    }
    let info = req.connection_info();
    let own = format!("{}://{}", info.scheme(), info.host());
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        Some(origin) if origin.eq_ignore_ascii_case(&own) => Ok(()),
        Some(_) => Err(Failure::CrossSite),
        None if fetch_site.is_some() => Ok(()),
        None => Err(Failure::CrossSite),
    }
}

fn cookie(req: &HttpRequest, value: String, max_age: Duration) -> Cookie<'static> {
    let mut cookie = Cookie::build(SESSION_COOKIE, value)
        .path("/console")
        .http_only(true)
        .same_site(SameSite::Strict)
        .max_age(actix_web::cookie::time::Duration::seconds(
            i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX),
        ))
        .finish();
    cookie.set_secure(req.connection_info().scheme() == "https");
    cookie
}

#[derive(Deserialize)]
pub struct LinkQuery {
    link: Option<String>,
}

fn login_page(status: StatusCode, link: Option<&str>, error: Option<&str>) -> HttpResponse {
    page::bare(
        status,
        "Sign in",
        html! {
            h1 { "mailgate console" }
            @if let Some(error) = error { p.error role="alert" { (error) } }
            form.login method="post" action="/console/login" {
                @match link {
                    Some(link) => {
                        p { "Sign in with the one-time link from " code { "mailgate console-link" } "." }
                        input type="hidden" name="token" value=(link);
                    }
                    None => {
                        label for="token" { "API token" }
                        textarea #token name="token" rows="4" required autocomplete="off" spellcheck="false"
                            placeholder="eyJ…" {}
                        p.hint { "Paste a token from " code { "mailgate token issue" } ", or open a link from "
                            code { "mailgate console-link --tenant …" } ". The console shows what its scopes allow." }
                    }
                }
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// `GET /console/login`: the token form, or the button that uses a one-time link
/// (a GET never uses it up, so a link preview cannot burn it).
pub async fn login_form(query: web::Query<LinkQuery>) -> HttpResponse {
    login_page(StatusCode::OK, query.link.as_deref(), None)
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

/// `POST /console/login`: checks the token and sets the session cookie.
pub async fn login(req: HttpRequest, form: web::Form<LoginForm>) -> Result<HttpResponse, Failure> {
    same_origin(&req)?;
    let state = state(&req)?;
    let token = form.token.trim();
    let refused = |why: &str| Ok(login_page(StatusCode::UNAUTHORIZED, None, Some(why)));
    let principal = match state.tokens.verify(token) {
        Ok(principal) => principal,
        Err(err) => return refused(&err.to_string()),
    };
    if principal
        .jti
        .as_deref()
        .is_some_and(|jti| state.revocations.is_revoked(jti))
    {
        return refused(match principal.purpose {
            TokenPurpose::ConsoleLink => "this sign-in link was already used; print a new one",
            _ => "the token has been revoked",
        });
    }
    let now = jsonwebtoken::get_current_timestamp();
    let (value, lasts) = match principal.purpose {
        TokenPurpose::Api => (
            token.to_owned(),
            Duration::from_secs(principal.expires.saturating_sub(now)),
        ),
        TokenPurpose::ConsoleLink => {
            let Some(jti) = principal.jti.clone() else {
                return refused("the sign-in link has no id, so it cannot be used once");
            };
            let until = principal.expires;
            if !state.revocations.revoke_once(&jti, until) {
                return refused("this sign-in link was already used; print a new one");
            }
            let revoke = jti.clone();
            state
                .store_call(&principal.tenant, move |store, _| store.revoke_token(&revoke, until))
                .await?;
            let session = state
                .tokens
                .issue_for(
                    TokenPurpose::ConsoleSession,
                    &principal.tenant,
                    &principal.scopes,
                    SESSION_TTL,
                    &principal.subject,
                )
                .map_err(|err| {
                    tracing::error!(error = %err, "could not sign a console session");
                    ApiError::new(
                        Kind::Internal,
                        "internal_error",
                        "the console session could not be signed",
                    )
                })?;
            (session, SESSION_TTL)
        }
        TokenPurpose::ConsoleSession | TokenPurpose::Unknown => {
            return refused("this is not a token the console signs in with")
        }
    };
    tracing::info!(tenant = %principal.tenant, subject = %principal.subject, "console sign-in");
    Ok(HttpResponse::SeeOther()
        .cookie(cookie(&req, value, lasts))
        .insert_header((header::LOCATION, "/console"))
        .finish())
}

/// `POST /console/logout`: forgets the cookie; a session minted from a link is also
/// revoked, so a copied cookie stops working too.
pub async fn logout(req: HttpRequest) -> Result<HttpResponse, Failure> {
    same_origin(&req)?;
    let state = state(&req)?;
    if let Ok(ConsoleUser(user)) = session(&req) {
        if let (TokenPurpose::ConsoleSession, Some(jti)) = (user.purpose, user.jti.clone()) {
            let until = user.expires;
            let revoke = jti.clone();
            state
                .store_call(&user.tenant, move |store, _| store.revoke_token(&revoke, until))
                .await?;
            state.revocations.revoke(&jti, until);
        }
    }
    let mut gone = cookie(&req, String::new(), Duration::ZERO);
    gone.make_removal();
    Ok(HttpResponse::SeeOther()
        .cookie(gone)
        .insert_header((header::LOCATION, "/console/login"))
        .finish())
}
