//! The gateway's HTTP API as `noetlctl` uses it: one client that knows the base URL and the
//! bearer token, builds every URL (path segments percent-encoded), and turns the gateway's
//! problem documents into an [`Error`] that carries the exit code.

use std::fmt;
use std::time::Duration;

use noetl_contract::ExecutionId;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use url::Url;

use crate::exit;
use crate::table::{single_line, truncate};

/// How long connecting to the gateway may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole request (not a stream) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stream may stay silent: the gateway sends a keep-alive every 15 s.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of a body that is not a problem document an error message quotes.
const QUOTED_BODY_CHARS: usize = 200;

/// Why a gateway command failed; [`Error::exit_code`] says how the process exits.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command's own input is wrong (a file, a flag): nothing was sent.
    #[error("{0}")]
    Input(String),
    /// The gateway answered with a problem document.
    #[error("{problem}")]
    Problem { status: u16, problem: Problem },
    /// The gateway (or something in front of it) answered an error without a problem document.
    #[error("http_{status}: {detail}")]
    Status { status: u16, detail: String },
    /// The gateway could not be reached, or the connection broke.
    #[error("{0}")]
    Transport(String),
    /// The gateway answered something this version of noetlctl does not understand.
    #[error("unexpected answer from the gateway: {0}")]
    Unexpected(String),
}

impl Error {
    /// `2` for bad input, `4` for a 409, `3` for any other 4xx, `1` for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Input(_) => exit::USAGE,
            Error::Problem { status, .. } | Error::Status { status, .. } => {
                exit_code_for_status(*status)
            }
            Error::Transport(_) | Error::Unexpected(_) => exit::FAILED,
        }
    }

    /// Worth trying again while following an execution: the gateway or a shard is down for a
    /// moment (unreachable, 5xx, 429), as opposed to a request that will never succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport(_) => true,
            Error::Problem { status, .. } | Error::Status { status, .. } => {
                *status >= 500 || *status == StatusCode::TOO_MANY_REQUESTS.as_u16()
            }
            Error::Input(_) | Error::Unexpected(_) => false,
        }
    }
}

/// The exit code of a request the gateway refused with `status`.
pub fn exit_code_for_status(status: u16) -> u8 {
    match status {
        409 => exit::CONFLICT,
        400..=499 => exit::REFUSED,
        _ => exit::FAILED,
    }
}

/// An RFC 9457 problem document as the gateway sends it. Every field is optional on reading,
/// so a problem from a newer gateway (or a proxy) still prints something useful.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Problem {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
    /// Set when the request minted an id whose fate is unknown: look it up before retrying.
    #[serde(default)]
    pub execution_id: Option<ExecutionId>,
}

impl Problem {
    /// Parses a body as a problem document; `None` when it is not one (no `code`, no `title`).
    pub fn parse(body: &str) -> Option<Problem> {
        let problem: Problem = serde_json::from_str(body).ok()?;
        (problem.code.is_some() || problem.title.is_some()).then_some(problem)
    }
}

impl fmt::Display for Problem {
    /// `<code>: <detail>`, falling back to the title for either.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self
            .code
            .as_deref()
            .or(self.title.as_deref())
            .unwrap_or("error");
        let detail = self
            .detail
            .as_deref()
            .filter(|d| !d.is_empty())
            .or(self.title.as_deref())
            .unwrap_or("(no detail)");
        write!(f, "{code}: {}", single_line(detail))?;
        if let Some(id) = self.execution_id {
            write!(
                f,
                " (execution {id}: it may exist; `noetlctl get {id}` before retrying)"
            )?;
        }
        Ok(())
    }
}

/// The bearer token. Its `Debug` never shows it, and clap is told to hide its environment
/// value, so it cannot end up in a log, an error or `--help`.
#[derive(Clone)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<hidden>)")
    }
}

impl std::str::FromStr for Token {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Token(s.trim().to_owned()))
    }
}

/// Parses `--gateway-url`: an http or https URL (its path, if any, is kept as a prefix).
pub fn parse_gateway_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s.trim()).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err("the gateway URL must start with http:// or https://".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("the gateway URL takes no query or fragment".to_owned());
    }
    Ok(url)
}

/// A client of one gateway's `/api/v1`.
#[derive(Debug, Clone)]
pub struct Gateway {
    client: reqwest::Client,
    base: Url,
    /// The base URL as error messages show it: without a password.
    shown: String,
}

