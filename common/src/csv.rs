//! CSV lines (RFC 4180): what `--output csv` prints and the console downloads.

/// One field, quoted when it needs to be.
pub fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One line of fields, ending in a newline.
pub fn line<S: AsRef<str>>(fields: &[S]) -> String {
    let mut out = fields
        .iter()
        .map(|f| field(f.as_ref()))
        .collect::<Vec<_>>()
        .join(",");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_separators_or_quotes_are_quoted() {
        assert_eq!(line(&["a", "b c", "1"]), "a,b c,1\n");
        assert_eq!(
            line(&["x,y", "say \"hi\"", "l1\nl2"]),
            "\"x,y\",\"say \"\"hi\"\"\",\"l1\nl2\"\n"
        );
    }
}
