//! Step argument templates (minijinja) over `{input, ctx, steps.<name>.result}`.
//!
//! Every string inside a step's `with` is a template. A string that is exactly one expression
//! (`"{{ steps.a.result.items }}"`) keeps the expression's JSON type; any other string renders
//! to a string. Undefined names are errors, so a typo fails the step instead of rendering "".
//!
//! A tenant's template runs on a server shared with every other tenant, so every render has a
//! [`Budget`] (wiki/limits.md, "Templates"):
//! - CPU: minijinja fuel, shared by all the templates of one step's `with`; `range` is capped
//!   by minijinja at 100 000 items.
//! - Bytes: each rendered value, and all of them together, stay within `max_bytes`. Text is
//!   rendered into a writer that refuses to grow past the limit; an expression's value is
//!   serialised into one, so an over-large value never becomes a `serde_json::Value`.
//! - Depth: a rendered value nests at most `max_depth` arrays and objects.
//! - Memory while rendering. Fuel counts instructions, not bytes: `~` (and `+`) copy both sides
//!   into a new string, so a value that is re-bound to itself doubles per instruction, and 40
//!   doublings are a terabyte. minijinja has no hook on its operators (its only size check is
//!   on `'s' * n`, at 100 MB), so instead of checking sizes we take away what lets a value feed
//!   on itself: the statements that bind names (`set`, `with`, and so `namespace` assignments),
//!   recursive loops, and loops over constructed sequences (a loop may iterate a name, a path
//!   or `range(…)`). What is left evaluates each expression as a tree over the template's own
//!   leaves (literals, context values, loop variables that are parts of the context), and a
//!   tag holds at most [`MAX_OPERATORS_PER_TAG`] operators, so a value built in one is at most
//!   that many copies of the largest value it reads, not exponentially (or fuel-many) more. The two filters that
//!   grow faster than their input (`replace`, `join`) are replaced by versions that check the
//!   result's size first; `indent` and `format` (which pad to a given width) are removed. The
//!   remaining cost is `'s' * n`, which minijinja caps at 100 MB per operation.
//!   The same constructs also build arbitrarily deep values (a list wrapped in itself in a
//!   loop), whose drop recurses once per level: without them, nesting is bounded by the
//!   parser's limit plus the context's.

mod condition;

use std::io;

use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use condition::{check_condition, Conditions};

/// The error code of a render over its budget.
pub const BUDGET_EXCEEDED: &str = "template_budget_exceeded";
/// The error code of a rendered value PostgreSQL cannot store (U+0000 in a string).
pub const UNSTORABLE: &str = "unstorable_value";

/// Default fuel of one step's templates: about a few tens of milliseconds of rendering.
pub const DEFAULT_FUEL: u64 = 1_000_000;
/// Default byte cap of a rendered value and of a step's rendered `with`: 256 KiB.
pub const DEFAULT_MAX_BYTES: usize = 256 * 1024;
/// Default nesting cap of a rendered value.
pub const DEFAULT_MAX_DEPTH: usize = 32;
/// The deepest `max_depth` may be set: `serde_json` refuses to parse deeper than 128.
pub const MAX_DEPTH_LIMIT: usize = 100;

/// What one step's templates may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Budget {
    /// minijinja instructions all the templates of one step's `with` may run, together.
    pub fuel: u64,
    /// Bytes of one rendered value (text, or an expression's JSON), and of all the rendered
    /// values of one step's `with` together.
    pub max_bytes: usize,
    /// Arrays and objects a rendered value may nest.
    pub max_depth: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            fuel: DEFAULT_FUEL,
            max_bytes: DEFAULT_MAX_BYTES,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

impl Budget {
    /// A budget nothing fits in: every template fails with [`BUDGET_EXCEEDED`]. Used when a
    /// render ran past its deadline, to fail the step the same way as if it had run out.
    pub fn spent() -> Self {
        Self {
            fuel: 0,
            max_bytes: 0,
            max_depth: 0,
        }
    }
}

/// Why a step's `with` did not render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    /// The template fails on its own terms: an undefined name, a type error.
    Failed(String),
    /// The render went over its [`Budget`].
    BudgetExceeded(String),
    /// A rendered value holds what PostgreSQL cannot store (U+0000).
    Unstorable(String),
}

impl RenderError {
    /// The machine-readable code, for the errors a submit is refused with.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            RenderError::Failed(_) => None,
            RenderError::BudgetExceeded(_) => Some(BUDGET_EXCEEDED),
            RenderError::Unstorable(_) => Some(UNSTORABLE),
        }
    }

    /// What went wrong, starting with the field (`with.url: …`).
    pub fn message(&self) -> &str {
        match self {
            RenderError::Failed(m)
            | RenderError::BudgetExceeded(m)
            | RenderError::Unstorable(m) => m,
        }
    }
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code() {
            None => write!(f, "template: {}", self.message()),
            Some(code) => write!(f, "{code}: {}", self.message()),
        }
    }
}

