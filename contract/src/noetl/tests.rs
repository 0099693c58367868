use serde_json::{json, Value};

use super::*;

fn doc(workflow: Value) -> Value {
    json!({
        "apiVersion": "noetl.io/v2",
        "kind": "Playbook",
        "metadata": {"name": "t", "description": "a test"},
        "workload": {"size": 3},
        "workflow": workflow,
    })
}

fn refused(document: &Value) -> Error {
    translate(document).expect_err("refused")
}

#[test]
fn a_linear_chain_translates_step_by_step() {
    let playbook = translate(&doc(json!([
        {"step": "start", "next": [{"step": "fetch"}]},
        {"step": "fetch", "desc": "get it", "tool": {"kind": "http", "url": "{{ workload.url }}", "payload": {"n": "{{ workload.size }}"}},
         "next": [{"step": "end"}]},
        {"step": "end"}
    ])))
    .expect("valid");
    assert_eq!(playbook.name, "t");
    assert_eq!(
        playbook.input,
        Some(json!({"size": 3}).as_object().cloned().expect("object"))
    );
    let actions: Vec<&str> = playbook.steps.iter().map(|s| s.action.as_str()).collect();
    assert_eq!(actions, ["noop", "http", "noop"]);
    let fetch = &playbook.steps[1];
    assert_eq!(fetch.with["url"], "{{ input.url }}");
    assert_eq!(fetch.with["body"], json!({"n": "{{ input.size }}"}));
    assert_eq!(fetch.next.as_ref().expect("next").arcs[0].step, "end");
}

#[test]
fn names_map_to_ours_and_conditions_keep_their_form() {
    let playbook = translate(&doc(json!([
        {"step": "start", "tool": {"kind": "noop"}, "next": {"spec": {"mode": "inclusive"}, "arcs": [
            {"step": "big", "when": "{{ workload.size > 2 and start.result is defined }}"},
            {"step": "small", "when": "start.data | length == 0"}
        ]}},
        {"step": "big", "tool": {"kind": "fail", "message": "{{ 'workload' ~ big_thing | upper }} {{ start }}"}},
        {"step": "small"}
    ])))
    .expect("valid");
    let next = playbook.steps[0].next.as_ref().expect("next");
    assert_eq!(next.mode, Mode::Inclusive);
    assert_eq!(
        next.arcs[0].when.as_deref(),
        Some("{{ input.size > 2 and steps.start.result is defined }}")
    );
    assert_eq!(
        next.arcs[1].when.as_deref(),
        Some("{{ steps.start.result | length == 0 }}")
    );
    assert_eq!(
        playbook.steps[1].with["message"],
        "{{ 'workload' ~ big_thing | upper }} {{ steps.start.result }}"
    );
}

#[test]
fn a_step_reached_by_several_unconditional_arcs_becomes_a_join() {
    let playbook = translate(&doc(json!([
        {"step": "start", "next": {"spec": {"mode": "inclusive"}, "arcs": [{"step": "a"}, {"step": "b"}]}},
        {"step": "a", "next": [{"step": "end"}]},
        {"step": "b", "next": [{"step": "end"}]},
        {"step": "end"}
    ])))
    .expect("valid");
    assert_eq!(playbook.steps[3].needs, ["a", "b"]);
    assert!(playbook.steps[1].next.is_none() && playbook.steps[2].next.is_none());
    // A conditional arc into a shared target cannot be a join.
    let error = refused(&doc(json!([
        {"step": "start", "next": [{"step": "a", "when": "{{ workload.size }}"}, {"step": "end"}]},
        {"step": "a", "next": [{"step": "end"}]},
        {"step": "end"}
    ])));
    assert_eq!(error.path, "workflow[0].next[1]");
}

#[test]
fn every_unsupported_construct_is_refused_where_it_is() {
    let cases = [
        (
            json!({"step": "start", "loop": {"in": "{{ workload.items }}", "iterator": "x"}}),
            "workflow[0].loop",
        ),
        (json!({"step": "start", "case": []}), "workflow[0].case"),
        (json!({"step": "start", "vars": {}}), "workflow[0].vars"),
        (json!({"step": "start", "set": {}}), "workflow[0].set"),
        (
            json!({"step": "start", "when": "{{ true }}"}),
            "workflow[0].when",
        ),
        (
            json!({"step": "start", "colour": "blue"}),
            "workflow[0].colour",
        ),
        (
            json!({"step": "start", "tool": {"kind": "python", "code": "x"}}),
            "workflow[0].tool.kind",
        ),
        (
            json!({"step": "start", "tool": {"kind": "playbook", "path": "x", "return_step": "end"}}),
            "workflow[0].tool.return_step",
        ),
        (
            json!({"step": "start", "tool": {"kind": "http", "url": "x", "params": {}}}),
            "workflow[0].tool.params",
        ),
        (
            json!({"step": "start", "tool": {"kind": "shell", "cmds": ["ls"]}}),
            "workflow[0].tool.cmds",
        ),
        (
            json!({"step": "start", "tool": [{"kind": "noop"}]}),
            "workflow[0].tool",
        ),
        (
            json!({"step": "start", "tool": {"kind": "noop", "x": "{{ vars.a }}"}}),
            "workflow[0].tool.x",
        ),
        (
            json!({"step": "start", "tool": {"kind": "sleep", "ms": "{{ ctx.a }}"}}),
            "workflow[0].tool.ms",
        ),
        (
            json!({"step": "start", "next": [{"step": "start", "then": 1}]}),
            "workflow[0].next[0].then",
        ),
    ];
    for (step, path) in cases {
        let error = refused(&doc(json!([step])));
        assert_eq!(error.path, path, "{error}");
        assert!(error.message.contains("supported"), "{error}");
    }
    let mut top = doc(json!([{"step": "start"}]));
    top["keychain"] = json!([]);
    assert_eq!(refused(&top).path, "keychain");
    top = doc(json!([{"step": "start"}]));
    top["apiVersion"] = json!("noetl.io/v1");
    assert_eq!(refused(&top).path, "apiVersion");
}

