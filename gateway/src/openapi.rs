//! The OpenAPI 3.1 document of the gateway's HTTP API, generated from the code (utoipa) and
//! served at `GET /api/v1/openapi.json`; `openapi.json` at the repository root is a copy that a
//! test keeps in step.
//!
//! Handlers carry their success answers (`#[utoipa::path]`); the problem documents each route
//! can answer with are listed once here, in [`problems`], and added to every operation by
//! status, each with its `code`s. The `Code` schema is derived from [`Code`], so it names every
//! code there is.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Ref, Schema, Type};
use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::problem::{Code, Problem};
use crate::routes::{self, executions};

/// The media type of every error answer.
pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "noetl-dispatch gateway",
        description = "The HTTP API of noetl-dispatch: submit executions of playbook DAGs, follow \
            and cancel them, delete finished ones, list them across every shard, keep a catalog of playbooks, and see \
            the cluster topology.\n\n\
            Execution ids are snowflakes (64-bit, time-ordered) written as decimal strings.\n\n\
            Every error is a problem document (RFC 9457, `application/problem+json`) with a \
            stable machine-readable `code`; see the `Problem` and `Code` schemas. Besides the \
            answers listed for each operation, any unknown path answers 404 `route_not_found` \
            and a known path with another method 405 `method_not_allowed`. A 503 carries \
            `Retry-After`.\n\n\
            Request bodies are JSON or YAML of the same shape.",
    ),
    paths(
        executions::submit,
        routes::listing::list,
        executions::get,
        executions::cancel,
        executions::delete,
        routes::events::page,
        routes::events::stream,
        routes::route::route,
        routes::topology::show,
        routes::playbooks::publish,
        routes::playbooks::list,
        routes::playbooks::latest,
        routes::playbooks::version,
        routes::playbooks::delete,
        routes::health::healthz,
        routes::health::readyz,
        metrics,
        serve,
    ),
    components(schemas(Problem, Code)),
    modifiers(&ProblemResponses),
    tags(
        (name = "executions", description = "Submit, read, follow, cancel, delete and list executions."),
        (name = "playbooks", description = "The playbook catalog: published, versioned playbooks."),
        (name = "cluster", description = "Topology and routing."),
        (name = "operations", description = "Health, readiness, metrics and this document."),
    ),
)]
pub struct ApiDoc;

/// The document as served: rendered once, on first use.
static DOCUMENT: LazyLock<String> = LazyLock::new(render);

/// Renders the document (pretty-printed; keys in a stable order).
pub fn render() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("an OpenAPI document always serializes to JSON")
}

#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "operations",
    operation_id = "openapi",
    summary = "This OpenAPI document",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", body = Object)),
)]
pub async fn serve() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

/// `/metrics` is a closure in the router; this describes it.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    summary = "Prometheus metrics",
    description = "Request counts and latencies per route, id collisions, stale-topology refusals, … \
        in the Prometheus text exposition format.",
    responses((status = 200, description = "The metrics.", body = String, content_type = "text/plain")),
)]
#[allow(dead_code)]
fn metrics() {}

