use super::*;
use serde_json::json;

fn playbook(steps: serde_json::Value) -> Playbook {
    serde_json::from_value(json!({"name": "demo", "steps": steps})).expect("well-typed")
}

fn rejection(steps: serde_json::Value) -> Error {
    playbook(steps).validate().expect_err("should be invalid")
}

#[test]
fn a_diamond_is_valid() {
    let p = playbook(json!([
        {"name": "a", "action": "noop"},
        {"name": "b", "action": "noop", "needs": ["a"]},
        {"name": "c", "action": "sleep", "needs": ["a"], "with": {"ms": 5}},
        {"name": "d", "action": "noop", "needs": ["b", "c"], "retry": {"max_attempts": 3}}
    ]));
    assert_eq!(p.validate(), Ok(()));
}

#[test]
fn cycles_are_rejected_naming_the_steps() {
    let e = rejection(json!([
        {"name": "a", "action": "noop", "needs": ["c"]},
        {"name": "b", "action": "noop", "needs": ["a"]},
        {"name": "c", "action": "noop", "needs": ["b"]},
        {"name": "free", "action": "noop"}
    ]));
    assert_eq!(e.path, "steps");
    assert!(e.message.contains("cycle through a, b, c"), "{e}");
}

#[test]
fn errors_name_the_step_and_field() {
    let cases = [
        (
            json!([{"name": "a", "action": "teleport"}]),
            "steps[0].action",
        ),
        (
            json!([{"name": "a", "action": "noop"}, {"name": "a", "action": "noop"}]),
            "steps[1].name",
        ),
        (
            json!([{"name": "a", "action": "noop", "needs": ["ghost"]}]),
            "steps[0].needs[0]",
        ),
        (
            json!([{"name": "a", "action": "noop", "needs": ["a"]}]),
            "steps[0].needs[0]",
        ),
        (json!([{"name": "a b", "action": "noop"}]), "steps[0].name"),
        (
            json!([{"name": "a", "action": "noop", "retry": {"max_attempts": 0}}]),
            "steps[0].retry.max_attempts",
        ),
        (
            json!([{"name": "a", "action": "noop", "pool": "x.>"}]),
            "steps[0].pool",
        ),
        (json!([]), "steps"),
        (
            json!([{"name": "a", "action": "noop", "with": {"x": "{{ input. }}"}}]),
            "steps[0].with.x",
        ),
    ];
    for (steps, path) in cases {
        assert_eq!(rejection(steps).path, path);
    }
}

#[test]
fn unknown_fields_are_type_errors() {
    let parsed = serde_json::from_value::<Playbook>(
        json!({"name": "x", "steps": [{"name": "a", "action": "noop", "neds": []}]}),
    );
    assert!(parsed.is_err());
}

#[test]
fn nul_characters_are_found_in_keys_and_strings() {
    assert_eq!(
        find_nul(&json!({"a": [1, "x\u{0}"]}), "input"),
        Some("input.a[1]".to_owned())
    );
    assert_eq!(
        find_nul(&json!({"k\u{0}": 1}), "input"),
        Some("input.k\u{0}".to_owned())
    );
    assert_eq!(find_nul(&json!({"a": ["fine"]}), "input"), None);
}

#[test]
fn a_plan_orders_steps_by_level_then_as_written() {
    let playbook: Playbook = serde_json::from_value(json!({
        "name": "diamond",
        "steps": [
            {"name": "d", "action": "noop", "needs": ["b", "c"]},
            {"name": "b", "action": "noop", "needs": ["a"], "pool": "gpu"},
            {"name": "a", "action": "noop"},
            {"name": "c", "action": "sleep", "needs": ["a"]}
        ]
    }))
    .expect("valid");
    let plan: Vec<(String, u32, String)> = playbook
        .plan()
        .into_iter()
        .map(|s| (s.name, s.level, s.pool))
        .collect();
    assert_eq!(
        plan,
        vec![
            ("a".to_owned(), 0, "default".to_owned()),
            ("b".to_owned(), 1, "gpu".to_owned()),
            ("c".to_owned(), 1, "default".to_owned()),
            ("d".to_owned(), 2, "default".to_owned()),
        ]
    );
}

