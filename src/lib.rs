//! mailgate: a self-hosted transactional email gateway.
//!
//! One email's path reads straight down the modules: [`api`] (auth, parse) →
//! [`sending`] (render with [`render`], store durably in [`store`]) → `202`; then
//! [`delivery`] leases it, sends it over SMTP and records each outcome.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod backpressure;
pub mod bounces;
pub mod config;
pub mod console;
pub mod delivery;
pub mod dkim;
pub mod domain;
pub mod domains;
pub mod limits;
pub mod metrics;
pub mod render;
pub mod retention;
pub mod sending;
pub mod startup;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod templates;
pub mod unsubscribe;
pub mod webhooks;
