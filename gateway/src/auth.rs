//! Bearer tokens, tenants and scopes (issue 6).
//!
//! Tokens live in a TOML file (`auth_tokens_file`) as SHA-256 digests, never in clear:
//!
//! ```toml
//! [[tokens]]
//! name = "ci"                      # shown in logs instead of the token
//! tenant = "team-a"
//! scopes = ["submit", "read"]      # submit, read, admin
//! sha256 = "9f86d08…"              # printf %s "$TOKEN" | sha256sum
//! ```
//!
//! A presented token is hashed and compared with every digest in constant time. Without a
//! tokens file the API is open and every caller is the tenant `default` with every scope
//! (single-user development); the gateway says so loudly at start-up.
//! Another tenant's execution is answered exactly like a missing one (404): shards filter by
//! the caller's tenant.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::problem::{Code, Problem};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Submit, cancel and delete executions.
    Submit,
    /// Read executions, their events, listings, the catalog, routes and the topology.
    Read,
    /// Publish playbooks to the catalog, and delete their versions.
    Admin,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub tenant: String,
    scopes: Vec<Scope>,
}

impl Principal {
    /// Whether the caller holds `scope`.
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    fn open() -> Self {
        Self {
            name: "anonymous".to_owned(),
            tenant: noetl_contract::message::DEFAULT_TENANT.to_owned(),
            scopes: vec![Scope::Submit, Scope::Read, Scope::Admin],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenSetting {
    name: String,
    tenant: String,
    scopes: Vec<Scope>,
    sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenSetting>,
}

#[derive(Debug)]
struct Token {
    digest: [u8; 32],
    principal: Principal,
}

/// The gateway's tokens; `None` inside means the API is open.
#[derive(Debug, Clone)]
pub struct Auth {
    tokens: Option<Arc<Vec<Token>>>,
    /// Whether `/healthz`, `/readyz` and `/metrics` need a token too.
    pub protect_ops: bool,
}

fn digest_of(hex: &str) -> Option<[u8; 32]> {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
}

impl Auth {
    pub fn open() -> Self {
        Self {
            tokens: None,
            protect_ops: false,
        }
    }

    /// Reads and checks a tokens file.
    pub fn from_file(path: &Path, protect_ops: bool) -> anyhow::Result<Self> {
        let file: TokensFile = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .build()
            .and_then(config::Config::try_deserialize)
            .with_context(|| format!("failed to read the tokens file {}", path.display()))?;
        let mut tokens = Vec::with_capacity(file.tokens.len());
        for (i, token) in file.tokens.into_iter().enumerate() {
            let digest = digest_of(token.sha256.trim()).with_context(|| {
                format!("tokens[{i}] ({}): sha256 must be 64 hex digits", token.name)
            })?;
            anyhow::ensure!(
                !token.tenant.is_empty() && token.tenant.len() <= 128,
                "tokens[{i}] ({}): tenant must be 1 to 128 characters",
                token.name
            );
            anyhow::ensure!(
                !token.scopes.is_empty(),
                "tokens[{i}] ({}): give it at least one scope (submit, read, admin)",
                token.name
            );
            tokens.push(Token {
                digest,
                principal: Principal {
                    name: token.name,
                    tenant: token.tenant,
                    scopes: token.scopes,
                },
            });
        }
        anyhow::ensure!(!tokens.is_empty(), "{} lists no tokens", path.display());
        Ok(Self {
            tokens: Some(Arc::new(tokens)),
            protect_ops,
        })
    }

    pub fn is_open(&self) -> bool {
        self.tokens.is_none()
    }

    /// The caller a request's `Authorization` header names.
    fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, Problem> {
        if self.tokens.is_none() {
            return Ok(Principal::open());
        }
        let presented = authorization
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                Problem::new(
                    Code::Unauthorized,
                    "send a token as `Authorization: Bearer <token>`",
                )
            })?;
        self.authenticate_token(presented)
    }

    /// The caller a token names, checked exactly as the API checks a bearer token (the
    /// console's login form hands its token here).
    pub fn authenticate_token(&self, presented: &str) -> Result<Principal, Problem> {
        let Some(tokens) = &self.tokens else {
            return Ok(Principal::open());
        };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Every digest is compared, so the time taken says nothing about which one matched.
        let mut found = None;
        for token in tokens.iter() {
            if bool::from(token.digest.ct_eq(&digest)) {
                found = Some(&token.principal);
            }
        }
        found
            .cloned()
            .ok_or_else(|| Problem::new(Code::Unauthorized, "the token is not valid"))
    }
}

/// What a route needs from the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Nothing: the OpenAPI document, and the operations routes unless `protect_ops`.
    Nothing,
    /// Any valid token: the operations routes with `protect_ops`.
    Token,
    /// A valid token with this scope.
    Scope(Scope),
}