impl Gateway {
    pub fn new(base: Url, token: Option<Token>) -> Result<Self, Error> {
        let mut headers = HeaderMap::new();
        if let Some(Token(token)) = token.filter(|t| !t.0.is_empty()) {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                Error::Input(
                    "the token (--token, NOETL_TOKEN) is not a valid HTTP header value".to_owned(),
                )
            })?;
            // Sensitive: never printed by Debug, and dropped on a redirect to another host.
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("noetlctl/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(|e| {
                Error::Transport(format!("cannot build the HTTP client: {}", chain(&e)))
            })?;
        let shown = noetl_contract::shards::redact(base.as_str().trim_end_matches('/'));
        Ok(Self {
            client,
            base,
            shown,
        })
    }

    /// `{base}/api/v1/{segments…}?{query}`; each segment is percent-encoded, so a playbook
    /// name cannot add a path segment or a query.
    pub fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Url, Error> {
        api_url(&self.base, segments, query)
    }

    /// A request to the API, with the token and (unless it is a stream) the request timeout.
    pub fn request(&self, method: Method, url: Url) -> RequestBuilder {
        self.client.request(method, url).timeout(REQUEST_TIMEOUT)
    }

    /// A request without the overall timeout, for a stream that lasts as long as the execution.
    pub fn stream_request(&self, url: Url) -> RequestBuilder {
        self.client.get(url)
    }

    /// Sends the request; any answer but a 2xx becomes an [`Error`].
    pub async fn send(&self, request: RequestBuilder) -> Result<Response, Error> {
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        Err(error_from_answer(status, &body))
    }

    /// Sends the request and reads its JSON body, both as received (for `--json`) and typed.
    pub async fn json<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
    ) -> Result<(serde_json::Value, T), Error> {
        let response = self.send(request).await?;
        self.read(response).await
    }

    /// `GET {base}/api/v1/{segments…}?{query}` and its JSON body, as received and typed.
    pub async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<(serde_json::Value, T), Error> {
        let url = self.url(segments, query)?;
        self.json(self.request(Method::GET, url)).await
    }

    /// Reads a successful answer's JSON body, as received and typed.
    pub async fn read<T: DeserializeOwned>(
        &self,
        response: Response,
    ) -> Result<(serde_json::Value, T), Error> {
        let bytes = response.bytes().await.map_err(|e| self.transport(e))?;
        let raw: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Unexpected(format!("the body is not JSON: {e}")))?;
        let typed =
            serde_json::from_value(raw.clone()).map_err(|e| Error::Unexpected(e.to_string()))?;
        Ok((raw, typed))
    }

    /// Turns a reqwest error into a message that names the gateway (without a password) and the
    /// cause, but not the URL reqwest would print (it may hold a password).
    pub fn transport(&self, error: reqwest::Error) -> Error {
        let what = if error.is_connect() {
            "cannot reach the gateway"
        } else if error.is_timeout() {
            "no answer in time from the gateway"
        } else {
            "the connection to the gateway failed"
        };
        Error::Transport(format!(
            "{what} at {}: {}",
            self.shown,
            chain(&error.without_url())
        ))
    }
}

fn api_url(base: &Url, segments: &[&str], query: &[(&str, String)]) -> Result<Url, Error> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| Error::Input("the gateway URL cannot take a path".to_owned()))?
        .pop_if_empty()
        .extend(["api", "v1"])
        .extend(segments);
    if !query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (key, value) in query {
            pairs.append_pair(key, value);
        }
    }
    Ok(url)
}

/// The error for a non-2xx answer: the problem document if the body is one, else the status
/// and the start of the body.
pub fn error_from_answer(status: StatusCode, body: &str) -> Error {
    match Problem::parse(body) {
        Some(problem) => Error::Problem {
            status: status.as_u16(),
            problem,
        },
        None => {
            let reason = status.canonical_reason().unwrap_or("error");
            let quoted = single_line(body.trim());
            let detail = if quoted.is_empty() {
                reason.to_owned()
            } else {
                format!("{reason}: {}", truncate(&quoted, QUOTED_BODY_CHARS))
            };
            Error::Status {
                status: status.as_u16(),
                detail,
            }
        }
    }
}

