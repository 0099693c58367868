//! The console's sessions: the login form trades an API token for a session cookie.
//!
//! The cookie holds a random 256-bit session id, never the token. The gateway keeps, in memory,
//! the SHA-256 of each id with the caller it stands for (tenant and scopes, as the token
//! named them), a CSRF token for the session's forms, and an expiry. A session lives
//! [`SESSION_TTL`] from its login; at most [`MAX_SESSIONS`] are kept, and a login beyond that
//! evicts the one closest to expiring. Sessions are per gateway: behind several gateways, a
//! console user sticks to one or logs in again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::{Auth, Principal};
use crate::problem::{Code, Problem};
use crate::state::AppState;

/// How long a session lives after its login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);
/// The most sessions a gateway keeps; a login beyond it evicts the one closest to expiring.
pub const MAX_SESSIONS: usize = 10_000;
const COOKIE: &str = "noetl_session";

/// Who asks for a console page: the state, and the caller and session
/// [`super::login::require`] found.
#[derive(Debug)]
pub struct Caller {
    pub state: Arc<AppState>,
    pub principal: Principal,
    pub session: Session,
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Problem> {
        let principal = parts.extensions.get::<Principal>().cloned();
        let session = parts.extensions.get::<Session>().cloned();
        match (principal, session) {
            (Some(principal), Some(session)) => Ok(Self {
                state: Arc::clone(state),
                principal,
                session,
            }),
            _ => Err(Problem::new(Code::Internal, "internal error")),
        }
    }
}

/// What a session stands for; handlers find it in the request's extensions.
#[derive(Debug, Clone)]
pub struct Session {
    /// The token every form of this session carries (`csrf`), checked on every POST.
    pub csrf: String,
}

impl Session {
    /// Refuses a form whose CSRF token is not this session's.
    pub fn check(&self, presented: &str) -> Result<(), Problem> {
        if bool::from(self.csrf.as_bytes().ct_eq(presented.as_bytes())) {
            Ok(())
        } else {
            Err(Problem::new(
                Code::Forbidden,
                "the form's CSRF token does not belong to this session; reload the page and retry",
            ))
        }
    }
}

#[derive(Debug)]
struct Entry {
    principal: Principal,
    session: Session,
    expires: Instant,
}

/// The sessions of this gateway and the tokens they were opened with.
#[derive(Debug, Clone)]
pub struct Sessions {
    pub(super) auth: Auth,
    entries: Arc<Mutex<HashMap<[u8; 32], Entry>>>,
}

/// 32 random bytes as hex.
pub fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn key_of(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    pub fn new(auth: Auth) -> Self {
        Self {
            auth,
            entries: Arc::default(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a session for `principal`; returns its id (the cookie's value).
    pub(super) fn open(&self, principal: Principal, now: Instant) -> String {
        let id = random_hex();
        let mut entries = self.entries();
        // Expired sessions are dropped when they are looked up, or here once the cap is reached.
        if entries.len() >= MAX_SESSIONS {
            entries.retain(|_, entry| entry.expires > now);
        }
        if entries.len() >= MAX_SESSIONS {
            if let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, entry)| entry.expires)
                .map(|(key, _)| *key)
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(
            key_of(&id),
            Entry {
                principal,
                session: Session { csrf: random_hex() },
                expires: now + SESSION_TTL,
            },
        );
        id
    }

    pub(super) fn find(&self, id: &str, now: Instant) -> Option<(Principal, Session)> {
        let key = key_of(id);
        let mut entries = self.entries();
        match entries.get(&key) {
            Some(entry) if entry.expires > now => {
                Some((entry.principal.clone(), entry.session.clone()))
            }
            Some(_) => {
                entries.remove(&key);
                None
            }
            None => None,
        }
    }

    pub(super) fn close(&self, id: &str) {
        self.entries().remove(&key_of(id));
    }
}

pub(super) fn cookie_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

pub(super) fn set_cookie(value: &str, max_age: u64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}"
    ))
    .expect("a cookie of hex digits is a valid header")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_are_bounded() {
        let sessions = Sessions::new(Auth::open());
        let principal = || {
            Auth::open()
                .authenticate_token("anything")
                .expect("open auth")
        };
        let now = Instant::now();
        let id = sessions.open(principal(), now);
        assert!(sessions.find(&id, now).is_some());
        assert!(sessions.find("not-a-session", now).is_none());
        assert!(sessions.find(&id, now + SESSION_TTL).is_none(), "expired");
        let first = sessions.open(principal(), now);
        for i in 1..MAX_SESSIONS {
            sessions.open(principal(), now + Duration::from_millis(i as u64));
        }
        assert_eq!(sessions.entries().len(), MAX_SESSIONS);
        sessions.open(principal(), now + Duration::from_secs(1));
        assert_eq!(sessions.entries().len(), MAX_SESSIONS);
        assert!(
            sessions.find(&first, now).is_none(),
            "the oldest was evicted"
        );
    }

    #[test]
    fn csrf_tokens_are_checked() {
        let session = Session { csrf: random_hex() };
        assert!(session.check(&session.csrf.clone()).is_ok());
        assert!(session.check("").is_err());
        assert!(session.check(&random_hex()).is_err());
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; noetl_session=abc; b=2"),
        );
        assert_eq!(cookie_of(&headers), Some("abc"));
    }
}
