use super::*;
use serde_json::json;

fn map(value: Value) -> Map<String, Value> {
    value.as_object().expect("an object").clone()
}

#[test]
fn sole_expressions_keep_their_json_type_and_text_renders_to_strings() {
    let context =
        json!({"input": {"who": "world"}, "steps": {"a": {"result": {"n": 2, "items": [1, 2]}}}});
    let with = map(json!({
        "items": "{{ steps.a.result.items }}",
        "n": "{{ steps.a.result.n + 1 }}",
        "greeting": "hello {{ input.who }}",
        "nested": [{"plain": "no template", "count": 3}]
    }));
    let rendered = render(&with, &context, &Budget::default()).expect("renders");
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
        let error = render(&with, &context, &Budget::default())
            .expect_err("undefined")
            .message()
            .to_owned();
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

fn refused(with: Value, context: &Value, budget: &Budget) -> RenderError {
    render(&map(with), context, budget).expect_err("refused")
}

fn over_budget(template: &str) -> String {
    let context = json!({"input": {"s": "a".repeat(1000), "items": [1, 2]}, "steps": {}});
    match refused(json!({"x": template}), &context, &Budget::default()) {
        RenderError::BudgetExceeded(message) => message,
        other => panic!("{template}: not a budget error: {other:?}"),
    }
}

#[test]
fn fuel_bounds_loops() {
    let message = over_budget(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    );
    assert!(message.starts_with("with.x: "), "{message}");
    assert!(message.contains("fuel"), "{message}");
}

#[test]
fn fuel_is_shared_by_the_step() {
    let context = json!({"input": {}, "steps": {}});
    let budget = Budget {
        fuel: 2_000,
        ..Budget::default()
    };
    let one = "{% for i in range(300) %}{% endfor %}";
    assert!(render(&map(json!({"a": one})), &context, &budget).is_ok());
    let error = refused(json!({"a": one, "b": one, "c": one}), &context, &budget);
    assert_eq!(error.code(), Some(BUDGET_EXCEEDED), "{error}");
    let spent = refused(json!({"a": "{{ 1 }}"}), &context, &Budget::spent());
    assert_eq!(spent.code(), Some(BUDGET_EXCEEDED), "{spent}");
}

#[test]
fn values_and_the_whole_with_are_capped_in_bytes() {
    for template in [
        "{{ 'a' * 300000 }}",
        "{{ 'a' * 10000000000 }}",
        "x{{ 'a' * 300000 }}",
        "{% for i in range(100000) %}0123456789{% endfor %}",
        "{{ input.s|replace('a', input.s) }}",
        "{{ range(100000)|join(input.s) }}",
    ] {
        over_budget(template);
    }
    let context = json!({"input": {}, "steps": {}});
    let half = "{{ 'a' * 150000 }}";
    assert!(render(&map(json!({"a": half})), &context, &Budget::default()).is_ok());
    let error = refused(json!({"a": half, "b": half}), &context, &Budget::default());
    assert!(error.message().starts_with("with.b: "), "{error}");
}

#[test]
fn depth_is_capped() {
    let deep = format!("{{{{ {}1{} }}}}", "[".repeat(40), "]".repeat(40));
    let message = over_budget(&deep);
    assert!(message.contains("deeper than 32"), "{message}");
    let shallow = format!("{{{{ {}1{} }}}}", "[".repeat(10), "]".repeat(10));
    let context = json!({"input": {}, "steps": {}});
    assert!(render(&map(json!({"a": shallow})), &context, &Budget::default()).is_ok());
}

#[test]
fn nul_is_refused_as_unstorable() {
    let context = json!({"input": {}, "steps": {}});
    for template in ["{{ '\\x00' }}", "a{{ '\\x00' }}b", "{{ {'k': ['\\x00']} }}"] {
        let error = refused(json!({"x": template}), &context, &Budget::default());
        assert_eq!(error.code(), Some(UNSTORABLE), "{template}: {error}");
        assert!(error.message().starts_with("with.x: "), "{error}");
    }
}

#[test]
fn constructs_that_let_a_value_feed_on_itself_are_refused() {
    let copies = format!("{{{{ input.s{} }}}}", " ~ input.s".repeat(40));
    for template in [
        "{% set ns = namespace(s='a') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
        "{% set a = 'a' %}{% set a = a ~ a %}{{ a }}",
        "{%- with a = 'a' ~ 'a' %}{{ a }}{% endwith %}",
        "{% for a in ['x' ~ 'x'] %}{% for b in [a ~ a] %}{{ b }}{% endfor %}{% endfor %}",
        "{% for a in input.items recursive %}{{ loop(a) }}{% endfor %}",
        "{% for b\nin\t['x' ~ 'x'] %}{{ b }}{% endfor %}",
        "{% for b in('x','y') %}{{ b }}{% endfor %}",
        "{% for b in input.items|map('string')|list %}{{ b }}{% endfor %}",
        "{{ namespace() }}",
        copies.as_str(),
        "{{ 'a' * 99999999 ~ 'a' * 99999999 }}",
    ] {
        let (path, message) = check(&map(json!({"x": template}))).expect_err(template);
        assert_eq!(path, "with.x");
        assert!(!message.contains("syntax"), "{template}: {message}");
        over_budget(template);
    }
    for template in [
        "{% for i in range(3) %}{{ i }}{% endfor %}",
        "{% for i in input.items if i > 1 %}{{ i }}{% endfor %}",
        "{% for i in range(input.items|length) %}{{ i }}{% endfor %}",
        "{% for (i, j) in input.pairs %}{{ i }}{% endfor %}",
        "{{ 2 ** 3 * 2 }}{{ 'ab' * 2 }}",
        "{{ input.items|join(', ') }} {{ 'abc'|replace('b', 'x') }}",
    ] {
        assert_eq!(check(&map(json!({"x": template}))), Ok(()), "{template}");
        let context = json!({"input": {"items": [1, 2], "pairs": [[1, 2]]}, "steps": {}});
        render(&map(json!({"x": template})), &context, &Budget::default()).expect(template);
    }
}

#[test]
fn conditions_are_true_by_minijinja_truthiness_with_or_without_braces() {
    let context = json!({"input": {"n": 3, "empty": [], "name": ""}, "steps": {}});
    let budget = Budget::default();
    let mut conditions = Conditions::new(&context, &budget);
    let cases = [
        ("input.n > 2", true),
        ("{{ input.n > 5 }}", false),
        ("input.n", true),
        ("input.empty", false),
        ("input.name", false),
        ("input.missing is defined", false),
        ("{{ 'x' in ['x', 'y'] }}", true),
    ];
    for (when, expected) in cases {
        assert_eq!(conditions.holds(when, "when"), Ok(expected), "{when}");
        assert_eq!(check_condition(when), Ok(()), "{when}");
    }
    let undefined = conditions.holds("input.missing.deeper", "next.arcs[0].when");
    assert!(
        matches!(&undefined, Err(RenderError::Failed(m)) if m.starts_with("next.arcs[0].when")),
        "{undefined:?}"
    );
}

#[test]
fn a_condition_is_one_expression_and_nothing_that_binds_names() {
    for when in [
        "",
        "{{ }}",
        "input.n >",
        "a %}{% set x = 1 %}{% if a",
        "{{ a }} and {{ b }}",
    ] {
        assert!(check_condition(when).is_err(), "{when:?}");
    }
    let many = vec!["1"; MAX_OPERATORS_PER_TAG + 2].join(" + ");
    assert!(check_condition(&many).is_err_and(|e| e.contains("operators")));
}
