//! NoETL's template names as ours. Both are Jinja, so only names differ: `workload.x` is our
//! `input.x`, and a step's result, `<step>.result` (or `<step>.data`, or the bare `<step>`), is
//! our `steps.<step>.result`. NoETL's other context names (`vars`, `ctx`, `secret` …) have no
//! counterpart here and are refused. Text outside `{{ }}` and `{% %}` is left as it is.

use std::collections::HashMap;

use super::{error, Error};

/// NoETL context names with nothing to map onto.
const UNMAPPED: [&str; 12] = [
    "vars",
    "ctx",
    "event",
    "secret",
    "keychain",
    "execution_id",
    "job",
    "iter",
    "response",
    "this",
    "env",
    "workbook",
];

/// Words of the template language that are not names.
const KEYWORDS: [&str; 20] = [
    "and",
    "or",
    "not",
    "in",
    "is",
    "if",
    "else",
    "elif",
    "endif",
    "for",
    "endfor",
    "true",
    "false",
    "none",
    "True",
    "False",
    "None",
    "loop",
    "recursive",
    "raw",
];

/// `when` as our condition: NoETL writes it in `{{ }}`; a bare expression is taken as one too.
pub(super) fn rewrite_condition(
    when: &str,
    path: &str,
    steps: &HashMap<String, usize>,
) -> Result<String, Error> {
    if when.contains("{{") {
        rewrite(when, path, steps)
    } else {
        rewrite(&format!("{{{{ {when} }}}}"), path, steps)
    }
}

/// `text` with the names inside its tags translated; an unmapped name is an error at `path`.
pub(super) fn rewrite(
    text: &str,
    path: &str,
    steps: &HashMap<String, usize>,
) -> Result<String, Error> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find(['{']) {
        out.push_str(&rest[..open]);
        let tail = &rest[open..];
        let close = if tail.starts_with("{{") {
            "}}"
        } else if tail.starts_with("{%") {
            "%}"
        } else {
            out.push('{');
            rest = &tail[1..];
            continue;
        };
        out.push_str(&tail[..2]);
        let (inside, after) = split_tag(&tail[2..], close);
        out.push_str(&rewrite_tag(inside, path, steps)?);
        rest = after;
    }
    out.push_str(rest);
    Ok(out)
}

/// The text of a tag up to its `close` (outside string literals), and what follows it, the
/// `close` included (the rest of the text when it never closes: the syntax check reports it).
fn split_tag<'a>(text: &'a str, close: &str) -> (&'a str, &'a str) {
    let mut quote = None;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match quote {
            Some(_) if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if text[i..].starts_with(close) => return (&text[..i], &text[i..]),
            None => {}
        }
    }
    (text, "")
}

/// Where the string literal opened at `start` ends (after its closing quote), skipping
/// escaped characters; the end of the tag when it never closes.
fn literal_end(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    chars.len()
}

fn rewrite_tag(tag: &str, path: &str, steps: &HashMap<String, usize>) -> Result<String, Error> {
    let chars: Vec<char> = tag.chars().collect();
    let mut out = String::with_capacity(tag.len());
    let mut last_sign: Option<char> = None;
    let mut words: [String; 2] = Default::default();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' || c == '"' {
            let end = literal_end(&chars, i).min(chars.len());
            out.extend(&chars[i..end]);
            i = end;
            last_sign = Some(c);
            continue;
        }
        if c.is_ascii_digit() {
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_')
            {
                out.push(chars[i]);
                i += 1;
            }
            last_sign = Some('0');
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == '_') {
            out.push(c);
            if !c.is_whitespace() {
                last_sign = Some(c);
            }
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let called = chars[i..].iter().find(|c| !c.is_whitespace()) == Some(&'(');
        let is_test = words[1] == "is" || (words[1] == "not" && words[0] == "is");
        let attribute_or_filter = matches!(last_sign, Some('.' | '|'));
        words = [std::mem::take(&mut words[1]), word.clone()];
        last_sign = Some('a');
        if attribute_or_filter || is_test || called || KEYWORDS.contains(&word.as_str()) {
            out.push_str(&word);
        } else if word == "workload" {
            out.push_str("input");
        } else if UNMAPPED.contains(&word.as_str()) {
            return Err(error(
                path,
                format!("not supported: the template name `{word}` has no counterpart here (use `workload.<key>` or `<step>.result`)"),
            ));
        } else if steps.contains_key(&word) {
            out.push_str(&format!("steps.{word}.result"));
            // `<step>.result` and `<step>.data` both stand for the result.
            for field in [".result", ".data"] {
                let len = field.chars().count();
                let follows: String = chars[i..].iter().take(len + 1).collect();
                if follows.starts_with(field)
                    && !follows[len..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                {
                    i += len;
                    break;
                }
            }
        } else {
            out.push_str(&word);
        }
    }
    Ok(out)
}
