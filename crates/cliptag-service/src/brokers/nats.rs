//! NATS: connections shared per URL, and the task that publishes a stream's outbox.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event, HeaderMap};
use cliptag_proto::v1;
use prost::Message;

use super::address::{self, BrokerUrl, Kind};
use super::outbox::Outbox;
use super::{BrokerError, Link, LinkState, NatsSettings, backoff, lock, runtime};
use crate::{convert, json};

/// `Content-Type` of a detection published as the protobuf.
pub const CONTENT_TYPE_PROTOBUF: &str = "application/x-protobuf; messageType=cliptag.v1.Detection";
/// `Content-Type` of a detection published as JSON.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// How often a sender looks whether its broker is back.
const RECONNECT_POLL: Duration = Duration::from_millis(50);

/// Detections taken from the outbox per round.
const BATCH: usize = 64;

/// One connection to a NATS server, shared by every stream of the process that names
/// its URL; closed when the last user drops it.
pub(crate) struct Connection {
    pub client: Client,
    pub url: String,
    last_error: Arc<Mutex<String>>,
}

impl LinkState for Connection {
    fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    fn last_error(&self) -> String {
        lock(&self.last_error).clone()
    }
}

/// What tells connections apart: the URL and the CA file.
type ConnectionKey = (String, Option<PathBuf>);

/// Connections by URL and CA file.
static CONNECTIONS: LazyLock<Mutex<HashMap<ConnectionKey, Weak<Connection>>>> =
    LazyLock::new(Default::default);

/// The credentials of `url` on `options` (a user with a password, or a user alone as a
/// token: the client does not read them from the URL), and the address to connect to.
pub(crate) fn credentials(
    mut options: ConnectOptions,
    url: &BrokerUrl,
) -> (ConnectOptions, String) {
    match (&url.username, &url.password) {
        (Some(user), Some(password)) => {
            options = options.user_and_password(user.clone(), password.clone());
        }
        (Some(token), None) => options = options.token(token.clone()),
        _ => {}
    }
    (options, url.address())
}

/// Connection options: retried forever with backoff, also the first connection, so
/// that a server that is down at start is reached when it comes up.
pub(crate) fn options(ca_file: Option<&Path>, last_error: Arc<Mutex<String>>) -> ConnectOptions {
    let mut options = ConnectOptions::new()
        .name("cliptag")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(backoff)
        .event_callback(move |event| {
            let last_error = last_error.clone();
            async move { note(&event, &last_error) }
        });
    if let Some(ca) = ca_file {
        options = options.add_root_certificates(ca.to_path_buf());
    }
    options
}

fn note(event: &Event, last_error: &Mutex<String>) {
    match event {
        // Said when it matters: a connection back after a loss.
        Event::Connected if lock(last_error).is_empty() => tracing::debug!("NATS connected"),
        Event::Connected => {
            tracing::info!("NATS connected again");
            lock(last_error).clear();
        }
        Event::Disconnected => {
            tracing::warn!("NATS disconnected; reconnecting");
            *lock(last_error) = "disconnected".into();
        }
        Event::ServerError(e) => {
            tracing::warn!("NATS server error: {e}");
            *lock(last_error) = format!("server error: {e}");
        }
        Event::ClientError(e) => {
            tracing::warn!("NATS client error: {e}");
            *lock(last_error) = format!("client error: {e}");
        }
        other => tracing::debug!("NATS: {other}"),
    }
}

