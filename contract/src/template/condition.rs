//! The `when` of an arc (wiki/playbooks.md, "Branches"): a template expression, under the same
//! restrictions and budget as a step's `with`, whose truth (minijinja's) decides the arc.

use serde_json::Value;

use super::{
    check_constructs, classify, environment, sole_expression, Budget, RenderError, Run,
    DEFAULT_MAX_BYTES,
};

/// The expression of a `when`: what is inside `{{ }}`, or the whole text.
fn expression(when: &str) -> &str {
    sole_expression(when).unwrap_or(when).trim()
}

/// Checks that `when` is one expression that templates may use; the error says why not.
pub fn check_condition(when: &str) -> Result<(), String> {
    let expression = expression(when);
    if expression.is_empty() {
        return Err("the condition is empty".to_owned());
    }
    check_constructs(&format!("{{{{ {expression} }}}}"))?;
    environment(DEFAULT_MAX_BYTES)
        .compile_expression(expression)
        .map(drop)
        .map_err(|e| format!("condition syntax error: {e}"))
}

/// The conditions of one step's arcs, evaluated against one context: they share one budget,
/// as the templates of one step's `with` do.
pub struct Conditions<'a> {
    run: Run<'a>,
}

impl std::fmt::Debug for Conditions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conditions")
            .field("fuel_left", &self.run.fuel_left)
            .finish()
    }
}

impl<'a> Conditions<'a> {
    pub fn new(context: &'a Value, budget: &'a Budget) -> Self {
        Self {
            run: Run::new(context, budget),
        }
    }

    /// Whether `when` is true; the error names `path`. An undefined name is an error, as in
    /// `with`; use `is defined` to test for one.
    pub fn holds(&mut self, when: &str, path: &str) -> Result<bool, RenderError> {
        let expression = expression(when);
        // Compiled alone first, so the tag below holds exactly one expression.
        self.run
            .env
            .compile_expression(expression)
            .map_err(|e| classify(path, e))?;
        let text = format!("{{% if {expression} %}}true{{% endif %}}");
        let rendered = self.run.template(&text, path)?;
        Ok(rendered == Value::String("true".to_owned()))
    }
}