fn environment(max_bytes: usize) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Macros, includes and recursive loops are not available; were one to slip through, it
    // nests no deeper than a rendered value may.
    env.set_recursion_limit(DEFAULT_MAX_DEPTH);
    // See the module's comment: what lets a value feed on itself, or pad to any width, goes.
    env.remove_global("namespace");
    env.remove_filter("indent");
    env.remove_filter("format");
    env.add_filter("replace", move |text: String, from: String, to: String| {
        let found = if from.is_empty() {
            text.chars().count() + 1
        } else {
            text.matches(from.as_str()).count()
        };
        let len = (text.len() - found * from.len()).saturating_add(found.saturating_mul(to.len()));
        check_len(len, max_bytes)?;
        Ok(text.replace(from.as_str(), &to))
    });
    env.add_filter(
        "join",
        move |items: minijinja::Value, joiner: Option<String>| {
            let joiner = joiner.unwrap_or_default();
            let mut joined = String::new();
            if items.is_undefined() || items.is_none() {
                return Ok(joined);
            }
            for (i, item) in items.try_iter()?.enumerate() {
                let text = item
                    .as_str()
                    .map_or_else(|| item.to_string(), str::to_owned);
                let sep = if i == 0 { "" } else { joiner.as_str() };
                check_len(joined.len() + sep.len() + text.len(), max_bytes)?;
                joined.push_str(sep);
                joined.push_str(&text);
            }
            Ok(joined)
        },
    );
    env
}

fn check_len(len: usize, max_bytes: usize) -> Result<(), minijinja::Error> {
    if len > max_bytes {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("the result is too large ({len} bytes; the limit is {max_bytes})"),
        ));
    }
    Ok(())
}

/// The inner expression when `text` is exactly one `{{ … }}`.
fn sole_expression(text: &str) -> Option<&str> {
    let inner = text.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}")).then_some(inner)
}

fn is_template(text: &str) -> bool {
    text.contains("{{") || text.contains("{%")
}

/// Whether any string of `with` is a template (a step without one renders for free).
pub fn has_templates(with: &Map<String, Value>) -> bool {
    fn any(value: &Value) -> bool {
        match value {
            Value::String(text) => is_template(text),
            Value::Array(items) => items.iter().any(any),
            Value::Object(fields) => fields.values().any(any),
            _ => false,
        }
    }
    with.values().any(any)
}

/// Statements a template may not use (the module's comment says why).
const REFUSED_STATEMENTS: &[&str] = &[
    "set", "with", "macro", "call", "include", "import", "from", "extends", "block",
];