#[test]
fn durations_accept_units_or_milliseconds() {
    let step: Step = serde_json::from_value(json!({
        "name": "a", "action": "sleep", "timeout": "2m", "retry": {"max_attempts": 2, "backoff": 250}
    }))
    .expect("valid durations");
    assert_eq!(step.timeout, Some(Millis(120_000)));
    assert_eq!(step.retry.map(|r| r.backoff), Some(Millis(250)));
    for bad in ["2 weeks", "-1s", "s", "1.5s", ""] {
        let parsed =
            serde_json::from_value::<Step>(json!({"name": "a", "action": "noop", "timeout": bad}));
        assert!(parsed.is_err(), "{bad:?} should be rejected");
    }
    assert_eq!(
        serde_json::to_value(step.timeout).expect("serialize"),
        json!(120_000)
    );
}

#[test]
fn durations_and_needs_are_bounded_naming_the_field() {
    let cases = [
        (
            json!([{"name": "a", "action": "noop", "timeout": u64::MAX}]),
            "steps[0].timeout",
        ),
        (
            json!([{"name": "a", "action": "noop", "timeout": "25h"}]),
            "steps[0].timeout",
        ),
        (
            json!([{"name": "a", "action": "fail", "retry": {"max_attempts": 2, "backoff": "2h"}}]),
            "steps[0].retry.backoff",
        ),
        (
            json!([{"name": "a", "action": "fail", "retry": {"max_attempts": 2, "backoff": u64::MAX}}]),
            "steps[0].retry.backoff",
        ),
        (
            json!([{"name": "a", "action": "sleep", "with": {"ms": 1e300}}]),
            "steps[0].with.ms",
        ),
        (
            json!([{"name": "a", "action": "sleep", "with": {"ms": "99999999999999999999999"}}]),
            "steps[0].with.ms",
        ),
        (
            json!([{"name": "a", "action": "http", "with": {"url": "http://x", "timeout_ms": 86_400_001}}]),
            "steps[0].with.timeout_ms",
        ),
        (
            json!([{"name": "a", "action": "noop"}, {"name": "b", "action": "noop", "needs": ["a", "a"]}]),
            "steps[1].needs[1]",
        ),
    ];
    for (steps, path) in cases {
        let e = rejection(steps);
        assert_eq!(e.path, path, "{e}");
    }
    // At the limits, and templates (checked when the worker renders them), are fine.
    let p = playbook(json!([
        {"name": "a", "action": "sleep", "timeout": "24h", "with": {"ms": MAX_ACTION_MS},
         "retry": {"max_attempts": MAX_RETRY_ATTEMPTS, "backoff": "1h"}},
        {"name": "b", "action": "sleep", "needs": ["a"], "with": {"ms": "{{ input.ms }}"}}
    ]));
    assert_eq!(p.validate(), Ok(()));
}

