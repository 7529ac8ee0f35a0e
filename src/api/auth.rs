//! The bearer-token extractor. The scope a handler needs is part of its signature
//! (`Authenticated<MessagesSend>`), so a handler cannot forget to check it.

use std::future::{ready, Ready};
use std::marker::PhantomData;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};

use super::problem::ApiError;
use super::AppState;
use crate::auth::Principal;
use crate::domain::auth::Scope;

/// A scope as a type, for [`Authenticated`].
pub trait RequiredScope {
    const SCOPE: Scope;
}

macro_rules! scope_marker {
    ($name:ident, $scope:expr) => {
        #[doc = concat!("Requires the `", stringify!($name), "` scope.")]
        pub struct $name;
        impl RequiredScope for $name {
            const SCOPE: Scope = $scope;
        }
    };
}

scope_marker!(MessagesSend, Scope::MessagesSend);
scope_marker!(MessagesRead, Scope::MessagesRead);
scope_marker!(TemplatesRead, Scope::TemplatesRead);
scope_marker!(TemplatesWrite, Scope::TemplatesWrite);
scope_marker!(SuppressionsManage, Scope::SuppressionsManage);
scope_marker!(DomainsManage, Scope::DomainsManage);
scope_marker!(WebhooksManage, Scope::WebhooksManage);
scope_marker!(BouncesWrite, Scope::BouncesWrite);
scope_marker!(Admin, Scope::Admin);

/// A caller whose token verified and grants `S`.
pub struct Authenticated<S: RequiredScope> {
    pub principal: Principal,
    _scope: PhantomData<S>,
}

fn authenticate<S: RequiredScope>(req: &HttpRequest) -> Result<Authenticated<S>, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::internal(std::io::Error::other("application state missing")))?;
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| ApiError::invalid_token("send `Authorization: Bearer <token>`"))?;
    let principal = state
        .tokens
        .verify(token)
        .map_err(|err| ApiError::invalid_token(err.to_string()))?;
    if principal.purpose != crate::auth::TokenPurpose::Api {
        return Err(ApiError::invalid_token(
            "console sign-in links and sessions are not API tokens",
        ));
    }
    if principal
        .jti
        .as_deref()
        .is_some_and(|jti| state.revocations.is_revoked(jti))
    {
        return Err(ApiError::invalid_token("the token has been revoked"));
    }
    if !principal.scopes.grants(S::SCOPE) {
        return Err(ApiError::insufficient_scope(S::SCOPE.as_str()));
    }
    Ok(Authenticated {
        principal,
        _scope: PhantomData,
    })
}

impl<S: RequiredScope> FromRequest for Authenticated<S> {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}
