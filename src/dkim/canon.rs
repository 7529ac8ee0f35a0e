//! DKIM "relaxed" canonicalization (RFC 6376 §3.4.2 and §3.4.4): what survives a relay
//! that refolds headers or changes whitespace, so a signature made here still verifies
//! after Postfix (or any MTA) has rewritten line breaks.

/// Splits raw message bytes into its header fields (each with its folded
/// continuation lines, without the final CRLF) and its body.
pub fn split(message: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut fields: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut at = 0;
    while at < message.len() {
        let end = message[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(message.len(), |p| at + p + 1);
        let line = &message[at..end];
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if content.is_empty() {
            if at > start {
                fields.push(trim_line_end(&message[start..at]));
            }
            return (fields, &message[end..]);
        }
        let continues = matches!(content.first(), Some(b' ' | b'\t'));
        if !continues && at > start {
            fields.push(trim_line_end(&message[start..at]));
            start = at;
        }
        at = end;
    }
    if at > start {
        fields.push(trim_line_end(&message[start..at]));
    }
    (fields, &[])
}

fn trim_line_end(field: &[u8]) -> &[u8] {
    let field = field.strip_suffix(b"\n").unwrap_or(field);
    field.strip_suffix(b"\r").unwrap_or(field)
}

/// The field's name as written (before the colon).
pub fn name(field: &[u8]) -> &[u8] {
    let colon = field.iter().position(|&b| b == b':').unwrap_or(field.len());
    trim_wsp(&field[..colon])
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_wsp(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| !is_wsp(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|&b| !is_wsp(b)).map_or(start, |p| p + 1);
    &bytes[start..end]
}

/// `name:value` relaxed: name lower-cased, the value unfolded, runs of whitespace one
/// space, none around the colon or at the end. No CRLF is appended.
pub fn header(field: &[u8]) -> Vec<u8> {
    let colon = field.iter().position(|&b| b == b':').unwrap_or(field.len());
    let mut out: Vec<u8> = trim_wsp(&field[..colon]).to_ascii_lowercase();
    out.push(b':');
    let value = field.get(colon + 1..).unwrap_or_default();
    // Whitespace before the value's first character goes; inside it, a run is one space.
    let mut started = false;
    let mut pending_space = false;
    for &b in value {
        match b {
            b'\r' | b'\n' => {}
            b' ' | b'\t' => pending_space = true,
            _ => {
                if pending_space && started {
                    out.push(b' ');
                }
                started = true;
                pending_space = false;
                out.push(b);
            }
        }
    }
    out
}

/// The body relaxed: whitespace runs one space, none at line ends, no empty lines at
/// the end, and a body that is not empty ends with CRLF.
pub fn body(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut empty_run = 0usize;
    let mut lines = raw.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        if lines.peek().is_none() && line.is_empty() {
            break;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut canon = Vec::with_capacity(line.len());
        let mut pending_space = false;
        for &b in line {
            if is_wsp(b) {
                pending_space = true;
            } else {
                if pending_space {
                    canon.push(b' ');
                }
                pending_space = false;
                canon.push(b);
            }
        }
        if canon.is_empty() {
            empty_run += 1;
            continue;
        }
        for _ in 0..empty_run {
            out.extend_from_slice(b"\r\n");
        }
        empty_run = 0;
        out.extend_from_slice(&canon);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relaxed_headers_survive_refolding_and_case() {
        let sent = header(b"Subject:  A  long\r\n\tsubject  ");
        let refolded = header(b"SUBJECT : A long subject");
        assert_eq!(sent, b"subject:A long subject");
        assert_eq!(refolded, sent);
        assert_eq!(header(b"Subject: Re:  hello: again"), b"subject:Re: hello: again");
        assert_eq!(header(b"X-Empty:   "), b"x-empty:");
    }

    #[test]
    fn relaxed_body_drops_trailing_space_and_empty_lines() {
        assert_eq!(body(b"Hi  there \r\n\r\nbye\t\r\n\r\n\r\n"), b"Hi there\r\n\r\nbye\r\n");
        assert_eq!(body(b"no newline"), b"no newline\r\n");
        assert_eq!(body(b""), b"");
        assert_eq!(body(b"\r\n\r\n"), b"");
    }

    #[test]
    fn fields_keep_their_continuations_and_the_body_starts_after_the_blank_line() {
        let (fields, body) = split(b"From: a@b\r\nSubject: one\r\n two\r\nTo: c@d\r\n\r\nbody\r\n");
        assert_eq!(fields, [&b"From: a@b"[..], b"Subject: one\r\n two", b"To: c@d"]);
        assert_eq!(name(fields[1]), b"Subject");
        assert_eq!(body, b"body\r\n");
    }
}
