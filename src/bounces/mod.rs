//! Mapping bounces back to the message and recipient they are about.

pub mod verp;
