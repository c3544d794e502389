//! What a queue accepts: the bounds on names, payloads, leases and batches,
//! and the checks every queue runs before it stores anything. Backends call
//! these checks so that every queue refuses the same input in the same words.

use crate::error::{Error, Result};
use crate::message::MessageId;
use std::time::Duration;

/// The longest message type name a queue accepts, in bytes.
pub const MAX_TYPE_NAME_BYTES: usize = 255;
/// The largest payload a queue accepts, in bytes of JSON text (16 MiB).
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024 * 1024;
/// The longest lease a queue grants (one day). A handler that needs longer
/// renews its lease.
pub const MAX_LEASE: Duration = Duration::from_secs(24 * 60 * 60);
/// The most messages one call leases, renews or prunes.
pub const MAX_BATCH: usize = 10_000;
/// The longest handler name a processed record keeps, in bytes.
pub const MAX_HANDLER_BYTES: usize = 255;
/// The longest error text a dead letter keeps, in bytes; a longer one is cut
/// (on a character boundary) and marked as cut.
pub const MAX_ERROR_BYTES: usize = 8 * 1024;

/// A message type name is non-empty, short enough and printable.
///
/// # Errors
/// [`Error::InvalidInput`] saying what is wrong.
pub fn check_type_name(id: MessageId, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidInput(format!(
            "message {id} has an empty type name; nothing was queued. Give it its wire name \
             (`Message::NAME`, e.g. \"orders.placed\")"
        )));
    }
    if name.len() > MAX_TYPE_NAME_BYTES {
        return Err(Error::InvalidInput(format!(
            "the type name of message {id} is {} bytes long, more than the {MAX_TYPE_NAME_BYTES} \
             a queue accepts; nothing was queued. Use a shorter wire name",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::InvalidInput(format!(
            "the type name of message {id} ({name:?}) holds control characters; nothing was \
             queued. Use a printable wire name"
        )));
    }
    Ok(())
}

/// `json` (the payload or the headers, `what`, as JSON text) fits and has no
/// `\u0000` escape.
///
/// # Errors
/// [`Error::InvalidInput`] saying what is wrong.
pub fn check_payload(id: MessageId, name: &str, what: &str, json: &str) -> Result<()> {
    if json.len() > MAX_PAYLOAD_BYTES {
        return Err(Error::InvalidInput(format!(
            "the {what} of `{name}` message {id} is {} bytes of JSON, more than the \
             {MAX_PAYLOAD_BYTES} a queue accepts; nothing was queued. Send a reference to the \
             data (a blob id) instead of the data",
            json.len()
        )));
    }
    if has_nul_escape(json) {
        return Err(Error::InvalidInput(format!(
            "the {what} of `{name}` message {id} holds a NUL character (\\u0000), which \
             PostgreSQL's jsonb cannot store; nothing was queued. Strip NUL characters from the \
             message's strings (or encode binary data as base64)"
        )));
    }
    Ok(())
}

/// Whether JSON text holds a `\u0000` escape (an escaped backslash followed by
/// `u0000` does not count).
fn has_nul_escape(json: &str) -> bool {
    let bytes = json.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if bytes.get(i + 1) == Some(&b'u') && bytes.get(i + 2..i + 6) == Some(b"0000") {
                return true;
            }
            i += 2; // the escaped character, whatever it is
        } else {
            i += 1;
        }
    }
    false
}

/// A lease is longer than zero and at most [`MAX_LEASE`].
///
/// # Errors
/// [`Error::InvalidInput`] saying what is wrong.
pub fn check_lease(lease: Duration) -> Result<()> {
    if lease.is_zero() {
        return Err(Error::InvalidInput(
            "a lease of zero expires before the handler starts; nothing was leased. Lease for \
             longer than a handler takes (and renew it for long handlers)"
                .to_owned(),
        ));
    }
    if lease > MAX_LEASE {
        return Err(Error::InvalidInput(format!(
            "a lease of {lease:?} is longer than the {MAX_LEASE:?} a queue grants; nothing was \
             leased. Lease for less and renew the lease while the handler runs"
        )));
    }
    Ok(())
}

/// A batch size (`what` names the call) is between 1 and [`MAX_BATCH`].
///
/// # Errors
/// [`Error::InvalidInput`] saying what is wrong.
pub fn check_batch(what: &str, n: usize) -> Result<()> {
    if n == 0 || n > MAX_BATCH {
        return Err(Error::InvalidInput(format!(
            "{what} takes between 1 and {MAX_BATCH} messages per call, not {n}; nothing was \
             changed"
        )));
    }
    Ok(())
}

/// A handler name is 1 to [`MAX_HANDLER_BYTES`] bytes, without NUL.
///
/// # Errors
/// [`Error::InvalidInput`] saying what is wrong.
pub fn check_handler(id: MessageId, handler: &str) -> Result<()> {
    if handler.contains('\0') {
        return Err(Error::InvalidInput(format!(
            "the handler name completing message {id} holds a NUL character; nothing was \
             changed. Use a printable handler name"
        )));
    }
    if handler.is_empty() || handler.len() > MAX_HANDLER_BYTES {
        return Err(Error::InvalidInput(format!(
            "completing message {id} needs the name of the handler that processed it (1 to \
             {MAX_HANDLER_BYTES} bytes), not {} bytes; nothing was changed",
            handler.len()
        )));
    }
    Ok(())
}

/// The error text a dead letter keeps: at most [`MAX_ERROR_BYTES`], NUL
/// characters replaced (no `text` column can hold them).
#[must_use]
pub fn error_text(error: &str) -> String {
    let mut text = error.replace('\0', "\u{fffd}");
    if text.len() > MAX_ERROR_BYTES {
        let mut cut = MAX_ERROR_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(" [cut]");
    }
    text
}

/// `ids` without repeats, in their first order (batch calls dedupe first).
#[must_use]
pub fn distinct(ids: &[MessageId]) -> Vec<MessageId> {
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    ids.iter().copied().filter(|id| seen.insert(*id)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_escapes_are_found_and_escaped_backslashes_are_not() {
        assert!(has_nul_escape(r#"{"a":"\u0000"}"#));
        assert!(has_nul_escape(r#"{"a":"x\\\u0000"}"#));
        assert!(!has_nul_escape(r#"{"a":"\\u0000"}"#));
        assert!(!has_nul_escape(r#"{"a":"\u0001"}"#));
    }

    #[test]
    fn error_text_is_cut_on_a_char_boundary_and_loses_nul() {
        let long = "é".repeat(MAX_ERROR_BYTES);
        let cut = error_text(&long);
        assert!(cut.len() <= MAX_ERROR_BYTES + " [cut]".len());
        assert!(cut.ends_with(" [cut]"));
        assert_eq!(error_text("a\0b"), "a\u{fffd}b");
    }
}
