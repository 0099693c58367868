//! Plain-text tables and the short forms of values they show (no colours, no box drawing:
//! the output goes through `grep`, `awk` and logs as well as terminals): one-line text, cut
//! text, compact JSON, labels and times.

/// A table with a header row; columns are left-aligned and two spaces apart, and no line ends
/// in spaces.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<const N: usize>(header: [&str; N]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; cells are made single-line, and missing cells are empty.
    pub fn row(&mut self, cells: impl IntoIterator<Item = String>) {
        let mut row: Vec<String> = cells.into_iter().map(|c| single_line(&c)).collect();
        row.resize(self.header.len().max(row.len()), String::new());
        self.rows.push(row);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.header.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Control characters (newlines) from the gateway would break a one-line message or a table.
pub fn single_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Unix milliseconds as an RFC 3339 time (the milliseconds themselves if out of range).
pub fn timestamp(unix_ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{unix_ms} ms"))
}

/// At most `max` characters: a longer text is cut and ends in `…`.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A JSON value on one line, at most `max` characters.
pub fn compact(value: &serde_json::Value, max: usize) -> String {
    truncate(&value.to_string(), max)
}

/// `k=v, k2=v2`, or `-` when there are none.
pub fn labels<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let joined = labels
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ");
    if joined.is_empty() {
        "-".to_owned()
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_lines_do_not_end_in_spaces() {
        let mut table = Table::new(["STEP", "STATUS", "ATTEMPT"]);
        table.row(["a".to_owned(), "succeeded".to_owned(), "1".to_owned()]);
        table.row(["longer_name".to_owned(), "failed".to_owned(), String::new()]);
        assert_eq!(
            table.render(),
            "STEP         STATUS     ATTEMPT\n\
             a            succeeded  1\n\
             longer_name  failed\n"
        );
    }

    #[test]
    fn cells_are_made_single_line() {
        let mut table = Table::new(["STEP", "ERROR"]);
        table.row(["a".to_owned(), "line one\nline two".to_owned()]);
        assert_eq!(table.render(), "STEP  ERROR\na     line one line two\n");
    }

    #[test]
    fn long_values_are_cut_with_an_ellipsis() {
        assert_eq!(truncate("abcdef", 6), "abcdef");
        assert_eq!(truncate("abcdefg", 6), "abcde…");
        assert_eq!(truncate("ééééééé", 3), "éé…");
        let value = serde_json::json!({"note": "a rather long string"});
        assert_eq!(compact(&value, 16), "{\"note\":\"a rath…");
    }

    #[test]
    fn labels_print_as_pairs() {
        let mut map = std::collections::BTreeMap::new();
        assert_eq!(labels(&map), "-");
        map.insert("env".to_owned(), "dev".to_owned());
        map.insert("team".to_owned(), "a".to_owned());
        assert_eq!(labels(&map), "env=dev, team=a");
    }
}
