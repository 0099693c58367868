//! The one place that talks to NATS, shared by every process.
//!
//! - [`connect`]: a client that retries the initial connection and reconnects forever.
//! - [`request`] / [`respond`]: typed request/reply with the [`Reply`] envelope of the contract.
//! - [`topology`]: the topology document in its JetStream key-value bucket.
//! - [`nodes`]: gateway node-id leases in their key-value bucket.
//! - [`catalog`]: the playbook catalog in its key-value bucket.
//! - [`idempotency`]: idempotency keys in their key-value bucket.
//! - [`commands`]: the JetStream stream of step commands and the worker pools' consumers.
//!
//! Subjects come from `noetl_contract::subject`; nothing here builds one by hand.

pub mod catalog;
pub mod commands;
pub mod idempotency;
pub mod nodes;
pub mod topology;
pub mod trace;

use std::time::Duration;

use bytes::Bytes;
use noetl_contract::message::{Reply, WireError, WireErrorCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;

pub use async_nats::{Client, Message, Subscriber};

/// Failures of NATS plumbing that callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to connect to NATS: {0}")]
    Connect(String),
    #[error("no server is subscribed to {subject}")]
    NoResponders { subject: String },
    #[error("no reply on {subject} within {timeout:?}")]
    TimedOut { subject: String, timeout: Duration },
    #[error("the shard answered {}: {}", serde_json::to_string(&.0.code).unwrap_or_default(), .0.message)]
    Remote(WireError),
    #[error("malformed message on {subject}: {reason}")]
    Decode { subject: String, reason: String },
    /// A compare-and-set lost: someone else changed the key first.
    #[error("{0}")]
    Conflict(String),
    #[error("NATS: {0}")]
    Transport(String),
    /// The message is over the connected server's `max_payload`; it was not sent, so the
    /// server did not close the connection over it (see [`check_size`]).
    #[error(
        "a message of {size} bytes for {subject} is over NATS max_payload ({max_payload} bytes)"
    )]
    TooLarge {
        subject: String,
        size: usize,
        max_payload: usize,
    },
}