/// The problem codes each operation can answer with, by (method, path).
pub fn problems(method: &str, path: &str) -> Option<&'static [Code]> {
    use Code::*;
    /// Reading one execution from its shard.
    const EXECUTION: &[Code] = &[
        InvalidExecutionId,
        InvalidRequest,
        ExecutionNotFound,
        ExecutionRetired,
        PayloadTooLarge,
        TopologyUnavailable,
        ShardUnavailable,
        ShardOverloaded,
        Internal,
    ];
    let codes: &'static [Code] = match (method, path) {
        ("post", "/api/v1/executions") => &[
            InvalidJson,
            InvalidRequest,
            InvalidPlaybook,
            TemplateBudgetExceeded,
            UnstorableValue,
            LoopTooLarge,
            PoolForbidden,
            PlaybookNotFound,
            ExecutionRetired,
            PayloadTooLarge,
            UnsupportedMediaType,
            IdempotencyKeyReused,
            TenantQuotaExceeded,
            Internal,
            BusUnavailable,
            ShardUnavailable,
            ShardOverloaded,
            TopologyUnavailable,
            TopologyStale,
            NodeLeaseUnavailable,
            ClockBehind,
            IdCollision,
        ],
        ("get", "/api/v1/executions") => &[InvalidRequest, TopologyUnavailable, Internal],
        ("get", "/api/v1/executions/{id}")
        | ("post", "/api/v1/executions/{id}/cancel")
        | ("get", "/api/v1/executions/{id}/events") => EXECUTION,
        ("delete", "/api/v1/executions/{id}") => &[
            InvalidExecutionId,
            InvalidRequest,
            ExecutionNotFound,
            ExecutionNotTerminal,
            ExecutionRetired,
            TopologyUnavailable,
            ShardUnavailable,
            ShardOverloaded,
            Internal,
        ],
        ("get", "/api/v1/executions/{id}/stream") => &[
            InvalidExecutionId,
            InvalidRequest,
            ExecutionNotFound,
            ExecutionRetired,
            PayloadTooLarge,
            StreamQuotaExceeded,
            TooManyStreams,
            TopologyUnavailable,
            ShardUnavailable,
            ShardOverloaded,
            Internal,
        ],
        ("get", "/api/v1/route/{id}") => &[
            InvalidExecutionId,
            ExecutionRetired,
            TopologyUnavailable,
            Internal,
        ],
        ("get", "/api/v1/topology") => &[TopologyUnavailable, Internal],
        ("post", "/api/v1/playbooks") => &[
            InvalidJson,
            InvalidRequest,
            InvalidPlaybook,
            PayloadTooLarge,
            UnsupportedMediaType,
            BusUnavailable,
            Internal,
        ],
        ("get", "/api/v1/playbooks") => &[BusUnavailable, Internal],
        ("get", "/api/v1/playbooks/{name}") => {
            &[InvalidRequest, PlaybookNotFound, BusUnavailable, Internal]
        }
        ("get" | "delete", "/api/v1/playbooks/{name}/versions/{version}") => {
            &[InvalidRequest, PlaybookNotFound, BusUnavailable, Internal]
        }
        ("get", "/api/v1/openapi.json" | "/healthz" | "/readyz" | "/metrics") => &[Internal],
        _ => return None,
    };
    Some(codes)
}

/// What every API route but the document itself can answer, from the gateway's guards: tokens
/// (when the gateway has them), the tenant's rate and the request deadline.
pub fn guard_problems(path: &str) -> &'static [Code] {
    if path.starts_with("/api/v1/") && path != "/api/v1/openapi.json" {
        &[
            Code::Unauthorized,
            Code::Forbidden,
            Code::RateLimited,
            Code::RequestTimeout,
        ]
    } else {
        &[]
    }
}

/// The operations of a path item, by lower-case method.
fn operations_mut(item: &mut utoipa::openapi::PathItem) -> Vec<(&'static str, &mut Operation)> {
    [
        ("get", item.get.as_mut()),
        ("put", item.put.as_mut()),
        ("post", item.post.as_mut()),
        ("delete", item.delete.as_mut()),
        ("options", item.options.as_mut()),
        ("head", item.head.as_mut()),
        ("patch", item.patch.as_mut()),
        ("trace", item.trace.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.map(|operation| (method, operation)))
    .collect()
}

/// Adds each operation's problem answers (one per status, naming its codes) and explains every
/// code in the `Code` schema.
struct ProblemResponses;

impl Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            for (method, operation) in operations_mut(item) {
                // An operation without an entry gets none; a test insists every one has one.
                let Some(codes) = problems(method, path) else {
                    continue;
                };
                // Per status, in the order of `Code::ALL`.
                let mut by_status: BTreeMap<u16, Vec<Code>> = BTreeMap::new();
                for code in Code::ALL {
                    if codes.contains(&code) || guard_problems(path).contains(&code) {
                        by_status
                            .entry(code.status().as_u16())
                            .or_default()
                            .push(code);
                    }
                }
                for (status, codes) in by_status {
                    operation.responses.responses.insert(
                        status.to_string(),
                        RefOr::T(problem_response(status, &codes)),
                    );
                }
            }
        }
        if let Some(RefOr::T(Schema::Object(schema))) = openapi
            .components
            .as_mut()
            .and_then(|components| components.schemas.get_mut("Code"))
        {
            let list: Vec<String> = Code::ALL
                .iter()
                .map(|&code| {
                    format!(
                        "- `{}` ({}): {}.",
                        code.name(),
                        code.status().as_u16(),
                        code.meaning()
                    )
                })
                .collect();
            schema.description = Some(format!(
                "Stable machine-readable error codes of the HTTP API, with the HTTP status each \
                 comes with:\n\n{}",
                list.join("\n")
            ));
        }
    }
}

