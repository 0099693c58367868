//! The web console at `/ui` (wiki/console.md): server-rendered pages (maud, which escapes every
//! string) over the API's own handlers, so the tenant rules are the API's, plus one small script
//! for the live parts.
//!
//! - [`session`]: sessions, their cookies and CSRF tokens; [`login`]: the login form, logout,
//!   and the middleware that finds the session of every page.
//! - [`layout`]: the frame of every page, the assets, errors as pages.
//! - [`executions`], [`execution`] (with [`dag`]), [`catalog`], [`topology`]: the pages.

pub mod catalog;
pub mod dag;
pub mod execution;
pub mod executions;
pub mod layout;
pub mod login;
pub mod session;
pub mod topology;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::auth::Auth;
use crate::limits::{self, RateLimit};
use crate::problem::{Code, Problem};
use crate::state::AppState;
use layout::UiError;
use session::Sessions;

/// The Content-Security-Policy of every console response: nothing inline, nothing from
/// elsewhere.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; \
    form-action 'self'";

/// The console's routes, under `/ui`.
pub fn router(state: Arc<AppState>, auth: Auth, rate: RateLimit) -> Router {
    let sessions = Sessions::new(auth);
    let pages = Router::new()
        .route("/ui/executions", get(executions::list))
        .route("/ui/executions/{id}", get(execution::show))
        .route("/ui/executions/{id}/cancel", post(execution::cancel))
        .route("/ui/executions/{id}/stream", get(execution::stream))
        .route("/ui/catalog", get(catalog::list))
        .route("/ui/catalog/{name}", get(catalog::show))
        .route("/ui/catalog/{name}/run", post(catalog::run))
        .route("/ui/topology", get(topology::show))
        .route(
            "/ui/logout",
            post(login::logout).with_state(sessions.clone()),
        )
        // The later layer runs first: the session names the tenant the rate is counted for.
        .route_layer(middleware::from_fn_with_state(rate, limits::per_tenant))
        .route_layer(middleware::from_fn_with_state(
            sessions.clone(),
            login::require,
        ))
        .with_state(state);
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/executions") }))
        .route("/ui/login", get(login::login_form).post(login::login))
        .with_state(sessions)
        .route("/ui/assets/{file}", get(layout::asset))
        .merge(pages)
        .layer(middleware::from_fn(guard_headers))
}

/// Middleware of every console route: refuses a POST another site started (the browser says
/// so in `Sec-Fetch-Site`; the CSRF token is checked besides), and sets the security headers.
async fn guard_headers(request: Request, next: Next) -> Response {
    let foreign = request
        .headers()
        .get("sec-fetch-site")
        .is_some_and(|site| site != "same-origin" && site != "none");
    if request.method() == Method::POST && foreign {
        return UiError(Problem::new(
            Code::Forbidden,
            "the console accepts forms only from its own pages",
        ))
        .into_response();
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
