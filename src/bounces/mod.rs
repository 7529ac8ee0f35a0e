//! Bounces and complaints: reading reports, mapping them back to the message and
//! recipient they are about (VERP), and recording them.

pub mod ingest;
pub mod providers;
pub mod report;
pub mod verp;