/// Refuses the constructs that let a value feed on itself (see the module's comment). A
/// lexical check: a refused word inside a string literal or a `raw` block is refused too.
fn check_constructs(text: &str) -> Result<(), String> {
    let words = |s: &str| {
        s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    if words(text).iter().any(|w| w == "namespace") {
        return Err("`namespace` is not available in templates".to_owned());
    }
    check_operand_counts(text)?;
    let mut rest = text;
    while let Some(at) = rest.find("{%") {
        let after = &rest[at + 2..];
        let end = after.find("%}").unwrap_or(after.len());
        let tag = after[..end].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        let tag_words = words(tag);
        let keyword = tag_words.first().map_or("", String::as_str);
        if REFUSED_STATEMENTS.contains(&keyword) {
            return Err(format!(
                "the `{keyword}` statement is not allowed in templates: a value bound to a name \
                 could grow without bound"
            ));
        }
        if keyword == "for" {
            if tag_words.iter().any(|w| w == "recursive") {
                return Err("recursive loops are not allowed in templates".to_owned());
            }
            if !loops_over_parts_of_the_context(tag) {
                return Err(format!(
                    "a loop may iterate only a name, a path or range(…) (no `~`, `+`, `*`, `[` or \
                     other calls in its tag), not {tag:?}"
                ));
            }
        }
        rest = &after[end..];
    }
    Ok(())
}

/// Operators and separators (`~ + * , |`) one `{{ … }}` or `{% … %}` may hold; of them, one
/// `*` (`**` aside).
pub const MAX_OPERATORS_PER_TAG: usize = 32;

/// Without names to bind, a value built in one tag is at most its operands put together, and
/// one tag is all it lives in: capping the operators of a tag caps how many times a value read
/// from the context (up to the request's size) can be copied into one string, which the fuel
/// would allow tens of thousands of times. Counted lexically, string literals included.
fn check_operand_counts(text: &str) -> Result<(), String> {
    for (open, close) in [("{{", "}}"), ("{%", "%}")] {
        let mut rest = text;
        while let Some(at) = rest.find(open) {
            let after = &rest[at + 2..];
            let end = after.find(close).unwrap_or(after.len());
            let operators = after[..end]
                .chars()
                .filter(|c| matches!(c, '~' | '+' | '*' | ',' | '|'))
                .count();
            if operators > MAX_OPERATORS_PER_TAG {
                return Err(format!(
                    "a tag holds {operators} operators and separators (`~ + * , |`); the limit \
                     is {MAX_OPERATORS_PER_TAG}"
                ));
            }
            // `'s' * n` allocates up to minijinja's 100 MB before anything of ours can look at
            // it: one per tag keeps that to one such string (and its copy) at a time.
            if after[..end].replace("**", "").matches('*').count() > 1 {
                return Err(
                    "a tag may hold one `*` (a string repeated n times is built in full before \
                     its size is checked)"
                        .to_owned(),
                );
            }
            rest = &after[end..];
        }
    }
    Ok(())
}

/// Whether a `for` tag (`for x in …`) iterates only what the context holds, or `range(…)`: it
/// uses none of `~`, `+`, `*`, `[`, and calls nothing but `range` (a `(` is otherwise allowed
/// only to open a tuple of loop variables). Checked over the whole tag, so no spacing of `in`
/// slips an iterable past it.
fn loops_over_parts_of_the_context(tag: &str) -> bool {
    if tag.contains(['~', '+', '*', '[']) {
        return false;
    }
    let targets = tag.trim_start().strip_prefix("for").unwrap_or(tag);
    targets.match_indices('(').all(|(at, _)| {
        let before = targets[..at].trim_end();
        before.is_empty() || before.ends_with("range") && !before.ends_with("_range")
    })
}

/// Checks the syntax of every template in `with`, and that it uses only what templates may;
/// the error names the field (`with.url`).
pub fn check(with: &Map<String, Value>) -> Result<(), (String, String)> {
    check_fields("with", with)
}

/// [`check`] for the fields of another part of a step (`set`), named from `root`.
pub fn check_fields(root: &str, fields: &Map<String, Value>) -> Result<(), (String, String)> {
    let env = environment(DEFAULT_MAX_BYTES);
    let mut failure = None;
    visit(&Value::Object(fields.clone()), root, &mut |path, text| {
        if failure.is_some() || !is_template(text) {
            return;
        }
        if let Err(e) = check_constructs(text) {
            failure = Some((path.to_owned(), e));
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

/// Renders every template in `with` against `context` within `budget`; the error names the
/// field.
pub fn render(
    with: &Map<String, Value>,
    context: &Value,
    budget: &Budget,
) -> Result<Value, RenderError> {
    render_fields("with", with, context, budget)
}

/// [`render`] for the fields of another part of a step (`set`), named from `root`.
pub fn render_fields(
    root: &str,
    fields: &Map<String, Value>,
    context: &Value,
    budget: &Budget,
) -> Result<Value, RenderError> {
    Run::new(context, budget).value(&Value::Object(fields.clone()), root)
}

/// One step's render: what is left of its budget.
struct Run<'a> {
    env: Environment<'static>,
    context: &'a Value,
    budget: &'a Budget,
    fuel_left: u64,
    bytes_left: usize,
}

impl<'a> Run<'a> {
    fn new(context: &'a Value, budget: &'a Budget) -> Self {
        Self {
            env: environment(budget.max_bytes),
            context,
            budget,
            fuel_left: budget.fuel,
            bytes_left: budget.max_bytes,
        }
    }

    fn value(&mut self, value: &Value, path: &str) -> Result<Value, RenderError> {
        match value {
            Value::String(text) if is_template(text) => self.template(text, path),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| self.value(item, &format!("{path}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Value::Object(fields) => fields
                .iter()
                .map(|(key, item)| {
                    self.value(item, &format!("{path}.{key}"))
                        .map(|rendered| (key.clone(), rendered))
                })
                .collect::<Result<Map<_, _>, _>>()
                .map(Value::Object),
            other => Ok(other.clone()),
        }
    }

    fn template(&mut self, text: &str, path: &str) -> Result<Value, RenderError> {
        let over = |what: String| RenderError::BudgetExceeded(format!("{path}: {what}"));
        check_constructs(text).map_err(over)?;
        if self.fuel_left == 0 {
            return Err(over("the step's template fuel is spent".to_owned()));
        }
        self.env.set_fuel(Some(self.fuel_left));
        let limit = self.budget.max_bytes.min(self.bytes_left);
        let mut out = Capped::new(limit);
        let classify = |e: minijinja::Error| classify(path, e);
        let value = match sole_expression(text) {
            Some(expression) => {
                let evaluated = self
                    .env
                    .compile_expression(expression)
                    .and_then(|e| e.eval(self.context))
                    .map_err(classify)?;
                // Strict mode fails on undefined names inside an expression, but a bare
                // lookup of a missing field evaluates to "undefined": refuse it too.
                if evaluated.is_undefined() {
                    return Err(RenderError::Failed(format!(
                        "{path}: {expression:?} is undefined"
                    )));
                }
                if let Err(e) = serde_json::to_writer(&mut out, &evaluated) {
                    return Err(out
                        .over(path)
                        .unwrap_or_else(|| RenderError::Failed(format!("{path}: {e}"))));
                }
                // Parsing back refuses what nests deeper than serde_json's own limit (128).
                serde_json::from_slice(&out.bytes)
                    .map_err(|e| over(format!("the value cannot be stored as JSON: {e}")))?
            }
            None => {
                let template = self.env.template_from_str(text).map_err(classify)?;
                let captured = template
                    .render_captured_to(self.context, &mut out)
                    .map_err(|e| out.over(path).unwrap_or_else(|| classify(e)))?;
                let spent = captured
                    .state()
                    .fuel_levels()
                    .map_or(0, |(consumed, _)| consumed);
                self.fuel_left = self.fuel_left.saturating_sub(spent);
                let text = String::from_utf8(std::mem::take(&mut out.bytes))
                    .map_err(|e| RenderError::Failed(format!("{path}: {e}")))?;
                Value::String(text)
            }
        };
        check_stored(&value, path, self.budget.max_depth)?;
        self.bytes_left -= out.written;
        Ok(value)
    }
}

/// A render error, as a budget error when a budget (or minijinja's own size caps) stopped it.
fn classify(path: &str, error: minijinja::Error) -> RenderError {
    let message = format!("{path}: {error}");
    let over_size = error.kind() == ErrorKind::InvalidOperation
        && error
            .detail()
            .is_some_and(|d| d.contains("too large") || d.contains("too many"));
    if error.kind() == ErrorKind::OutOfFuel || over_size {
        RenderError::BudgetExceeded(message)
    } else {
        RenderError::Failed(message)
    }
}

/// Refuses a rendered value deeper than `max_depth`, or holding U+0000 (which `jsonb` cannot
/// store), before any statement is built with it.
fn check_stored(value: &Value, path: &str, max_depth: usize) -> Result<(), RenderError> {
    fn walk(value: &Value, depth: usize, max_depth: usize) -> Result<(), bool> {
        match value {
            Value::String(text) if text.contains('\0') => Err(false),
            Value::Array(_) | Value::Object(_) if depth >= max_depth => Err(true),
            Value::Array(items) => items
                .iter()
                .try_for_each(|item| walk(item, depth + 1, max_depth)),
            Value::Object(fields) => fields.iter().try_for_each(|(key, item)| {
                if key.contains('\0') {
                    return Err(false);
                }
                walk(item, depth + 1, max_depth)
            }),
            _ => Ok(()),
        }
    }
    walk(value, 0, max_depth).map_err(|too_deep| {
        if too_deep {
            RenderError::BudgetExceeded(format!(
                "{path}: the value nests deeper than {max_depth} arrays and objects"
            ))
        } else {
            RenderError::Unstorable(format!(
                "{path}: the value holds the NUL character (U+0000), which cannot be stored"
            ))
        }
    })
}

/// A writer that refuses to grow past `limit` bytes.
struct Capped {
    bytes: Vec<u8>,
    written: usize,
    limit: usize,
    exceeded: bool,
}

impl Capped {
    fn new(limit: usize) -> Self {
        Self {
            bytes: Vec::new(),
            written: 0,
            limit,
            exceeded: false,
        }
    }

    /// The budget error, if the writer refused to grow.
    fn over(&self, path: &str) -> Option<RenderError> {
        self.exceeded.then(|| {
            RenderError::BudgetExceeded(format!(
                "{path}: the rendered value is over {} bytes, what is left of the step's budget",
                self.limit
            ))
        })
    }
}

impl io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() > self.limit {
            self.exceeded = true;
            return Err(io::Error::other("over the template byte budget"));
        }
        self.bytes.extend_from_slice(buf);
        self.written += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