impl Auth {
    /// What a route needs: reads need `read`; submits, cancels and deleting an execution
    /// `submit`; publishing a playbook or deleting a version `admin`; `/healthz`, `/readyz` and `/metrics` a token only with `protect_ops`.
    fn need(&self, method: &Method, path: &str) -> Need {
        match (method, path) {
            (_, "/api/v1/openapi.json") => Need::Nothing,
            (_, "/healthz" | "/readyz" | "/metrics") if self.protect_ops => Need::Token,
            (_, "/healthz" | "/readyz" | "/metrics") => Need::Nothing,
            (&Method::POST, "/api/v1/playbooks") => Need::Scope(Scope::Admin),
            (&Method::DELETE, "/api/v1/playbooks/{name}/versions/{version}") => {
                Need::Scope(Scope::Admin)
            }
            (&Method::POST | &Method::DELETE, _) => Need::Scope(Scope::Submit),
            _ => Need::Scope(Scope::Read),
        }
    }
}

/// Middleware of every route: authenticates the caller when the route needs it, checks the
/// route's scope, and hands the handlers the [`Principal`].
pub async fn guard(
    State(auth): State<Auth>,
    mut request: Request,
    next: Next,
) -> Result<Response, Problem> {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let principal = match auth.need(request.method(), &path) {
        Need::Nothing => Principal::open(),
        Need::Token => auth.authenticate(header_of(&request))?,
        Need::Scope(scope) => {
            let principal = auth.authenticate(header_of(&request))?;
            if !principal.allows(scope) {
                return Err(Problem::new(
                    Code::Forbidden,
                    format!("this token lacks the {scope:?} scope this route needs"),
                ));
            }
            principal
        }
    };
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

fn header_of(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(contents: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("temp file");
        std::io::Write::write_all(&mut file, contents.as_bytes()).expect("write");
        file
    }

    fn hex(token: &str) -> String {
        Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn tokens_authenticate_by_digest_and_carry_tenant_and_scopes() {
        let tokens = file(&format!(
            "[[tokens]]\nname = \"ci\"\ntenant = \"team-a\"\nscopes = [\"read\"]\nsha256 = \"{}\"\n",
            hex("s3cret")
        ));
        let auth = Auth::from_file(tokens.path(), false).expect("valid file");
        let principal = auth
            .authenticate(Some("Bearer s3cret"))
            .expect("valid token");
        assert_eq!(
            (principal.tenant.as_str(), principal.scopes.as_slice()),
            ("team-a", &[Scope::Read][..])
        );
        for bad in [None, Some("s3cret"), Some("Bearer "), Some("Bearer wrong")] {
            assert_eq!(
                auth.authenticate(bad).expect_err("refused").code(),
                Code::Unauthorized
            );
        }
        assert!(Auth::open().authenticate(None).is_ok());
    }

    #[test]
    fn malformed_token_files_are_refused_with_the_entry_named() {
        for (contents, expected) in [
            (
                "[[tokens]]\nname = \"x\"\ntenant = \"a\"\nscopes = [\"read\"]\nsha256 = \"zz\"\n",
                "sha256",
            ),
            (
                "[[tokens]]\nname = \"x\"\ntenant = \"a\"\nscopes = []\nsha256 = \"{}\"\n",
                "scope",
            ),
            (
                "[[tokens]]\nname = \"x\"\ntenant = \"a\"\nscopes = [\"root\"]\nsha256 = \"{}\"\n",
                "tokens file",
            ),
        ] {
            let contents = contents.replace("{}", &hex("t"));
            let error = Auth::from_file(file(&contents).path(), false).expect_err("refused");
            assert!(format!("{error:#}").contains(expected), "{error:#}");
        }
    }

    #[test]
    fn routes_need_the_scope_of_what_they_do() {
        let open = Auth::open();
        let read = Need::Scope(Scope::Read);
        let submit = Need::Scope(Scope::Submit);
        for (method, path, need) in [
            (Method::GET, "/api/v1/executions/{id}", read),
            (Method::POST, "/api/v1/executions", submit),
            (Method::POST, "/api/v1/executions/{id}/cancel", submit),
            (Method::DELETE, "/api/v1/executions/{id}", submit),
            (
                Method::DELETE,
                "/api/v1/playbooks/{name}/versions/{version}",
                Need::Scope(Scope::Admin),
            ),
            (Method::POST, "/api/v1/playbooks", Need::Scope(Scope::Admin)),
            (Method::GET, "/api/v1/openapi.json", Need::Nothing),
            (Method::GET, "/metrics", Need::Nothing),
        ] {
            assert_eq!(open.need(&method, path), need, "{method} {path}");
        }
        // With `protect_ops` the operations routes need a token; the document still nothing.
        let protected = Auth {
            protect_ops: true,
            ..Auth::open()
        };
        assert_eq!(protected.need(&Method::GET, "/readyz"), Need::Token);
        let document = protected.need(&Method::GET, "/api/v1/openapi.json");
        assert_eq!(document, Need::Nothing);
    }
}
