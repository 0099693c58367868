//! Step argument templates (minijinja) over `{input, steps.<name>.result}`.
//!
//! Every string inside a step's `with` is a template. A string that is exactly one expression
//! (`"{{ steps.a.result.items }}"`) keeps the expression's JSON type; any other string renders
//! to a string. Undefined names are errors, so a typo fails the step instead of rendering "".

use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Map, Value};

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
}

/// The inner expression when `text` is exactly one `{{ … }}`.
fn sole_expression(text: &str) -> Option<&str> {
    let inner = text.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}")).then_some(inner)
}

/// Checks the syntax of every template in `with`; the error names the field (`with.url`).
pub fn check(with: &Map<String, Value>) -> Result<(), (String, String)> {
    let env = environment();
    let mut failure = None;
    visit(&Value::Object(with.clone()), "with", &mut |path, text| {
        if failure.is_some() || !text.contains("{{") && !text.contains("{%") {
            return;
        }
        let compiled = match sole_expression(text) {
            Some(expression) => env.compile_expression(expression).map(drop),
            None => env.template_from_str(text).map(drop),
        };
        if let Err(e) = compiled {
            failure = Some((path.to_owned(), format!("template syntax error: {e}")));
        }
    });
    failure.map_or(Ok(()), Err)
}

fn visit(value: &Value, path: &str, on_string: &mut impl FnMut(&str, &str)) {
    match value {
        Value::String(text) => on_string(path, text),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                visit(item, &format!("{path}[{i}]"), on_string);
            }
        }
        Value::Object(fields) => {
            for (key, item) in fields {
                visit(item, &format!("{path}.{key}"), on_string);
            }
        }
        _ => {}
    }
}

/// Renders every template in `with` against `context`; the error names the field.
pub fn render(with: &Map<String, Value>, context: &Value) -> Result<Value, String> {
    let env = environment();
    render_value(&env, &Value::Object(with.clone()), "with", context)
}

fn render_value(
    env: &Environment<'_>,
    value: &Value,
    path: &str,
    context: &Value,
) -> Result<Value, String> {
    match value {
        Value::String(text) if text.contains("{{") || text.contains("{%") => {
            let fail = |e: minijinja::Error| format!("{path}: {e}");
            match sole_expression(text) {
                Some(expression) => {
                    let evaluated = env
                        .compile_expression(expression)
                        .and_then(|e| e.eval(context))
                        .map_err(fail)?;
                    // Strict mode fails on undefined names inside an expression, but a bare
                    // lookup of a missing field evaluates to "undefined": refuse it too.
                    if evaluated.is_undefined() {
                        return Err(format!("{path}: {expression:?} is undefined"));
                    }
                    serde_json::to_value(&evaluated).map_err(|e| format!("{path}: {e}"))
                }
                None => env
                    .render_str(text, context)
                    .map(Value::String)
                    .map_err(fail),
            }
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| render_value(env, item, &format!("{path}[{i}]"), context))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(fields) => fields
            .iter()
            .map(|(key, item)| {
                render_value(env, item, &format!("{path}.{key}"), context)
                    .map(|rendered| (key.clone(), rendered))
            })
            .collect::<Result<Map<_, _>, _>>()
            .map(Value::Object),
        other => Ok(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().expect("an object").clone()
    }

    #[test]
    fn sole_expressions_keep_their_json_type_and_text_renders_to_strings() {
        let context = json!({"input": {"who": "world"}, "steps": {"a": {"result": {"n": 2, "items": [1, 2]}}}});
        let with = map(json!({
            "items": "{{ steps.a.result.items }}",
            "n": "{{ steps.a.result.n + 1 }}",
            "greeting": "hello {{ input.who }}",
            "nested": [{"plain": "no template", "count": 3}]
        }));
        let rendered = render(&with, &context).expect("renders");
        assert_eq!(
            rendered,
            json!({
                "items": [1, 2],
                "n": 3,
                "greeting": "hello world",
                "nested": [{"plain": "no template", "count": 3}]
            })
        );
    }

    #[test]
    fn undefined_names_fail_with_the_field() {
        let context = json!({"input": {"present": 1}, "steps": {}});
        for template in [
            "{{ steps.missing.result }}",
            "{{ input.missing }}",
            "x {{ input.missing }}",
        ] {
            let with = map(json!({"url": template}));
            let error = render(&with, &context).expect_err("undefined");
            assert!(error.starts_with("with.url:"), "{template}: {error}");
        }
    }

    #[test]
    fn syntax_errors_are_found_before_running() {
        assert!(check(&map(json!({"a": "{{ input.x }}", "b": ["{% if %}"]}))).is_err());
        let (path, message) = check(&map(
            json!({"ok": "{{ input.x }}", "bad": [1, "{{ input. }}"]}),
        ))
        .expect_err("syntax error");
        assert_eq!(path, "with.bad[1]");
        assert!(message.contains("template syntax error"), "{message}");
        assert_eq!(check(&map(json!({"plain": "text", "n": 1}))), Ok(()));
    }
}
