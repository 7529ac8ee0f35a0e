//! Turning a validated message into the exact bytes that go on the wire.

pub mod mime;

pub use mime::{render_mime, RenderError};
