//! Turning validated content into the exact bytes that go on the wire: handlebars
//! templates to text, then text to MIME.

mod helpers;
pub mod mime;
pub mod template;
pub mod text;

pub use mime::{render_mime, RenderError};
