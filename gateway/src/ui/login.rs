//! The login form (`GET`/`POST /ui/login`), logout (`POST /ui/logout`), and the middleware that
//! finds the session of every other console route.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::html;
use serde::Deserialize;

use super::layout::{page, UiError};
use super::session::{cookie_of, set_cookie, Session, Sessions, SESSION_TTL};
use crate::auth::Scope;
use crate::problem::{Code, Problem};

/// Middleware of every console route but the login form: finds the session (a page asked
/// without one is sent to the login form), checks the scope the route needs (`read` to look,
/// `submit` to cancel or run), and hands the handlers the [`Principal`] and [`Session`].
pub async fn require(
    State(sessions): State<Sessions>,
    mut request: Request,
    next: Next,
) -> Result<Response, UiError> {
    let found = cookie_of(request.headers()).and_then(|id| sessions.find(id, Instant::now()));
    let Some((principal, session)) = found else {
        if request.method() == Method::GET {
            return Ok(Redirect::to("/ui/login").into_response());
        }
        return Err(Problem::new(
            Code::Unauthorized,
            "the session expired or does not exist; log in again",
        )
        .into());
    };
    let scope = match (request.method(), request.uri().path()) {
        (&Method::POST, "/ui/logout") => None,
        (&Method::POST, _) => Some(Scope::Submit),
        _ => Some(Scope::Read),
    };
    if let Some(scope) = scope.filter(|scope| !principal.allows(*scope)) {
        return Err(Problem::new(
            Code::Forbidden,
            format!("this session's token lacks the {scope:?} scope this needs"),
        )
        .into());
    }
    request.extensions_mut().insert(principal);
    request.extensions_mut().insert(session);
    Ok(next.run(request).await)
}

fn login_page(failure: Option<&str>) -> maud::Markup {
    page(
        "Log in",
        None,
        html! {
            h1 { "Log in to the noetl-dispatch console" }
            @if let Some(failure) = failure {
                p.alert role="alert" { (failure) }
            }
            form method="post" action="/ui/login" {
                label for="token" { "API token" }
                input #token type="password" name="token" autocomplete="off" required;
                button type="submit" { "Log in" }
            }
            p { "The token is checked as the API checks a bearer token; the console then uses a session cookie, never the token." }
        },
    )
}

pub async fn login_form() -> maud::Markup {
    login_page(None)
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

impl std::fmt::Debug for LoginForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginForm { token: <redacted> }")
    }
}

pub async fn login(State(sessions): State<Sessions>, Form(form): Form<LoginForm>) -> Response {
    let token = form.token.trim();
    let principal = if token.is_empty() {
        Err(Problem::new(Code::Unauthorized, "enter a token"))
    } else {
        sessions.auth.authenticate_token(token)
    };
    match principal {
        Ok(principal) => {
            tracing::info!(token = %principal.name, tenant = %principal.tenant, "console login");
            let id = sessions.open(principal, Instant::now());
            let mut response = Redirect::to("/ui/executions").into_response();
            response
                .headers_mut()
                .insert(header::SET_COOKIE, set_cookie(&id, SESSION_TTL.as_secs()));
            response
        }
        Err(problem) => (
            problem.code().status(),
            login_page(Some("That token is not valid.")),
        )
            .into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    pub csrf: String,
}

pub async fn logout(
    State(sessions): State<Sessions>,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, UiError> {
    session.check(&form.csrf)?;
    if let Some(id) = cookie_of(&headers) {
        sessions.close(id);
    }
    let mut response = Redirect::to("/ui/login").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie("", 0));
    Ok(response)
}