#[test]
fn a_lower_bound_on_durations_names_the_field_and_the_limit() {
    let check =
        |steps: serde_json::Value| playbook(steps).check_durations(1_000, "max_step_timeout_ms");
    let cases = [
        (
            json!([{"name": "a", "action": "noop", "timeout": "2s"}]),
            "steps[0].timeout",
        ),
        (
            json!([{"name": "a", "action": "sleep", "with": {"ms": 1_001}}]),
            "steps[0].with.ms",
        ),
        (
            json!([{"name": "a", "action": "sleep", "with": {"ms": " 1001 "}}]),
            "steps[0].with.ms",
        ),
        (
            json!([{"name": "a", "action": "noop"},
                   {"name": "b", "action": "shell", "with": {"argv": ["true"], "timeout_ms": 5_000}}]),
            "steps[1].with.timeout_ms",
        ),
        (
            json!([{"name": "a", "action": "http", "with": {"url": "http://x", "timeout_ms": 1e9}}]),
            "steps[0].with.timeout_ms",
        ),
    ];
    for (steps, path) in cases {
        let e = check(steps).expect_err(path);
        assert_eq!(e.path, path, "{e}");
        assert_eq!(e.message, "must be at most 1000 ms (max_step_timeout_ms)");
    }
    // At the bound, templates, and another action's `ms` are left alone.
    assert_eq!(
        check(json!([
            {"name": "a", "action": "sleep", "timeout": "1s", "with": {"ms": "1000"}},
            {"name": "b", "action": "sleep", "with": {"ms": "{{ input.ms }}"}},
            {"name": "c", "action": "noop", "with": {"ms": 5_000}}
        ])),
        Ok(())
    );
    // The playbook's own bound is the same check at one day.
    let e = rejection(json!([{"name": "a", "action": "noop", "timeout": "25h"}]));
    assert_eq!(
        e.message,
        format!("must be at most {MAX_TIMEOUT_MS} ms (one day)")
    );
}

#[test]
fn too_many_steps_is_rejected() {
    let steps: Vec<_> = (0..=MAX_STEPS)
        .map(|i| json!({"name": format!("s{i}"), "action": "noop"}))
        .collect();
    assert_eq!(rejection(json!(steps)).path, "steps");
}

#[test]
fn label_keys_are_checked() {
    let mut labels = Labels::new();
    labels.insert("team".into(), "data".into());
    assert_eq!(validate_labels(&labels), Ok(()));
    labels.insert("bad key".into(), "x".into());
    assert_eq!(
        validate_labels(&labels).map_err(|e| e.path),
        Err("labels.bad key".into())
    );
}

#[test]
fn arcs_are_checked_naming_the_arc() {
    let arcs = |arcs: serde_json::Value| {
        json!([
            {"name": "a", "action": "noop", "next": {"mode": "inclusive", "arcs": arcs}},
            {"name": "b", "action": "noop"},
            {"name": "c", "action": "noop", "next": {"arcs": [{"step": "b"}]}}
        ])
    };
    let too_many: Vec<_> = (0..=MAX_ARCS).map(|_| json!({"step": "b"})).collect();
    let cases = [
        (
            arcs(json!([{"step": "zz"}])),
            "steps[0].next.arcs[0].step",
            "unknown step",
        ),
        (
            arcs(json!([{"step": "a"}])),
            "steps[0].next.arcs[0].step",
            "itself",
        ),
        (
            arcs(json!([{"step": "c"}, {"step": "b"}])),
            "steps[2].next.arcs[0].step",
            "already the target",
        ),
        (arcs(json!([])), "steps[0].next.arcs", "1 to 64"),
        (arcs(json!(too_many)), "steps[0].next.arcs", "1 to 64"),
        (
            arcs(json!([{"step": "c", "when": "{{ 1 +"}])),
            "steps[0].next.arcs[0].when",
            "syntax",
        ),
        (
            arcs(json!([{"step": "c", "when": "  "}])),
            "steps[0].next.arcs[0].when",
            "empty",
        ),
        (
            arcs(json!([{"step": "c", "when": "x %}{% set y = 1 %}{% if x"}])),
            "steps[0].next.arcs[0].when",
            "set",
        ),
        (
            arcs(json!([{"step": "c", "when": "namespace(a=1)"}])),
            "steps[0].next.arcs[0].when",
            "namespace",
        ),
    ];
    for (steps, path, message) in cases {
        let e = rejection(steps);
        assert_eq!(e.path, path, "{e}");
        assert!(e.message.contains(message), "{e}");
    }
}

#[test]
fn arcs_and_needs_together_must_not_cycle() {
    let e = rejection(json!([
        {"name": "a", "action": "noop", "needs": ["b"]},
        {"name": "b", "action": "noop"},
        {"name": "c", "action": "noop", "next": {"arcs": [{"step": "b"}]}, "needs": ["a"]}
    ]));
    assert!(e.message.contains("needs and arcs form a cycle"), "{e}");
}