/// An error and its causes on one line (`reqwest`'s own message is only the outermost one).
fn chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_document_prints_as_code_and_detail() {
        let body = r#"{"type":"urn:noetl:problem:invalid_playbook","title":"Playbook is invalid",
            "status":400,"code":"invalid_playbook","detail":"playbook.steps[1]: unknown action `nope`"}"#;
        let error = error_from_answer(StatusCode::BAD_REQUEST, body);
        assert_eq!(
            error.to_string(),
            "invalid_playbook: playbook.steps[1]: unknown action `nope`"
        );
        assert_eq!(error.exit_code(), exit::REFUSED);
        assert!(!error.is_transient());
    }

    #[test]
    fn a_problem_with_an_execution_id_says_to_look_it_up() {
        let body = r#"{"code":"shard_unavailable","detail":"shard 2 did not answer","status":503,
            "execution_id":"320816801799737344"}"#;
        let error = error_from_answer(StatusCode::SERVICE_UNAVAILABLE, body);
        let message = error.to_string();
        assert!(
            message.starts_with(
                "shard_unavailable: shard 2 did not answer (execution 320816801799737344"
            ),
            "{message}"
        );
        assert_eq!(error.exit_code(), exit::FAILED);
        assert!(error.is_transient());
    }

    #[test]
    fn exit_codes_follow_the_status() {
        assert_eq!(exit_code_for_status(409), exit::CONFLICT);
        assert_eq!(exit_code_for_status(404), exit::REFUSED);
        assert_eq!(exit_code_for_status(422), exit::REFUSED);
        assert_eq!(exit_code_for_status(500), exit::FAILED);
        assert_eq!(exit_code_for_status(503), exit::FAILED);
        let conflict = error_from_answer(
            StatusCode::CONFLICT,
            r#"{"code":"idempotency_conflict","detail":"the key was used with another body"}"#,
        );
        assert_eq!(conflict.exit_code(), exit::CONFLICT);
        assert_eq!(Error::Input("bad file".into()).exit_code(), exit::USAGE);
        assert_eq!(Error::Transport("down".into()).exit_code(), exit::FAILED);
    }

    #[test]
    fn a_body_that_is_not_a_problem_is_quoted_on_one_line() {
        let error = error_from_answer(
            StatusCode::BAD_GATEWAY,
            "<html>\n<body>upstream down</body>\n</html>",
        );
        assert_eq!(
            error.to_string(),
            "http_502: Bad Gateway: <html> <body>upstream down</body> </html>"
        );
        assert!(error.is_transient());
        let empty = error_from_answer(StatusCode::UNAUTHORIZED, "");
        assert_eq!(empty.to_string(), "http_401: Unauthorized");
        assert_eq!(empty.exit_code(), exit::REFUSED);
        // JSON, but not a problem document.
        assert!(Problem::parse(r#"{"error":"nope"}"#).is_none());
    }

    #[test]
    fn the_token_never_shows_in_debug() {
        let token: Token = "s3cret".parse().expect("infallible");
        assert!(!format!("{token:?}").contains("s3cret"));
        let gateway = Gateway::new(
            parse_gateway_url("http://127.0.0.1:8080").expect("valid"),
            Some(token),
        )
        .expect("client");
        assert!(!format!("{gateway:?}").contains("s3cret"));
    }

    #[test]
    fn urls_are_built_from_encoded_segments() {
        let base = parse_gateway_url("http://gw.example:8080").expect("valid");
        let url = api_url(&base, &["playbooks", "a/b?c"], &[]).expect("url");
        assert_eq!(
            url.as_str(),
            "http://gw.example:8080/api/v1/playbooks/a%2Fb%3Fc"
        );
        let prefixed = parse_gateway_url("https://example.org/noetl/").expect("valid");
        let url = api_url(
            &prefixed,
            &["executions"],
            &[
                ("labels", "env=dev,team=a b".to_owned()),
                ("limit", "10".to_owned()),
            ],
        )
        .expect("url");
        assert_eq!(
            url.as_str(),
            "https://example.org/noetl/api/v1/executions?labels=env%3Ddev%2Cteam%3Da+b&limit=10"
        );
    }

    #[test]
    fn gateway_urls_must_be_http() {
        assert!(parse_gateway_url("nats://127.0.0.1:4222").is_err());
        assert!(parse_gateway_url("127.0.0.1:8080").is_err());
        assert!(parse_gateway_url("http://h/?x=1").is_err());
        assert!(parse_gateway_url("https://h").is_ok());
    }
}
