//! What the user hands in: playbook and submit-body files (JSON or YAML, a path or stdin),
//! `--input`, `--label`, `--playbook NAME[@VERSION]`, and the submit body built from them.
//!
//! Files are parsed here and always sent as JSON, rather than passing YAML through with
//! `Content-Type: application/yaml`: a file may be a whole submit body or only a playbook, and
//! `--input` and `--label` are merged into it, so it has to be parsed anyway; a file that does
//! not parse is then reported with its name and line before anything is sent.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::http::Error;

/// Where a document comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Stdin,
    File(PathBuf),
}

impl Source {
    /// `-` is stdin; anything else a path.
    pub fn from_arg(arg: &str) -> Self {
        if arg == "-" {
            Source::Stdin
        } else {
            Source::File(PathBuf::from(arg))
        }
    }

    fn name(&self) -> String {
        match self {
            Source::Stdin => "stdin".to_owned(),
            Source::File(path) => path.display().to_string(),
        }
    }
}

/// Reads a JSON or YAML document: by extension for a file (`.yaml`/`.yml` YAML, `.json`
/// JSON), and by its first character otherwise (`{` or `[` JSON, else YAML).
pub fn read_document(source: &Source) -> Result<Value, Error> {
    let name = source.name();
    let text = match source {
        Source::Stdin => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| Error::Input(format!("cannot read stdin: {e}")))?;
            text
        }
        Source::File(path) => std::fs::read_to_string(path)
            .map_err(|e| Error::Input(format!("cannot read {name}: {e}")))?,
    };
    let path = match source {
        Source::File(path) => Some(path.as_path()),
        Source::Stdin => None,
    };
    parse_document(&name, path, &text)
}

fn parse_document(name: &str, path: Option<&Path>, text: &str) -> Result<Value, Error> {
    let extension = path
        .and_then(Path::extension)
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let yaml = match extension.as_deref() {
        Some("yaml" | "yml") => true,
        Some("json") => false,
        _ => !text.trim_start().starts_with(['{', '[']),
    };
    if text.trim().is_empty() {
        return Err(Error::Input(format!("{name} is empty")));
    }
    if yaml {
        yaml_serde::from_str(text)
            .map_err(|e| Error::Input(format!("{name} is not valid YAML: {e}")))
    } else {
        serde_json::from_str(text)
            .map_err(|e| Error::Input(format!("{name} is not valid JSON: {e}")))
    }
}

/// `--label KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub key: String,
    pub value: String,
}

/// Parses `KEY=VALUE` (the value may be empty, and may hold `=`).
pub fn parse_label(s: &str) -> Result<Label, String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))?;
    if key.trim().is_empty() {
        return Err(format!("`{s}` has an empty key"));
    }
    Ok(Label {
        key: key.to_owned(),
        value: value.to_owned(),
    })
}

/// The `labels` query parameter of a listing: `k=v,k2=v2`. A `,` inside a key or value would
/// split it, so it is refused here rather than silently filtering on something else.
pub fn label_filter(labels: &[Label]) -> Result<Option<String>, Error> {
    if labels.is_empty() {
        return Ok(None);
    }
    if let Some(bad) = labels
        .iter()
        .find(|l| l.key.contains(',') || l.value.contains(','))
    {
        return Err(Error::Input(format!(
            "label filter `{}={}`: a key or value with `,` cannot be filtered on",
            bad.key, bad.value
        )));
    }
    Ok(Some(
        labels
            .iter()
            .map(|l| format!("{}={}", l.key, l.value))
            .collect::<Vec<_>>()
            .join(","),
    ))
}

