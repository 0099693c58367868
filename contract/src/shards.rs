//! `NOETL_SHARDS` (wiki/spec.md §3.4): the shard databases by position, entry *i* is shard *i*.
//!
//! Each comma-separated entry is a `postgres://` URL or NoETL's key/value form
//! `host=…;port=…;user=…;password=…;database=…`. Errors name the entry and never echo a password.

use std::fmt;

use percent_encoding::percent_decode_str;
use secrecy::{ExposeSecret, SecretString};

use crate::routing::{ShardCount, ShardId};

const DEFAULT_PORT: u16 = 5432;
const DEFAULT_DATABASE: &str = "noetl";
/// Connection settings accepted besides host, port, user, password and database.
const EXTRA_SETTINGS: [&str; 3] = ["sslmode", "sslrootcert", "application_name"];

/// A malformed `NOETL_SHARDS` value. The entry is shown with its password masked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("NOETL_SHARDS is empty: list one database per shard, separated by commas")]
    Empty,
    #[error("NOETL_SHARDS entry {index} ({entry}): {reason}")]
    Entry {
        index: usize,
        entry: String,
        reason: String,
    },
}

/// Connection details of one shard database. `Debug` and `Display` never show the password.
#[derive(Debug, Clone)]
pub struct ShardDsn {
    pub shard: ShardId,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<SecretString>,
    pub database: String,
    /// Extra settings among `sslmode`, `sslrootcert`, `application_name`.
    pub settings: Vec<(String, String)>,
}

impl fmt::Display for ShardDsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "postgres://{}@{}:{}/{}",
            self.user, self.host, self.port, self.database
        )
    }
}

impl PartialEq for ShardDsn {
    fn eq(&self, other: &Self) -> bool {
        let password = |d: &Self| d.password.as_ref().map(|p| p.expose_secret().to_owned());
        self.shard == other.shard
            && self.host == other.host
            && self.port == other.port
            && self.user == other.user
            && password(self) == password(other)
            && self.database == other.database
            && self.settings == other.settings
    }
}

/// The parsed `NOETL_SHARDS`: one database per shard, in shard order.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardMap {
    shards: Vec<ShardDsn>,
}

impl ShardMap {
    pub fn parse(value: &str) -> Result<Self, Error> {
        if value.trim().is_empty() {
            return Err(Error::Empty);
        }
        let shards = value
            .split(',')
            .enumerate()
            .map(|(index, entry)| {
                let shard = ShardId::new(u32::try_from(index).map_err(|_| Error::Entry {
                    index,
                    entry: redact(entry),
                    reason: "too many shards".into(),
                })?);
                parse_entry(shard, entry.trim()).map_err(|reason| Error::Entry {
                    index,
                    entry: redact(entry.trim()),
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { shards })
    }

    pub fn count(&self) -> ShardCount {
        let len = u32::try_from(self.shards.len()).expect("parse caps the entry count at u32");
        ShardCount::new(len).expect("parse rejects an empty list")
    }

    pub fn get(&self, shard: ShardId) -> Option<&ShardDsn> {
        self.shards.get(shard.get() as usize)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ShardDsn> {
        self.shards.iter()
    }
}

fn parse_entry(shard: ShardId, entry: &str) -> Result<ShardDsn, String> {
    if entry.is_empty() {
        return Err("empty entry (a stray comma?)".into());
    }
    if entry.starts_with("postgres://") || entry.starts_with("postgresql://") {
        parse_url(shard, entry)
    } else if entry.contains('=') {
        parse_key_values(shard, entry)
    } else {
        Err("expected a postgres:// URL or host=…;user=…[;port=…;password=…;database=…]".into())
    }
}

fn parse_url(shard: ShardId, entry: &str) -> Result<ShardDsn, String> {
    let url = url::Url::parse(entry).map_err(|e| format!("not a valid URL: {e}"))?;
    let decode = |s: &str, what: &str| {
        percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| format!("the {what} is not valid UTF-8 once percent-decoded"))
    };
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("missing host")?;
    let user = decode(url.username(), "user")?;
    if user.is_empty() {
        return Err("missing user (postgres://USER:PASSWORD@HOST:PORT/DATABASE)".into());
    }
    let password = url
        .password()
        .map(|p| decode(p, "password"))
        .transpose()?
        .map(SecretString::from);
    let database = match url.path().trim_start_matches('/') {
        "" => DEFAULT_DATABASE.to_owned(),
        path => decode(path, "database")?,
    };
    let mut settings = Vec::new();
    for (key, value) in url.query_pairs() {
        if !EXTRA_SETTINGS.contains(&key.as_ref()) {
            return Err(format!(
                "unknown setting {key:?} (accepted: {})",
                EXTRA_SETTINGS.join(", ")
            ));
        }
        settings.push((key.into_owned(), value.into_owned()));
    }
    Ok(ShardDsn {
        shard,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port: url.port().unwrap_or(DEFAULT_PORT),
        user,
        password,
        database,
        settings,
    })
}

fn parse_key_values(shard: ShardId, entry: &str) -> Result<ShardDsn, String> {
    let (mut host, mut port, mut user, mut password, mut database) = (None, None, None, None, None);
    let mut settings = Vec::new();
    for pair in entry.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("expected key=value, got {:?}", redact_pair(pair)))?;
        let (key, value) = (key.trim(), value.trim());
        let slot = match key {
            "host" => &mut host,
            "port" => &mut port,
            "user" => &mut user,
            "password" => &mut password,
            "database" => &mut database,
            _ if EXTRA_SETTINGS.contains(&key) => {
                settings.push((key.to_owned(), value.to_owned()));
                continue;
            }
            _ => {
                return Err(format!(
                    "unknown key {key:?} (accepted: host, port, user, password, database, {})",
                    EXTRA_SETTINGS.join(", ")
                ))
            }
        };
        if slot.replace(value.to_owned()).is_some() {
            return Err(format!("key {key:?} is given twice"));
        }
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("port {p:?} is not a number between 1 and 65535"))?,
    };
    Ok(ShardDsn {
        shard,
        host: host.filter(|h| !h.is_empty()).ok_or("missing host=")?,
        port,
        user: user.filter(|u| !u.is_empty()).ok_or("missing user=")?,
        password: password.map(SecretString::from),
        database: database
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| DEFAULT_DATABASE.to_owned()),
        settings,
    })
}