#[test]
fn the_workflow_starts_at_start_and_every_other_step_is_reached() {
    assert_eq!(refused(&doc(json!([{"step": "begin"}]))).path, "workflow");
    assert_eq!(
        refused(&doc(json!([{"step": "start"}, {"step": "orphan"}]))).path,
        "workflow[1]"
    );
    assert_eq!(
        refused(&doc(json!([{"step": "start"}, {"step": "start"}]))).path,
        "workflow[1].step"
    );
}

#[test]
fn our_own_checks_name_the_noetl_path() {
    let error = refused(&doc(json!([
        {"step": "start", "next": [{"step": "nowhere"}]}
    ])));
    assert_eq!(error.path, "workflow[0].next[0].step");
    let error = refused(&doc(json!([
        {"step": "start", "tool": {"kind": "sleep", "ms": 999_999_999_999u64}}
    ])));
    assert_eq!(error.path, "workflow[0].tool.ms");
    let error = refused(&doc(json!([
        {"step": "start", "next": [{"step": "b", "when": "{{ 1 + }}"}]}, {"step": "b"}
    ])));
    assert_eq!(error.path, "workflow[0].next[0].when");
    assert!(is_noetl(&doc(json!([]))) && !is_noetl(&json!({"name": "x", "steps": []})));
}

#[test]
fn arcs_are_named_as_written_in_either_form() {
    let error = refused(&doc(json!([
        {"step": "start", "next": {"spec": {"mode": "inclusive"}, "arcs": [
            {"step": "a"}, {"step": "b", "when": "{{ nope( }}"}
        ]}},
        {"step": "a"},
        {"step": "b"}
    ])));
    assert_eq!(error.path, "workflow[0].next.arcs[1].when");
    // After a join took the arc into `end` away, the arcs left keep their own paths.
    let error = refused(&doc(json!([
        {"step": "start", "next": {"spec": {"mode": "inclusive"}, "arcs": [
            {"step": "end"}, {"step": "a"}, {"step": "b", "when": "{{ 1 + }}"}
        ]}},
        {"step": "a", "next": [{"step": "end"}]},
        {"step": "b"},
        {"step": "end"}
    ])));
    assert_eq!(error.path, "workflow[0].next.arcs[2].when");
}

#[test]
fn string_literals_are_left_alone_escapes_included() {
    let steps = [("start".to_owned(), 0)].into_iter().collect();
    let rewritten = names::rewrite(
        r#"{{ 'it\'s start' ~ start ~ "workload \" }}" ~ workload.a }} start {{ 'x"#,
        "p",
        &steps,
    )
    .expect("mapped");
    assert_eq!(
        rewritten,
        r#"{{ 'it\'s start' ~ steps.start.result ~ "workload \" }}" ~ input.a }} start {{ 'x"#
    );
}

#[test]
fn odd_shapes_are_errors_never_panics() {
    let odd = [
        json!(null),
        json!([]),
        json!({"apiVersion": 2}),
        doc(json!("steps")),
        doc(json!([1, "two", null])),
        doc(json!([{"step": 7}])),
        doc(json!([{"step": "start", "tool": "noop"}])),
        doc(json!([{"step": "start", "tool": {"kind": 1}}])),
        doc(json!([{"step": "start", "next": "end"}])),
        doc(json!([{"step": "start", "next": [{"step": "start", "when": 3}]}])),
        doc(json!([{"step": "start", "next": {"spec": {"mode": "all"}, "arcs": []}}])),
        doc(json!([{"step": "start", "tool": {"kind": "fail", "message": "{{ 'é }}"}}])),
        doc(json!([{"step": "stärt"}])),
    ];
    for document in odd {
        assert!(translate(&document).is_err(), "{document}");
    }
}

#[test]
fn a_playbook_tool_becomes_a_child_of_a_catalog_playbook() {
    let playbook = translate(&doc(json!([
        {"step": "start", "tool": {"kind": "playbook", "path": "load.one", "version": 2,
                                   "payload": {"n": "{{ workload.size }}"}}}
    ])))
    .expect("valid");
    let step = &playbook.steps[0];
    assert_eq!(step.action, "playbook");
    assert_eq!(
        serde_json::Value::Object(step.with.clone()),
        json!({"playbook": {"name": "load.one", "version": 2}, "input": {"n": "{{ input.size }}"}})
    );
    let slashed = refused(&doc(json!([
        {"step": "start", "tool": {"kind": "playbook", "path": "examples/child"}}
    ])));
    assert_eq!(slashed.path, "workflow[0].tool.path", "{slashed}");
}