/// A problem answer with `status`: the `Problem` schema, its `code` narrowed to `codes`.
fn problem_response(status: u16, codes: &[Code]) -> utoipa::openapi::Response {
    let names: Vec<String> = codes.iter().map(|&code| code.name()).collect();
    let description = codes
        .iter()
        .map(|&code| format!("`{}`: {}.", code.name(), code.meaning()))
        .collect::<Vec<_>>()
        .join(" ");
    let schema = AllOfBuilder::new()
        .item(Ref::from_schema_name("Problem"))
        .item(
            ObjectBuilder::new().property(
                "code",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(names)),
            ),
        );
    let mut response = ResponseBuilder::new().description(description).content(
        PROBLEM_JSON,
        ContentBuilder::new().schema(Some(schema)).build(),
    );
    if matches!(status, 429 | 503) {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(0)),
                )
                .description(Some("Seconds to wait before retrying."))
                .build(),
        );
    }
    response.build()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.json");

    /// The operations the document describes, as (method, path).
    fn documented() -> BTreeSet<(String, String)> {
        let document = serde_json::to_value(ApiDoc::openapi()).expect("serialize");
        let paths = document["paths"].as_object().expect("paths");
        paths
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .expect("path item")
                    .keys()
                    .map(move |method| (method.clone(), path.clone()))
            })
            .collect()
    }

    #[test]
    fn openapi_json_at_the_repository_root_is_the_generated_document() {
        let rendered = format!("{}\n", render());
        if std::env::var_os("NOETL_WRITE_OPENAPI").is_some() {
            std::fs::write(COMMITTED, &rendered).expect("write openapi.json");
            return;
        }
        let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
        assert!(
            committed == rendered,
            "openapi.json at the repository root is not the document the code generates; \
             regenerate it with `NOETL_WRITE_OPENAPI=1 cargo test -p noetl-gateway openapi` \
             and commit it"
        );
    }

    #[test]
    fn openapi_describes_every_route_of_the_router() {
        let expected: BTreeSet<(String, String)> = crate::ROUTES
            .iter()
            .map(|&(method, path)| (method.to_ascii_lowercase(), path.to_owned()))
            .collect();
        assert_eq!(
            documented(),
            expected,
            "the document and crate::ROUTES differ"
        );
    }

    #[test]
    fn openapi_routes_list_matches_the_router_code() {
        assert_eq!(
            routes_in_router_source(include_str!("lib.rs")),
            crate::ROUTES
                .iter()
                .map(|&(method, path)| (method.to_ascii_lowercase(), path.to_owned()))
                .collect::<BTreeSet<_>>(),
            "the routes `router` registers and crate::ROUTES differ: keep ROUTES (and the \
             OpenAPI document) in step with the router"
        );
    }

    /// The (method, path) pairs `fn router` registers, read from its source: `.route("…", …)`
    /// calls before `.nest("/api/v1", api)` are under `/api/v1`, later ones at the root.
    fn routes_in_router_source(source: &str) -> BTreeSet<(String, String)> {
        let start = source.find("fn router(").expect("lib.rs has fn router");
        let body = &source[start..];
        let end = body.find("\n}\n").expect("fn router ends");
        let body = &body[..end];
        let nest = body
            .find(".nest(\"/api/v1\", api)")
            .expect("the API is nested");
        let mut routes = BTreeSet::new();
        let mut rest = body;
        let mut offset = 0;
        while let Some(at) = rest.find(".route(") {
            let call_start = at + ".route(".len();
            let call = &rest[call_start..];
            let mut depth = 1;
            let call_end = call
                .char_indices()
                .find_map(|(i, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    (depth == 0).then_some(i)
                })
                .expect("balanced parentheses");
            let call = &call[..call_end];
            let quoted = call.split('"').nth(1).expect("a route path literal");
            let prefix = if offset + at < nest { "/api/v1" } else { "" };
            for method in ["get", "post", "put", "delete", "patch"] {
                let token = format!("{method}(");
                let registered = call.match_indices(&token).any(|(i, _)| {
                    i == 0
                        || !call.as_bytes()[i - 1].is_ascii_alphanumeric()
                            && call.as_bytes()[i - 1] != b'_'
                });
                if registered {
                    routes.insert((method.to_owned(), format!("{prefix}{quoted}")));
                }
            }
            offset += call_start + call_end;
            rest = &rest[call_start + call_end..];
        }
        routes
    }

    #[test]
    fn every_operation_lists_its_problems_as_problem_json() {
        let document = serde_json::to_value(ApiDoc::openapi()).expect("serialize");
        for (method, path) in documented() {
            assert!(
                problems(&method, &path).is_some(),
                "{method} {path} has no entry in openapi::problems"
            );
            let responses = &document["paths"][&path][&method]["responses"];
            let internal = &responses["500"]["content"][PROBLEM_JSON]["schema"];
            assert!(
                internal.is_object(),
                "{method} {path} does not document its 500"
            );
        }
        let submit = &document["paths"]["/api/v1/executions"]["post"]["responses"];
        let codes = &submit["503"]["content"][PROBLEM_JSON]["schema"]["allOf"][1]["properties"]
            ["code"]["enum"];
        assert!(
            codes
                .as_array()
                .is_some_and(|codes| codes.contains(&serde_json::json!("topology_stale"))),
            "{submit}"
        );
        assert!(submit["503"]["headers"]["Retry-After"].is_object());
    }

    #[test]
    fn the_code_schema_names_every_code() {
        let document = serde_json::to_value(ApiDoc::openapi()).expect("serialize");
        let derived: Vec<String> = document["components"]["schemas"]["Code"]["enum"]
            .as_array()
            .expect("Code is an enum")
            .iter()
            .map(|v| v.as_str().expect("a string").to_owned())
            .collect();
        let listed: Vec<String> = Code::ALL.iter().map(|&code| code.name()).collect();
        assert_eq!(
            derived, listed,
            "Code::ALL must list every variant of Code, in order"
        );
        let problem = &document["components"]["schemas"]["Problem"];
        assert_eq!(
            problem["properties"]["code"]["$ref"],
            "#/components/schemas/Code"
        );
    }

    #[test]
    fn playbook_limits_in_the_document_are_the_contracts() {
        use noetl_contract::playbook::{MAX_NAME_LEN, MAX_RETRY_ATTEMPTS, MAX_STEPS};
        let document = serde_json::to_value(ApiDoc::openapi()).expect("serialize");
        let schemas = &document["components"]["schemas"];
        let name = format!("^[A-Za-z0-9_.-]{{1,{MAX_NAME_LEN}}}$");
        assert_eq!(schemas["Playbook"]["properties"]["name"]["pattern"], name);
        assert_eq!(schemas["Step"]["properties"]["name"]["pattern"], name);
        assert_eq!(
            schemas["CatalogReference"]["properties"]["name"]["pattern"],
            name
        );
        for path in [
            "/api/v1/playbooks/{name}",
            "/api/v1/playbooks/{name}/versions/{version}",
        ] {
            let parameter = &document["paths"][path]["get"]["parameters"][0];
            assert_eq!(parameter["name"], "name");
            assert_eq!(parameter["schema"]["pattern"], name, "{path}");
        }
        assert_eq!(
            schemas["Playbook"]["properties"]["steps"]["maxItems"],
            MAX_STEPS
        );
        assert_eq!(
            schemas["Retry"]["properties"]["max_attempts"]["maximum"],
            MAX_RETRY_ATTEMPTS
        );
    }

    #[test]
    fn every_reference_in_the_document_resolves() {
        fn walk(value: &serde_json::Value, refs: &mut Vec<String>) {
            match value {
                serde_json::Value::Object(map) => {
                    if let Some(serde_json::Value::String(target)) = map.get("$ref") {
                        refs.push(target.clone());
                    }
                    map.values().for_each(|v| walk(v, refs));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, refs)),
                _ => {}
            }
        }
        let document = serde_json::to_value(ApiDoc::openapi()).expect("serialize");
        let mut refs = Vec::new();
        walk(&document, &mut refs);
        assert!(!refs.is_empty());
        for target in refs {
            let pointer = target.strip_prefix('#').expect("a local reference");
            assert!(
                document.pointer(pointer).is_some(),
                "{target} does not resolve"
            );
        }
    }

    #[test]
    fn execution_ids_are_decimal_strings() {
        let document = serde_json::to_value(ApiDoc::openapi()).expect("serialize");
        let id = &document["components"]["schemas"]["ExecutionId"];
        assert_eq!(id["type"], "string");
        assert_eq!(id["pattern"], "^[0-9]+$");
        assert_eq!(document["openapi"], "3.1.0");
    }
}
