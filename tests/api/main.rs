//! All integration tests in one binary (one link instead of many). They speak HTTP to
//! the app on a random port and deliver through the real Postfix started by
//! `tests/support/postfix.sh` (the README's test command starts it).

mod auth_and_input;
mod bounces;
mod cli;
mod cluster;
mod compat;
mod config_file;
mod console;
mod crash;
mod delivery;
mod domains;
mod events;
mod helpers;
mod hostile;
mod operations;
mod provider_sdks;
mod relay_tls;
mod retention;
mod sandbox;
mod stats;
mod templates;
mod unsubscribe;
mod upstreams;
mod webhooks;
