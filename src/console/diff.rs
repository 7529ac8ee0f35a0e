//! Two versions of a template part side by side, changed lines marked (Myers diff
//! by line, from `similar`).

use maud::{html, Markup};
use similar::{capture_diff_slices, Algorithm, DiffOp};

/// One row of the table: the old line and the new line, either absent.
struct Row<'a> {
    old: Option<&'a str>,
    new: Option<&'a str>,
    changed: bool,
}

fn rows<'a>(old: &[&'a str], new: &[&'a str]) -> Vec<Row<'a>> {
    let mut rows = Vec::new();
    for op in capture_diff_slices(Algorithm::Myers, old, new) {
        let (o, n) = (op.old_range(), op.new_range());
        let changed = !matches!(op, DiffOp::Equal { .. });
        // A replaced block pairs its lines up; the longer side runs on alone.
        for i in 0..o.len().max(n.len()) {
            rows.push(Row {
                old: old.get(o.start + i).filter(|_| i < o.len()).copied(),
                new: new.get(n.start + i).filter(|_| i < n.len()).copied(),
                changed,
            });
        }
    }
    rows
}

/// A side-by-side table of `old` (version `a`) against `new` (version `b`).
pub fn side_by_side(old: &str, new: &str, a: u32, b: u32) -> Markup {
    let old: Vec<&str> = old.lines().collect();
    let new: Vec<&str> = new.lines().collect();
    let rows = rows(&old, &new);
    if rows.is_empty() {
        return html! { p.muted { "Empty in both versions." } };
    }
    html! {
        @if rows.iter().all(|r| !r.changed) {
            p.muted { "No change." }
        }
        table.diff {
            thead { tr { th { "v" (a) } th { "v" (b) } } }
            tbody { @for r in &rows {
                tr {
                    td class=[(r.changed && r.old.is_some()).then_some("del")] { (r.old.unwrap_or("")) }
                    td class=[(r.changed && r.new.is_some()).then_some("add")] { (r.new.unwrap_or("")) }
                }
            } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_line_is_paired_with_its_replacement_and_the_rest_align() {
        let rows = rows(&["a", "b", "c"], &["a", "B", "c", "d"]);
        let pairs: Vec<_> = rows.iter().map(|r| (r.old, r.new, r.changed)).collect();
        assert_eq!(
            pairs,
            [
                (Some("a"), Some("a"), false),
                (Some("b"), Some("B"), true),
                (Some("c"), Some("c"), false),
                (None, Some("d"), true),
            ]
        );
    }
}
