//! Static files compiled into the binary: no CDN, no build step at run time.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use super::failure::Failure;

/// htmx 2.0.11 (0BSD), as published on npm (`htmx.org/dist/htmx.min.js`).
const HTMX: &str = include_str!("assets/htmx.min.js");
const CSS: &str = include_str!("assets/console.css");

pub async fn serve(name: web::Path<String>) -> Result<HttpResponse, Failure> {
    let (body, kind) = match name.as_str() {
        "htmx.min.js" => (HTMX, "text/javascript; charset=utf-8"),
        "console.css" => (CSS, "text/css; charset=utf-8"),
        _ => return Err(Failure::not_found("this asset")),
    };
    Ok(HttpResponse::Ok()
        .content_type(kind)
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(body))
}