/// `--input JSON`: a JSON object.
pub fn parse_input(s: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str(s) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("the input must be a JSON object, like '{\"n\": 3}'".to_owned()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// `--playbook NAME[@VERSION]`: a playbook of the catalog, by default its latest version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogRef {
    pub name: String,
    pub version: Option<u64>,
}

pub fn parse_catalog_ref(s: &str) -> Result<CatalogRef, String> {
    let (name, version) = match s.rsplit_once('@') {
        Some((name, version)) => {
            let version = version
                .parse::<u64>()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| format!("`{version}` is not a version (1, 2, …)"))?;
            (name, Some(version))
        }
        None => (s, None),
    };
    if name.trim().is_empty() {
        return Err("the playbook name is empty".to_owned());
    }
    Ok(CatalogRef {
        name: name.to_owned(),
        version,
    })
}

/// What the submit body is built from.
#[derive(Debug, Clone, Default)]
pub struct SubmitParts {
    /// A file's document: a whole submit body or a playbook.
    pub document: Option<Value>,
    pub catalog: Option<CatalogRef>,
    /// `--input`: its keys override those of the file's input.
    pub input: Option<Map<String, Value>>,
    /// `--label`: added to the file's labels, overriding the same key.
    pub labels: Vec<Label>,
}

/// Builds `{"playbook": …, "input": …, "labels": …}`.
pub fn submit_body(parts: SubmitParts) -> Result<Value, Error> {
    let mut body = match (parts.document, parts.catalog) {
        (Some(document), None) => body_of_document(document)?,
        (None, Some(catalog)) => {
            let mut reference = Map::new();
            reference.insert("name".to_owned(), Value::String(catalog.name));
            if let Some(version) = catalog.version {
                reference.insert("version".to_owned(), Value::from(version));
            }
            let mut body = Map::new();
            body.insert("playbook".to_owned(), Value::Object(reference));
            body
        }
        (Some(_), Some(_)) => {
            return Err(Error::Input(
                "give either a file or --playbook, not both".to_owned(),
            ))
        }
        (None, None) => {
            return Err(Error::Input(
                "give a playbook file (`-` for stdin) or --playbook NAME".to_owned(),
            ))
        }
    };
    if let Some(input) = parts.input {
        merge_into(&mut body, "input", input.into_iter())?;
    }
    if !parts.labels.is_empty() {
        let labels: BTreeMap<String, Value> = parts
            .labels
            .into_iter()
            .map(|l| (l.key, Value::String(l.value)))
            .collect();
        merge_into(&mut body, "labels", labels.into_iter())?;
    }
    Ok(Value::Object(body))
}

/// A document with `playbook` is a submit body; one with `steps` is a playbook, and so is a
/// NoETL playbook (with `apiVersion`), which the gateway translates.
fn body_of_document(document: Value) -> Result<Map<String, Value>, Error> {
    let is_playbook = noetl_contract::noetl::is_noetl(&document);
    let Value::Object(map) = document else {
        return Err(Error::Input(
            "the file must hold an object: a playbook (with `steps`) or a submit body (with `playbook`)"
                .to_owned(),
        ));
    };
    match (
        map.contains_key("playbook"),
        is_playbook || map.contains_key("steps"),
    ) {
        (true, false) => Ok(map),
        (false, true) => {
            let mut body = Map::new();
            body.insert("playbook".to_owned(), Value::Object(map));
            Ok(body)
        }
        (true, true) => Err(Error::Input(
            "the file has both `playbook` and `steps`: it must be either a submit body or a playbook"
                .to_owned(),
        )),
        (false, false) => Err(Error::Input(
            "the file is neither a playbook (it has no `steps`) nor a submit body (it has no `playbook`)"
                .to_owned(),
        )),
    }
}