#[test]
fn an_arc_orders_its_target_after_its_source_in_the_plan() {
    let p = playbook(json!([
        {"name": "b", "action": "noop"},
        {"name": "a", "action": "noop", "next": {"arcs": [{"step": "b", "when": "{{ true }}"}]}}
    ]));
    assert_eq!(p.validate(), Ok(()));
    let plan = p.plan();
    let levels: Vec<(&str, u32)> = plan.iter().map(|s| (s.name.as_str(), s.level)).collect();
    assert_eq!(levels, [("a", 0), ("b", 1)]);
    assert_eq!(plan[0].next, p.steps[1].next);
    assert_eq!(
        p.steps[1].next.as_ref().map(|n| n.mode),
        Some(Mode::Exclusive),
        "the default"
    );
}

#[test]
fn the_plan_shows_what_a_step_sets_and_its_failure_policy() {
    let p = playbook(json!([
        {"name": "a", "action": "noop", "set": {"total": "{{ result.n }}", "seen": "{{ true }}"},
         "on_error": [{"when": "{{ attempt < 3 }}", "then": "retry"}, {"then": "continue"}]},
        {"name": "b", "action": "noop", "needs": ["a"]}
    ]));
    assert_eq!(p.validate(), Ok(()));
    let plan = p.plan();
    assert_eq!(plan[0].set, ["seen", "total"], "by name");
    assert_eq!(plan[0].on_error, p.steps[0].on_error);
    assert_eq!(plan[0].on_error.len(), 2);
    let quiet = serde_json::to_value(&plan[1]).expect("serialises");
    assert!(
        quiet.get("set").is_none() && quiet.get("on_error").is_none(),
        "absent when empty: {quiet}"
    );
}

#[test]
fn the_plan_shows_a_child_playbook_with_its_own_plan() {
    let p = playbook(json!([
        {"name": "kid", "action": "playbook", "with": {"playbook": {"name": "inner", "steps": [
            {"name": "x", "action": "noop"}, {"name": "y", "action": "noop", "needs": ["x"]}]}}},
        {"name": "ref", "action": "playbook", "with": {"playbook": {"name": "nightly", "version": 2}}},
        {"name": "plain", "action": "noop"}
    ]));
    assert_eq!(p.validate(), Ok(()));
    let plan = p.plan();
    let inner = plan[0].child.as_ref().expect("the inline child");
    assert_eq!(inner.name, "inner");
    let names: Vec<(&str, u32)> = inner
        .plan
        .iter()
        .map(|s| (s.name.as_str(), s.level))
        .collect();
    assert_eq!(names, [("x", 0), ("y", 1)]);
    let reference = plan[1].child.as_ref().expect("the catalog child");
    assert_eq!(
        (reference.name.as_str(), reference.version),
        ("nightly", Some(2))
    );
    assert!(reference.plan.is_empty());
    assert!(plan[2].child.is_none());
}

#[test]
fn a_playbook_without_arcs_serialises_as_before() {
    let p = playbook(json!([{"name": "a", "action": "noop"}]));
    assert_eq!(
        serde_json::to_value(&p).expect("serialises"),
        json!({"name": "demo", "steps": [{"name": "a", "action": "noop"}]})
    );
}

#[test]
fn set_names_and_templates_are_checked_naming_the_path() {
    let names: serde_json::Map<String, serde_json::Value> = (0..=MAX_SET_NAMES)
        .map(|i| (format!("v{i}"), json!("x")))
        .collect();
    let cases = [
        (json!({"1st": "x"}), "steps[0].set.1st"),
        (json!({"a.b": "x"}), "steps[0].set.a.b"),
        (json!({"ok": "{{ result. }}"}), "steps[0].set.ok"),
        (json!({"ok": ["{% if %}"]}), "steps[0].set.ok[0]"),
        (serde_json::Value::Object(names), "steps[0].set"),
    ];
    for (set, path) in cases {
        let e = rejection(json!([{"name": "a", "action": "noop", "set": set}]));
        assert_eq!(e.path, path, "{e}");
    }
    let fine = playbook(json!([{"name": "a", "action": "noop",
        "set": {"_token": "{{ result.t }}", "n": 3}}]));
    assert_eq!(fine.validate(), Ok(()));
}

