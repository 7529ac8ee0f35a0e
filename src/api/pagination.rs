//! Page sizes and cursors shared by the list endpoints: `?limit=1..100` (default 20)
//! and an opaque `cursor`; a response's `next_cursor` is `null` on the last page.

use super::problem::{ApiError, FieldError};

const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;

/// The requested page size, or a 422 naming `limit`.
pub fn page_size(limit: Option<u32>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(limit as usize)
    } else {
        Err(ApiError::unprocessable(vec![FieldError::coded(
            "limit",
            "invalid_limit",
            "`limit` is 1 to 100",
        )]))
    }
}

pub fn invalid_cursor(field: &str) -> ApiError {
    ApiError::unprocessable(vec![FieldError::coded(
        field,
        "invalid_cursor",
        "not a cursor from this list",
    )])
}

/// Cuts a fetch of `size + 1` items to the page, with the cursor of its last item
/// when more follow.
pub fn split_page<T>(mut items: Vec<T>, size: usize, cursor_of: impl Fn(&T) -> String) -> (Vec<T>, Option<String>) {
    let more = items.len() > size;
    items.truncate(size);
    let next = if more { items.last().map(cursor_of) } else { None };
    (items, next)
}