/// Checks a CA file before any connection needs it.
pub(crate) fn check_ca(ca_file: Option<&Path>) -> Result<(), BrokerError> {
    if let Some(path) = ca_file {
        std::fs::metadata(path).map_err(|source| BrokerError::File {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// The process's connection to `url`, opened (in the background) if there is none.
pub(crate) fn shared(url: &str, ca_file: Option<&Path>) -> Result<Arc<Connection>, BrokerError> {
    let parsed = BrokerUrl::parse(Kind::Nats, url)?;
    check_ca(ca_file)?;
    let key = (parsed.raw.clone(), ca_file.map(Path::to_path_buf));
    let mut connections = lock(&CONNECTIONS);
    connections.retain(|_, c| c.strong_count() > 0);
    if let Some(connection) = connections.get(&key).and_then(Weak::upgrade) {
        return Ok(connection);
    }
    let last_error = Arc::new(Mutex::new(String::new()));
    let (options, address) = credentials(options(ca_file, last_error.clone()), &parsed);
    let connect = options.connect(address);
    // With retry_on_initial_connect this returns at once; the connection is made by
    // the client's own task on the brokers' runtime.
    let client = super::run_blocking(connect, Duration::from_secs(10))?
        .ok_or_else(|| BrokerError::Runtime("the NATS client did not start".into()))?
        .map_err(|e| BrokerError::Url {
            broker: "NATS",
            url: parsed.redacted(),
            reason: e.to_string(),
        })?;
    let connection = Arc::new(Connection {
        client,
        url: parsed.redacted(),
        last_error,
    });
    connections.insert(key, Arc::downgrade(&connection));
    Ok(connection)
}

/// Starts publishing stream `stream` to NATS: its link (for counters) and its task.
pub(crate) fn start_publishing(
    stream: &str,
    settings: &NatsSettings,
    capacity: usize,
    done: std::sync::mpsc::Sender<()>,
) -> Result<(Arc<Link>, tokio::task::AbortHandle), BrokerError> {
    address::check_prefix(Kind::Nats, &settings.subject_prefix)?;
    let connection = shared(&settings.url, settings.ca_file.as_deref())?;
    let subject = format!("{}.{stream}.detections", settings.subject_prefix);
    let link = Arc::new(Link {
        broker: "nats",
        url: connection.url.clone(),
        subject: subject.clone(),
        outbox: Outbox::new(capacity),
        state: connection.clone(),
        finished: std::sync::atomic::AtomicBool::new(false),
    });
    let format = settings.format;
    let task = runtime()?.spawn({
        let link = link.clone();
        async move {
            send(&link, &connection, subject, format).await;
            link.finished.store(true, Ordering::Release);
            drop(done);
        }
    });
    Ok((link, task.abort_handle()))
}

/// Sends the outbox while connected, until it is closed and empty.
async fn send(link: &Link, connection: &Connection, subject: String, format: super::Format) {
    let mut headers = HeaderMap::new();
    headers.insert(
        "Content-Type",
        match format {
            super::Format::Protobuf => CONTENT_TYPE_PROTOBUF,
            super::Format::Json => CONTENT_TYPE_JSON,
        },
    );
    while link.outbox.wait().await {
        // Taken only while connected: while the server is away detections wait in the
        // outbox, where the oldest give way to new ones.
        while !connection.connected() {
            tokio::time::sleep(RECONNECT_POLL).await;
        }
        for result in link.outbox.take(BATCH) {
            let payload = match encode(&convert::detection(&result), format) {
                Ok(payload) => payload,
                Err(e) => {
                    *lock(&connection.last_error) = e;
                    link.outbox.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            match connection
                .client
                .publish_with_headers(subject.clone(), headers.clone(), payload.into())
                .await
            {
                Ok(()) => {
                    link.outbox.published.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    *lock(&connection.last_error) = format!("publish: {e}");
                    link.outbox.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    // Stopping: what was handed to the client goes out before the link ends.
    let _ = tokio::time::timeout(Duration::from_secs(1), connection.client.flush()).await;
}

fn encode(detection: &v1::Detection, format: super::Format) -> Result<Vec<u8>, String> {
    match format {
        super::Format::Protobuf => Ok(detection.encode_to_vec()),
        super::Format::Json => serde_json::to_vec(&json::Detection::from_proto(detection.clone()))
            .map_err(|e| format!("cannot encode a detection as JSON: {e}")),
    }
}

/// Decodes a detection received from NATS (or MQTT, where it is JSON): the protobuf when
/// `content_type` says so, JSON otherwise.
pub fn decode_detection(
    content_type: Option<&str>,
    payload: &[u8],
) -> Result<v1::Detection, String> {
    let protobuf = content_type.is_some_and(|t| t.starts_with("application/x-protobuf"));
    if protobuf {
        return v1::Detection::decode(payload)
            .map_err(|e| format!("not a cliptag.v1.Detection: {e}"));
    }
    let detection: json::Detection =
        serde_json::from_slice(payload).map_err(|e| format!("not a detection in JSON: {e}"))?;
    detection.into_proto()
}

/// Detections read from NATS, for programs that consume them (`cliptag watch --nats`).
pub struct NatsDetections {
    subscriber: async_nats::Subscriber,
    // The connection lives as long as the subscription.
    _client: Client,
}

impl NatsDetections {
    /// Subscribes to the detections of `streams` (every stream when empty) under
    /// `prefix`, failing if the server does not answer within `timeout`.
    pub async fn subscribe(
        url: &str,
        ca_file: Option<PathBuf>,
        prefix: &str,
        streams: &[String],
        timeout: Duration,
    ) -> Result<Self, String> {
        let parsed = BrokerUrl::parse(Kind::Nats, url).map_err(|e| e.to_string())?;
        address::check_prefix(Kind::Nats, prefix).map_err(|e| e.to_string())?;
        let subject = match streams {
            [one] => {
                address::check_token("stream id", one).map_err(|e| e.to_string())?;
                format!("{prefix}.{one}.detections")
            }
            _ => format!("{prefix}.*.detections"),
        };
        let mut options = ConnectOptions::new()
            .name("cliptag watch")
            .connection_timeout(timeout)
            .max_reconnects(None)
            .reconnect_delay_callback(backoff);
        if let Some(ca) = ca_file {
            options = options.add_root_certificates(ca);
        }
        let (options, address) = credentials(options, &parsed);
        let client = options
            .connect(address)
            .await
            .map_err(|e| format!("cannot reach NATS at {}: {e}", parsed.redacted()))?;
        let subscriber = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| format!("cannot subscribe to {subject}: {e}"))?;
        // The subscription is registered with the server once this returns.
        client
            .flush()
            .await
            .map_err(|e| format!("NATS at {}: {e}", parsed.redacted()))?;
        Ok(Self {
            subscriber,
            _client: client,
        })
    }

    /// The next detection; an error for a message that is not one; `None` when the
    /// subscription ends.
    pub async fn next(&mut self) -> Option<Result<v1::Detection, String>> {
        use tokio_stream::StreamExt;
        let message = self.subscriber.next().await?;
        let content_type = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Content-Type"))
            .map(|v| v.as_str().to_string());
        Some(
            decode_detection(content_type.as_deref(), &message.payload)
                .map_err(|e| format!("{}: {e}", message.subject)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detection_survives_both_encodings() {
        let detection = v1::Detection {
            stream: "cam".into(),
            frame: 41,
            pts_ns: Some(1_000),
            wall_time: Some(prost_types::Timestamp {
                seconds: 1_790_000_000,
                nanos: 123_456_000,
            }),
            label_set: "cam".into(),
            label_set_version: 7,
            labels: vec![v1::LabelScore {
                label: "a dog".into(),
                score: 0.75,
            }],
            computed_for: Some(40),
            latency_us: 1500,
            events: vec![v1::LabelEvent {
                label: "a dog".into(),
                kind: v1::label_event::Kind::Start as i32,
                score: 0.75,
            }],
            ..Default::default()
        };
        for format in [super::super::Format::Protobuf, super::super::Format::Json] {
            let bytes = encode(&detection, format).expect("encode");
            let content_type = match format {
                super::super::Format::Protobuf => CONTENT_TYPE_PROTOBUF,
                super::super::Format::Json => CONTENT_TYPE_JSON,
            };
            assert_eq!(
                decode_detection(Some(content_type), &bytes).as_ref(),
                Ok(&detection),
                "{format:?}"
            );
        }
        assert!(decode_detection(None, b"{\"frame\": 1}").is_err());
        assert!(decode_detection(Some(CONTENT_TYPE_PROTOBUF), &[0xff, 0xff]).is_err());
    }
}
