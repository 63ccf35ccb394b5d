//! Aligned text tables for the client's listings: a header, then one row per item, each
//! column as wide as its widest cell.

use serde_json::Value;

/// Columns of `list`: header and the instance field shown under it.
const INSTANCE_COLUMNS: [(&str, &str); 7] = [
    ("INSTANCE ID", "instance_id"),
    ("USER", "user_id"),
    ("STATUS", "status"),
    ("LAST ACTIVITY", "last_activity"),
    ("IDLE STOP", "idle_stop_at"),
    ("STOP REASON", "stop_reason"),
    ("URL", "url"),
];

/// `rows` under `headers`, columns separated by two spaces; the last column is not padded.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push('\n');
    }
    out
}

/// The instances of a list answer as a table; a missing value shows as `-`.
pub fn instances(items: &[Value]) -> String {
    let headers: Vec<&str> = INSTANCE_COLUMNS.iter().map(|(h, _)| *h).collect();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            INSTANCE_COLUMNS
                .iter()
                .map(|(_, k)| i[*k].as_str().unwrap_or("-").to_owned())
                .collect()
        })
        .collect();
    render(&headers, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let t = render(
            &["A", "BB", "C"],
            &[
                vec!["long-value".into(), "x".into(), "end".into()],
                vec!["y".into(), "wider-cell".into(), "z".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "A           BB          C");
        assert_eq!(lines[1], "long-value  x           end");
        assert_eq!(lines[2], "y           wider-cell  z");
    }
}