/// The size of a message's headers on the wire (`NATS/1.0\r\n`, each `name: value\r\n`,
/// and the closing `\r\n`), which nats-server counts against `max_payload` with the payload.
pub fn headers_size(headers: &async_nats::HeaderMap) -> usize {
    let lines: usize = headers
        .iter()
        .map(|(name, values)| {
            values
                .iter()
                .map(|value| name.to_string().len() + value.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum();
    if lines == 0 {
        0
    } else {
        lines + 12
    }
}

/// The one size check of every message this process sends: refuses a message (payload and
/// headers) over the connected server's `max_payload`, which nats-server would answer by
/// closing the sender's connection (async-nats checks it only in a plain `publish`, not in a
/// request or a JetStream publish). Before the first connection the limit is unknown (0) and
/// nothing is refused.
pub fn check_size(client: &Client, subject: &str, size: usize) -> Result<(), Error> {
    let max_payload = max_payload(client);
    if max_payload == 0 || size <= max_payload {
        return Ok(());
    }
    Err(Error::TooLarge {
        subject: subject.to_owned(),
        size,
        max_payload,
    })
}

/// The connected server's `max_payload` (0 before the first connection).
pub fn max_payload(client: &Client) -> usize {
    client.server_info().max_payload
}

/// The wall clock in Unix milliseconds, the time base of ids and topology epochs.
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// How to reach NATS.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Without credentials: they come from [`NatsSecurity`], so the URL can be logged.
    pub url: String,
    /// Shown in NATS monitoring (`noetl-gateway`, `noetl-server`, …).
    pub client_name: String,
    pub security: NatsSecurity,
}

/// NATS credentials, TLS and JetStream replicas: the `nats_*` settings every binary shares
/// (flattened into its settings, so `NOETL_NATS_USER`, `NOETL_NATS_PASSWORD`,
/// `NOETL_NATS_CREDS_FILE`, `NOETL_NATS_TLS_CA_FILE`, `NOETL_NATS_TLS_REQUIRED`,
/// `NOETL_NATS_REPLICAS`, `NOETL_NATS_INBOX_PREFIX`). The password never prints.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct NatsSecurity {
    #[serde(deserialize_with = "lenient_text")]
    pub nats_user: Option<String>,
    #[serde(deserialize_with = "lenient_secret")]
    pub nats_password: Option<secrecy::SecretString>,
    /// A `.creds` file (JWT and nkey seed), instead of user and password.
    pub nats_creds_file: Option<std::path::PathBuf>,
    /// A PEM file of the CA that signed the server's certificate (implies TLS).
    pub nats_tls_ca_file: Option<std::path::PathBuf>,
    pub nats_tls_required: bool,
    /// Replicas of the JetStream streams and key-value buckets this process creates (1 to 5;
    /// unset: 1). A server also raises the streams that exist with fewer ([`raise_replicas`]).
    pub nats_replicas: Option<usize>,
    /// Prefix of the subjects replies come back on (default `_INBOX`): giving each role its
    /// own (`_INBOX_worker`, …) lets NATS permissions keep a role from reading another's
    /// replies. A worker adds a token of its name (`_INBOX_worker.<name>`), so each worker
    /// process has a prefix of its own.
    pub nats_inbox_prefix: Option<String>,
}

impl NatsSecurity {
    /// Refuses combinations that cannot be meant: a password without a user, or both a user
    /// and a creds file.
    pub fn validate(&self) -> Result<(), Error> {
        match (&self.nats_user, &self.nats_password, &self.nats_creds_file) {
            (None, Some(_), _) => Err(Error::Connect(
                "nats_password is set without nats_user".to_owned(),
            )),
            (Some(_), _, Some(_)) => Err(Error::Connect(
                "set either nats_user (and nats_password) or nats_creds_file, not both".to_owned(),
            )),
            _ if !(1..=5).contains(&self.replicas()) => Err(Error::Connect(format!(
                "nats_replicas must be 1 to 5 (JetStream's limit), not {}",
                self.replicas()
            ))),
            _ if self
                .nats_inbox_prefix
                .as_deref()
                .is_some_and(|prefix| !is_subject_prefix(prefix)) =>
            {
                Err(Error::Connect(
                    "nats_inbox_prefix must be subject tokens of letters, digits, `_` and `-` \
                     joined by `.` (for example `_INBOX_worker`)"
                        .to_owned(),
                ))
            }
            _ => Ok(()),
        }
    }

    fn replicas(&self) -> usize {
        self.nats_replicas.unwrap_or(1)
    }
}

/// Letters, digits, `_` and `-` in non-empty tokens joined by `.`: no wildcard, no space.
fn is_subject_prefix(prefix: &str) -> bool {
    prefix.split('.').all(|token| {
        !token.is_empty()
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

/// Environment values that look like numbers (`NOETL_NATS_PASSWORD=12345`) arrive as numbers
/// from the settings loader; a user name or password is text whatever it looks like.
fn lenient_text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Text {
        String(String),
        Integer(i64),
        Float(f64),
        Bool(bool),
    }
    Ok(
        Option::<Text>::deserialize(deserializer)?.map(|text| match text {
            Text::String(s) => s,
            Text::Integer(n) => n.to_string(),
            Text::Float(n) => n.to_string(),
            Text::Bool(b) => b.to_string(),
        }),
    )
}

fn lenient_secret<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<secrecy::SecretString>, D::Error> {
    Ok(lenient_text(deserializer)?.map(secrecy::SecretString::from))
}

/// Connects, retrying the initial connection, so processes may start before NATS does.
pub async fn connect(config: &NatsConfig) -> Result<Client, Error> {
    use secrecy::ExposeSecret;
    let security = &config.security;
    security.validate()?;
    REPLICAS.store(security.replicas(), std::sync::atomic::Ordering::Relaxed);
    let mut options = match &security.nats_creds_file {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| Error::Connect(format!("reading {}: {e}", path.display())))?,
        None => async_nats::ConnectOptions::new(),
    };
    if let Some(user) = &security.nats_user {
        let password = security
            .nats_password
            .as_ref()
            .map(|p| p.expose_secret().to_owned())
            .unwrap_or_default();
        options = options.user_and_password(user.clone(), password);
    }
    if let Some(ca) = &security.nats_tls_ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if security.nats_tls_required {
        options = options.require_tls(true);
    }
    if let Some(prefix) = &security.nats_inbox_prefix {
        options = options.custom_inbox_prefix(prefix);
    }
    options
        .name(&config.client_name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .connect(config.url.as_str())
        .await
        .map_err(|e| Error::Connect(e.to_string()))
}

/// The replicas of the streams this process creates: `nats_replicas` of its last [`connect`]
/// (one setting per process, like the connection itself).
static REPLICAS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

pub(crate) fn replicas() -> usize {
    REPLICAS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The product's streams: the command stream and the key-value buckets' streams.
fn streams() -> Vec<String> {
    use noetl_contract::subject;
    let buckets = [
        subject::TOPOLOGY_BUCKET,
        subject::NODES_BUCKET,
        subject::CATALOG_BUCKET,
        subject::IDEMPOTENCY_BUCKET,
    ];
    std::iter::once(subject::COMMAND_STREAM.to_owned())
        .chain(buckets.iter().map(|bucket| format!("KV_{bucket}")))
        .collect()
}

/// Raises every existing stream of the product that has fewer than [`replicas`] to that
/// many (JetStream copies the data to the new replicas); streams not created yet are left to
/// whoever creates them, with the same setting. Returns the streams raised.
pub async fn raise_replicas(client: &Client) -> Result<Vec<String>, Error> {
    let js = async_nats::jetstream::new(client.clone());
    let wanted = replicas();
    let mut raised = Vec::new();
    for name in streams() {
        let Ok(mut stream) = js.get_stream(&name).await else {
            continue;
        };
        let info = stream
            .info()
            .await
            .map_err(|e| Error::Transport(format!("reading stream {name}: {e}")))?;
        if info.config.num_replicas >= wanted {
            continue;
        }
        let config = async_nats::jetstream::stream::Config {
            num_replicas: wanted,
            ..info.config.clone()
        };
        js.update_stream(config)
            .await
            .map_err(|e| Error::Transport(format!("raising the replicas of {name}: {e}")))?;
        raised.push(name);
    }
    Ok(raised)
}

pub fn is_connected(client: &Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// Sends `body` to `subject` and decodes the [`Reply`] envelope; a remote error becomes
/// [`Error::Remote`].
pub async fn request<Req: Serialize, Resp: DeserializeOwned>(
    client: &Client,
    subject: String,
    body: &Req,
    timeout: Duration,
) -> Result<Resp, Error> {
    let payload = serde_json::to_vec(body).map_err(|e| Error::Decode {
        subject: subject.clone(),
        reason: e.to_string(),
    })?;
    let headers = trace::headers();
    check_size(client, &subject, payload.len() + headers_size(&headers))?;
    let request = async_nats::Request::new()
        .payload(Bytes::from(payload))
        .headers(headers)
        .timeout(Some(timeout));
    let message = client
        .send_request(subject.clone(), request)
        .await
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => Error::NoResponders {
                subject: subject.clone(),
            },
            async_nats::RequestErrorKind::TimedOut => Error::TimedOut {
                subject: subject.clone(),
                timeout,
            },
            async_nats::RequestErrorKind::Other => Error::Transport(e.to_string()),
        })?;
    let reply: Reply<Resp> = decode(&subject, &message.payload)?;
    Result::from(reply).map_err(Error::Remote)
}

/// Answers a request with the [`Reply`] envelope. A request without a reply subject is
/// answered by nobody (it was a plain publish). A reply over `max_payload` is not sent: the
/// requester gets a small [`WireErrorCode::TooLarge`] error instead, and this returns
/// [`Error::TooLarge`] for the caller to log.
pub async fn respond<T: Serialize>(
    client: &Client,
    message: &Message,
    reply: &Reply<T>,
) -> Result<(), Error> {
    let Some(reply_to) = message.reply.clone() else {
        return Ok(());
    };
    let payload = serde_json::to_vec(reply).map_err(|e| Error::Decode {
        subject: message.subject.to_string(),
        reason: e.to_string(),
    })?;
    if let Err(too_large) = check_size(client, &message.subject, payload.len()) {
        let refusal: Reply<()> = Reply::Error(WireError {
            code: WireErrorCode::TooLarge,
            message: format!(
                "the reply is {} bytes, over NATS max_payload ({} bytes)",
                payload.len(),
                max_payload(client)
            ),
        });
        let refusal = serde_json::to_vec(&refusal).map_err(|e| Error::Decode {
            subject: message.subject.to_string(),
            reason: e.to_string(),
        })?;
        client
            .publish(reply_to, Bytes::from(refusal))
            .await
            .map_err(|e| Error::Transport(e.to_string()))?;
        return Err(too_large);
    }
    client
        .publish(reply_to, Bytes::from(payload))
        .await
        .map_err(|e| Error::Transport(e.to_string()))
}

/// Decodes a JSON body, naming the subject in the error.
pub fn decode<T: DeserializeOwned>(subject: &str, payload: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(payload).map_err(|e| Error::Decode {
        subject: subject.to_owned(),
        reason: e.to_string(),
    })
}

/// Opens a JetStream key-value bucket, creating it when missing; with `max_age`, values
/// expire that long after they were last written.
///
/// The bucket's stream is created here with the key-value layout (ADR-8) rather than with
/// `create_key_value`, which first asks for account information in a shape nats-server 2.9
/// (Debian 12's) does not send. Concurrent creators converge: whoever loses the race opens
/// the winner's stream.
pub async fn kv_bucket(
    client: &Client,
    bucket: &str,
    description: &str,
    history: i64,
    max_age: Option<Duration>,
) -> Result<async_nats::jetstream::kv::Store, Error> {
    use async_nats::jetstream::{self, stream};
    let js = jetstream::new(client.clone());
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    let created = js
        .get_or_create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            description: Some(description.to_owned()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: history,
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: replicas(),
            max_age: max_age.unwrap_or_default(),
            ..Default::default()
        })
        .await;
    // A creator racing us makes our create fail; its stream is as good as ours.
    js.get_key_value(bucket).await.map_err(|e| {
        let create = created.err().map(|c| format!("{c}; ")).unwrap_or_default();
        Error::Transport(format!("opening bucket {bucket}: {create}{e}"))
    })
}

/// Subscribes `filter` in queue group `group`: each message goes to one member of the group.
pub async fn queue_subscribe(
    client: &Client,
    filter: String,
    group: String,
) -> Result<Subscriber, Error> {
    client
        .queue_subscribe(filter, group)
        .await
        .map_err(|e| Error::Transport(e.to_string()))
}