fn merge_into(
    body: &mut Map<String, Value>,
    field: &str,
    entries: impl Iterator<Item = (String, Value)>,
) -> Result<(), Error> {
    let slot = body
        .entry(field.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    let Value::Object(existing) = slot else {
        return Err(Error::Input(format!(
            "the file's `{field}` is not an object, so --{} cannot be added to it",
            field.trim_end_matches('s')
        )));
    };
    existing.extend(entries);
    Ok(())
}

/// Checks that a document to register in the catalog is a playbook, not a submit body.
pub fn playbook_document(document: Value) -> Result<Value, Error> {
    match &document {
        Value::Object(map) if map.contains_key("steps") => Ok(document),
        _ if noetl_contract::noetl::is_noetl(&document) => Ok(document),
        Value::Object(map) if map.contains_key("playbook") => Err(Error::Input(
            "this is a submit body; push only its `playbook`".to_owned(),
        )),
        _ => Err(Error::Input(
            "the file is not a playbook (an object with `name` and `steps`)".to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn input_error(result: Result<Value, Error>) -> String {
        match result {
            Err(Error::Input(message)) => message,
            other => panic!("expected an input error, got {other:?}"),
        }
    }

    #[test]
    fn json_and_yaml_are_told_apart_by_extension_then_content() {
        let yaml = "name: hello\nsteps:\n  - name: a\n    action: noop\n";
        let json = r#"{"name": "hello", "steps": [{"name": "a", "action": "noop"}]}"#;
        let expected = json!({"name": "hello", "steps": [{"name": "a", "action": "noop"}]});
        for (path, text) in [
            (Some("p.yaml"), yaml),
            (Some("p.YML"), yaml),
            (Some("p.json"), json),
            (Some("p.txt"), json),
            (Some("p.txt"), yaml),
            (None, json),
            (None, yaml),
            // JSON is YAML too.
            (Some("p.yaml"), json),
        ] {
            let parsed = parse_document("f", path.map(Path::new), text).expect(text);
            assert_eq!(parsed, expected, "{path:?}");
        }
    }

    #[test]
    fn a_noetl_playbook_is_sent_as_the_playbook() {
        let noetl = json!({"apiVersion": "noetl.io/v2", "kind": "Playbook", "workflow": []});
        let body = submit_body(SubmitParts {
            document: Some(noetl.clone()),
            catalog: None,
            input: None,
            labels: Vec::new(),
        })
        .expect("a playbook");
        assert_eq!(body, json!({ "playbook": noetl }));
    }

    #[test]
    fn a_file_that_does_not_parse_is_named_with_its_line() {
        for (name, text, start, line) in [
            (
                "bad.json",
                "{\n  \"name\": \n}",
                "bad.json is not valid JSON",
                Some("line 3"),
            ),
            (
                "bad.yaml",
                "name: a\nsteps: [\n",
                "bad.yaml is not valid YAML",
                None,
            ),
        ] {
            let message = input_error(parse_document(name, Some(Path::new(name)), text));
            assert!(message.starts_with(start), "{message}");
            assert!(line.is_none_or(|line| message.contains(line)), "{message}");
        }
        let message = input_error(parse_document("empty", None, "  \n"));
        assert_eq!(message, "empty is empty");
    }

    #[test]
    fn labels_are_key_equals_value() {
        assert_eq!(
            parse_label("env=dev"),
            Ok(Label {
                key: "env".into(),
                value: "dev".into()
            })
        );
        assert_eq!(
            parse_label("query=a=b"),
            Ok(Label {
                key: "query".into(),
                value: "a=b".into()
            })
        );
        assert_eq!(parse_label("empty=").map(|l| l.value), Ok(String::new()));
        assert!(parse_label("novalue").is_err());
        assert!(parse_label("=x").is_err());
    }

    #[test]
    fn label_filters_join_with_commas_and_refuse_commas_inside() {
        let labels = [parse_label("env=dev"), parse_label("team=a")]
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .expect("valid");
        assert_eq!(
            label_filter(&labels).expect("valid"),
            Some("env=dev,team=a".to_owned())
        );
        assert_eq!(label_filter(&[]).expect("valid"), None);
        let comma = [parse_label("env=a,b").expect("valid")];
        assert!(matches!(label_filter(&comma), Err(Error::Input(_))));
    }

    #[test]
    fn input_must_be_a_json_object() {
        assert_eq!(
            parse_input(r#"{"n": 3}"#).map(|m| m["n"].clone()),
            Ok(json!(3))
        );
        assert!(parse_input("[1]").is_err());
        assert!(parse_input("{").is_err());
    }

    #[test]
    fn catalog_references_take_an_optional_version() {
        assert_eq!(
            parse_catalog_ref("diamond"),
            Ok(CatalogRef {
                name: "diamond".into(),
                version: None
            })
        );
        assert_eq!(
            parse_catalog_ref("diamond@3"),
            Ok(CatalogRef {
                name: "diamond".into(),
                version: Some(3)
            })
        );
        assert!(parse_catalog_ref("diamond@latest").is_err());
        assert!(parse_catalog_ref("diamond@0").is_err());
        assert!(parse_catalog_ref("@3").is_err());
    }

    #[test]
    fn a_bare_playbook_is_wrapped_and_flags_are_merged() {
        let body = submit_body(SubmitParts {
            document: Some(json!({"name": "p", "steps": [], "input": {"x": 1}})),
            input: parse_input(r#"{"n": 3}"#).ok(),
            labels: vec![parse_label("env=dev").expect("valid")],
            ..SubmitParts::default()
        })
        .expect("valid");
        assert_eq!(
            body,
            json!({
                // The playbook's own default input stays in the playbook.
                "playbook": {"name": "p", "steps": [], "input": {"x": 1}},
                "input": {"n": 3},
                "labels": {"env": "dev"}
            })
        );
    }

    #[test]
    fn flags_override_the_keys_of_a_whole_body() {
        let body = submit_body(SubmitParts {
            document: Some(json!({
                "playbook": {"name": "p", "steps": []},
                "input": {"n": 1, "m": 2},
                "labels": {"env": "prod", "team": "a"}
            })),
            input: parse_input(r#"{"n": 3}"#).ok(),
            labels: vec![parse_label("env=dev").expect("valid")],
            ..SubmitParts::default()
        })
        .expect("valid");
        assert_eq!(body["input"], json!({"n": 3, "m": 2}));
        assert_eq!(body["labels"], json!({"env": "dev", "team": "a"}));
    }

    #[test]
    fn a_catalog_reference_becomes_name_and_version() {
        let body = submit_body(SubmitParts {
            catalog: parse_catalog_ref("diamond@2").ok(),
            ..SubmitParts::default()
        })
        .expect("valid");
        assert_eq!(body, json!({"playbook": {"name": "diamond", "version": 2}}));
        let latest = submit_body(SubmitParts {
            catalog: parse_catalog_ref("diamond").ok(),
            ..SubmitParts::default()
        })
        .expect("valid");
        assert_eq!(latest, json!({"playbook": {"name": "diamond"}}));
    }

    #[test]
    fn documents_that_are_neither_body_nor_playbook_are_refused() {
        for document in [
            json!([1, 2]),
            json!({"name": "p"}),
            json!({"playbook": {}, "steps": []}),
        ] {
            input_error(submit_body(SubmitParts {
                document: Some(document),
                ..SubmitParts::default()
            }));
        }
        input_error(submit_body(SubmitParts {
            document: Some(json!({"playbook": {"name": "p", "steps": []}, "input": [1]})),
            input: parse_input("{}").ok(),
            ..SubmitParts::default()
        }));
        input_error(submit_body(SubmitParts::default()));
    }

    #[test]
    fn only_playbooks_are_pushed() {
        assert!(playbook_document(json!({"name": "p", "steps": []})).is_ok());
        assert!(playbook_document(json!({"playbook": {"name": "p", "steps": []}})).is_err());
        assert!(playbook_document(json!("p")).is_err());
        assert!(playbook_document(json!({"apiVersion": "noetl.io/v2"})).is_ok());
    }
}
