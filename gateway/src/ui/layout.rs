//! The frame every console page shares (head, navigation, logout form), the assets it links,
//! and errors shown as pages. Every string reaches the HTML through maud, which escapes it.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};
use sha2::{Digest, Sha256};

use super::session::Session;
use crate::problem::Problem;

const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

/// An asset's file name with its content's hash in it, so it can be cached for good.
fn hashed(stem: &str, ext: &str, content: &str) -> String {
    let digest = Sha256::digest(content.as_bytes());
    let hash: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("{stem}.{hash}.{ext}")
}

static SCRIPT_NAME: LazyLock<String> = LazyLock::new(|| hashed("console", "js", SCRIPT));
static STYLE_NAME: LazyLock<String> = LazyLock::new(|| hashed("console", "css", STYLE));

/// `GET /ui/assets/{file}`: the script and the style sheet, built into the binary.
pub async fn asset(Path(file): Path<String>) -> Response {
    let (content, kind) = if file == *SCRIPT_NAME {
        (SCRIPT, "text/javascript; charset=utf-8")
    } else if file == *STYLE_NAME {
        (STYLE, "text/css; charset=utf-8")
    } else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
        ],
        content,
    )
        .into_response()
}

/// A whole page: `session` is `None` on the login form (no navigation, no logout).
pub fn page(title: &str, session: Option<&Session>, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · noetl-dispatch" }
                // No favicon request (its 404 would be a console error).
                link rel="icon" href="data:,";
                link rel="stylesheet" href={ "/ui/assets/" (*STYLE_NAME) };
                script defer src={ "/ui/assets/" (*SCRIPT_NAME) } {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                @if let Some(session) = session {
                    header {
                        nav aria-label="Console" {
                            a href="/ui/executions" { "Executions" }
                            a href="/ui/catalog" { "Catalog" }
                            a href="/ui/topology" { "Shards and topology" }
                        }
                        form.logout method="post" action="/ui/logout" {
                            (csrf(session))
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main #main tabindex="-1" { (main) }
            }
        }
    }
}

/// The hidden field every POST form of a session carries.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// A status as a badge the style sheet colours by `data-status`.
pub fn badge(status: &str) -> Markup {
    html! { span.badge data-status=(status) { (status) } }
}

/// JSON, indented, for a `<pre>`.
pub fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// An API problem shown as a page, with its status.
#[derive(Debug)]
pub struct UiError(pub Problem);

impl From<Problem> for UiError {
    fn from(problem: Problem) -> Self {
        Self(problem)
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let code = self.0.code();
        let body = page(
            code.title(),
            None,
            html! {
                h1 { (code.title()) }
                p role="alert" { (self.0.detail()) }
                p { a href="/ui/executions" { "Back to the executions" } }
            },
        );
        (code.status(), body).into_response()
    }
}
