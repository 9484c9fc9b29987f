//! Paging, the same for every list: one page of rows with the cursor of the next, and the one codec of
//! the opaque cursors (keyset positions the API hands out and takes back).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// One page of results and the cursor of the next page.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The rows.
    pub rows: Vec<T>,
    /// Cursor of the next page, when there is one.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page from a query that asked for `limit + 1` rows: the extra row only says another page
    /// exists, and that page starts after the last row kept, whose cursor `cursor_of` gives.
    pub fn from_overfetch(mut rows: Vec<T>, limit: u32, cursor_of: impl Fn(&T) -> String) -> Self {
        let limit = limit as usize;
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(cursor_of)
        } else {
            None
        };
        Self { rows, next_cursor }
    }
}

/// The opaque cursor of a key: its parts base64url-encoded, so a caller passes it back unchanged
/// rather than building one (which would tie clients to the sort key).
pub fn encode_cursor(parts: &[&str]) -> String {
    URL_SAFE_NO_PAD.encode(parts.join("\n"))
}

/// The `N` parts of a cursor [`encode_cursor`] made; `None` for anything else.
pub fn decode_cursor<const N: usize>(cursor: &str) -> Option<[String; N]> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let parts: Vec<String> = raw.split('\n').map(str::to_string).collect();
    parts.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_gives_back_its_parts_and_nothing_else_decodes() {
        let c = encode_cursor(&["1700000000000", "0193c7a0-6b5e"]);
        assert_eq!(
            decode_cursor::<2>(&c),
            Some(["1700000000000".to_string(), "0193c7a0-6b5e".to_string()])
        );
        assert_eq!(decode_cursor::<3>(&c), None, "a cursor of another list");
        assert_eq!(decode_cursor::<2>("not a cursor!"), None);
        assert_eq!(
            decode_cursor::<2>(&URL_SAFE_NO_PAD.encode([0xff, 0xfe])),
            None
        );
    }

    #[test]
    fn the_extra_row_makes_the_next_cursor() {
        let page = Page::from_overfetch(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!(
            (page.rows, page.next_cursor),
            (vec![1, 2], Some("2".into()))
        );
        let last = Page::from_overfetch(vec![1, 2], 2, |n| n.to_string());
        assert_eq!((last.rows, last.next_cursor), (vec![1, 2], None));
    }
}