/// Masks the password of an entry of either form, even when the entry does not parse; also
/// fit for any URL with userinfo (a NATS URL, say).
pub fn redact(entry: &str) -> String {
    if let Some((scheme, rest)) = entry.split_once("://") {
        // The userinfo ends at the last '@' before the path; a password may itself contain '@'.
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            let user = rest[..at].split(':').next().unwrap_or_default();
            let masked = if rest[..at].contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            return format!("{scheme}://{masked}{}", &rest[at..]);
        }
        return entry.to_owned();
    }
    entry
        .split(';')
        .map(redact_pair)
        .collect::<Vec<_>>()
        .join(";")
}

fn redact_pair(pair: &str) -> String {
    match pair.split_once('=') {
        Some((key, _)) if key.trim().eq_ignore_ascii_case("password") => format!("{key}=***"),
        _ if pair.to_ascii_lowercase().contains("password") => "***".to_owned(),
        _ => pair.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_one(value: &str) -> ShardDsn {
        let map = ShardMap::parse(value).expect("valid NOETL_SHARDS");
        assert_eq!(map.count().get(), 1);
        map.get(ShardId::new(0)).expect("shard 0").clone()
    }

    fn error_text(value: &str) -> String {
        ShardMap::parse(value)
            .expect_err("should be rejected")
            .to_string()
    }

    #[test]
    fn url_form_with_every_part() {
        let dsn = parse_one("postgres://noetl:s%40cret@db0.internal:6543/shard0?sslmode=require");
        assert_eq!(dsn.host, "db0.internal");
        assert_eq!(dsn.port, 6543);
        assert_eq!(dsn.user, "noetl");
        assert_eq!(
            dsn.password.as_ref().map(|p| p.expose_secret()),
            Some("s@cret")
        );
        assert_eq!(dsn.database, "shard0");
        assert_eq!(dsn.settings, vec![("sslmode".into(), "require".into())]);
        assert_eq!(dsn.to_string(), "postgres://noetl@db0.internal:6543/shard0");
    }

    #[test]
    fn key_value_form_with_defaults() {
        let dsn = parse_one("host=10.0.0.5; user=noetl; password=pw");
        assert_eq!(
            (dsn.host.as_str(), dsn.port, dsn.database.as_str()),
            ("10.0.0.5", 5432, "noetl")
        );
        assert_eq!(dsn.password.as_ref().map(|p| p.expose_secret()), Some("pw"));
    }

    #[test]
    fn mixed_forms_are_numbered_by_position() {
        let map = ShardMap::parse(
            "postgres://a@h0/d0,host=h1;port=5433;user=b;password=x;database=d1, postgres://c@h2/d2",
        )
        .expect("valid");
        assert_eq!(map.count().get(), 3);
        let hosts: Vec<_> = map
            .iter()
            .map(|d| (d.shard.get(), d.host.clone()))
            .collect();
        assert_eq!(
            hosts,
            vec![(0, "h0".into()), (1, "h1".into()), (2, "h2".into())]
        );
    }

    #[test]
    fn errors_name_the_entry_and_never_print_the_password() {
        let cases = [
            (
                "postgres://a@h0/d0,host=h1;user=u;password=hunter2;colour=blue",
                1,
                "unknown key",
            ),
            ("postgres://a:hunter2@/d0", 0, "host"),
            (
                "postgres://a@h/d,host=h;password=hunter2",
                1,
                "missing user",
            ),
            ("host=h;user=u;password=hunter2;port=seventy", 0, "port"),
            ("postgres://a:hunter2@h/d?sslcert=x", 0, "unknown setting"),
            ("postgres://a@h/d,", 1, "empty entry"),
            ("mysql://root:hunter2@h/d", 0, "expected a postgres:// URL"),
            (
                "host=h;user=u;password=hunter2;password=hunter3",
                0,
                "twice",
            ),
        ];
        for (value, index, reason) in cases {
            let text = error_text(value);
            assert!(text.contains(&format!("entry {index} ")), "{text}");
            assert!(text.contains(reason), "{text}");
            assert!(!text.contains("hunter"), "password leaked: {text}");
        }
    }

    #[test]
    fn debug_output_hides_the_password() {
        let dsn = parse_one("postgres://u:hunter2@h/d");
        assert!(!format!("{dsn:?}").contains("hunter2"));
        assert!(!dsn.to_string().contains("hunter2"));
    }

    #[test]
    fn empty_value_is_rejected() {
        assert_eq!(ShardMap::parse("  "), Err(Error::Empty));
    }
}
