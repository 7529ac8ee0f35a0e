//! MIME building with lettre: multipart/alternative for text+html, multipart/related
//! for inline images, multipart/mixed for attachments, RFC 2047 for non-ASCII headers.
//!
//! The result is rendered once at acceptance and stored; every delivery attempt sends
//! these same bytes, so what `GET /v1/messages/{id}/mime` shows is what was sent.

use std::time::SystemTime;

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{
    Attachment as LettreAttachment, Mailbox as LettreMailbox, MultiPart, MultiPartBuilder, SinglePart,
};
use lettre::{Address, Message};

use crate::domain::address::Mailbox;
use crate::domain::ids::MessageId;
use crate::domain::message::{Attachment, Body, NewMessage, ReadyContent};

/// A message that passed validation but that lettre still refused to build. This is
/// a bug or a gap in validation, never user error worth a 4xx with details.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("lettre refused address `{0}`")]
    Address(String),
    #[error("lettre refused the message")]
    Build(#[from] lettre::error::Error),
    #[error("lettre refused header `{0}`")]
    Header(String),
    #[error("lettre refused content type `{0}`")]
    ContentType(String),
}

fn to_lettre(mbox: &Mailbox) -> Result<LettreMailbox, RenderError> {
    let email = mbox.email();
    let address =
        Address::new(email.local_part(), email.domain()).map_err(|_| RenderError::Address(email.to_string()))?;
    Ok(LettreMailbox::new(mbox.name().map(str::to_owned), address))
}

/// Renders `msg` to RFC 5322 bytes with `Message-ID: <id@message_id_domain>`.
///
/// Bcc recipients are deliberately absent from the headers: they exist only on the
/// envelope the worker builds per recipient.
pub fn render_mime(
    msg: &NewMessage,
    content: &ReadyContent,
    id: &MessageId,
    message_id_domain: &str,
    date: SystemTime,
) -> Result<Vec<u8>, RenderError> {
    let from = to_lettre(&msg.from)?;
    let mut builder = Message::builder()
        .from(from.clone())
        .subject(content.subject.as_str())
        .date(date)
        .message_id(Some(format!("<{id}@{message_id_domain}>")));
    for mbox in &msg.to {
        builder = builder.to(to_lettre(mbox)?);
    }
    for mbox in &msg.cc {
        builder = builder.cc(to_lettre(mbox)?);
    }
    for mbox in &msg.reply_to {
        builder = builder.reply_to(to_lettre(mbox)?);
    }
    for header in &msg.headers {
        let name = HeaderName::new_from_ascii(header.name().to_owned())
            .map_err(|_| RenderError::Header(header.name().to_owned()))?;
        builder = builder.raw_header(HeaderValue::new(name, header.value().to_owned()));
    }
    // The envelope is rebuilt per recipient at delivery; lettre only needs a valid one.
    let envelope = lettre::address::Envelope::new(Some(from.email.clone()), vec![from.email])?;
    let builder = builder.envelope(envelope);
    let message = match body_tree(msg, &content.body)? {
        Node::Single(part) => builder.singlepart(part)?,
        Node::Multi(multi) => builder.multipart(multi)?,
    };
    Ok(message.formatted())
}

/// A MIME tree under construction: one part, or a multipart around several.
enum Node {
    Single(SinglePart),
    Multi(MultiPart),
}

impl Node {
    /// Wraps `self` and `extra` parts in a new multipart (`related` or `mixed`).
    fn wrap(self, outer: MultiPartBuilder, extra: Vec<SinglePart>) -> Node {
        let first = match self {
            Node::Single(part) => outer.singlepart(part),
            Node::Multi(multi) => outer.multipart(multi),
        };
        Node::Multi(extra.into_iter().fold(first, MultiPart::singlepart))
    }
}

fn attachment_part(att: &Attachment) -> Result<SinglePart, RenderError> {
    let content_type = ContentType::parse(att.media_type.as_str())
        .map_err(|_| RenderError::ContentType(att.media_type.as_str().to_owned()))?;
    let builder = match &att.content_id {
        Some(cid) => LettreAttachment::new_inline_with_name(cid.as_str().to_owned(), att.filename.as_str().to_owned()),
        None => LettreAttachment::new(att.filename.as_str().to_owned()),
    };
    Ok(builder.body(att.content.clone(), content_type))
}

/// Nests the parts as mail clients expect —
/// mixed[ related[ alternative[text, html], inline… ], attachment… ] —
/// leaving out every level that would hold a single part.
fn body_tree(msg: &NewMessage, body: &Body) -> Result<Node, RenderError> {
    let mut node = match body {
        Body::Text(text) => Node::Single(SinglePart::plain(text.clone())),
        Body::Html(html) => Node::Single(SinglePart::html(html.clone())),
        Body::Both { text, html } => Node::Multi(MultiPart::alternative_plain_html(text.clone(), html.clone())),
    };
    let (inline, files): (Vec<_>, Vec<_>) = msg.attachments.iter().partition(|a| a.content_id.is_some());
    if !inline.is_empty() {
        let parts = inline.into_iter().map(attachment_part).collect::<Result<_, _>>()?;
        node = node.wrap(MultiPart::related(), parts);
    }
    if !files.is_empty() {
        let parts = files.into_iter().map(attachment_part).collect::<Result<_, _>>()?;
        node = node.wrap(MultiPart::mixed(), parts);
    }
    Ok(node)
}