#[test]
fn on_error_rules_and_max_gotos_are_checked_naming_the_path() {
    let steps = |rules: serde_json::Value| {
        json!([
            {"name": "a", "action": "noop"},
            {"name": "b", "action": "noop", "needs": ["a"], "on_error": rules},
            {"name": "c", "action": "noop"}
        ])
    };
    let too_many: Vec<serde_json::Value> = (0..=MAX_ON_ERROR_RULES)
        .map(|_| json!({"then": "fail"}))
        .collect();
    let cases = [
        (json!([{"then": "explode"}]), "steps[1].on_error[0].then"),
        (
            json!([{"then": "goto:nowhere"}]),
            "steps[1].on_error[0].then",
        ),
        (
            json!([{"then": "fail"}, {"then": "goto:c"}]),
            "steps[1].on_error[1].then",
        ),
        (
            json!([{"when": "error ~", "then": "retry"}]),
            "steps[1].on_error[0].when",
        ),
        (json!(too_many), "steps[1].on_error"),
    ];
    for (rules, path) in cases {
        let e = rejection(steps(rules));
        assert_eq!(e.path, path, "{e}");
    }
    // A goto leads back to the step itself or a step before it.
    for then in ["goto:a", "goto: b", "continue", "retry"] {
        let fine = playbook(steps(json!([{"when": "attempt < 3", "then": then}])));
        assert_eq!(fine.validate(), Ok(()), "{then}");
    }
    let mut over = playbook(steps(json!([{"then": "goto:a"}])));
    over.max_gotos = Some(MAX_GOTOS + 1);
    assert_eq!(over.validate().expect_err("refused").path, "max_gotos");
}

#[test]
fn loops_are_checked_where_they_are_written() {
    let step = |looped: serde_json::Value| json!([{"name": "a", "action": "noop", "loop": looped}]);
    let valid = playbook(step(json!({"in": "{{ input.xs }}", "iterator": "x"})));
    valid.validate().expect("a loop with defaults");
    assert_eq!(
        valid.steps[0].loop_.as_ref().map(Loop::in_flight),
        Some(DEFAULT_LOOP_IN_FLIGHT)
    );
    assert_eq!(
        valid.plan()[0].loop_,
        valid.steps[0].loop_,
        "a dry run shows the loop"
    );
    for (looped, path) in [
        (
            json!({"in": "{{ xs }}", "iterator": "input"}),
            "steps[0].loop.iterator",
        ),
        (
            json!({"in": "{{ xs }}", "iterator": "1x"}),
            "steps[0].loop.iterator",
        ),
        (
            json!({"in": "{{ xs }}", "iterator": "x", "max_in_flight": 0}),
            "steps[0].loop.max_in_flight",
        ),
        (
            json!({"in": "{{ xs }}", "iterator": "x", "max_in_flight": 1001}),
            "steps[0].loop.max_in_flight",
        ),
        (
            json!({"in": "{{ xs }}", "iterator": "x", "mode": "sequential", "max_in_flight": 2}),
            "steps[0].loop.max_in_flight",
        ),
        (json!({"in": "{{ xs ", "iterator": "x"}), "steps[0].loop.in"),
    ] {
        assert_eq!(rejection(step(looped.clone())).path, path, "{looped}");
    }
    // A `playbook` step cannot loop: each item would start a child whose return names no item.
    let child = json!([{"name": "a", "action": "playbook",
        "with": {"playbook": {"name": "c", "steps": [{"name": "s", "action": "noop"}]}},
        "loop": {"in": "{{ input.xs }}", "iterator": "x"}}]);
    let refused = rejection(child);
    assert_eq!(refused.path, "steps[0].loop", "{refused}");
    assert!(refused.to_string().contains("playbook"), "{refused}");
}
