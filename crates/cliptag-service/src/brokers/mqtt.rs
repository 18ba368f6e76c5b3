//! MQTT: one client per publishing stream, detections as JSON at QoS 1.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cliptag_proto::v1;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS, Transport};

use super::address::{self, BrokerUrl, Kind};
use super::outbox::Outbox;
use super::{BrokerError, Link, LinkState, MqttSettings, backoff, lock, runtime};
use crate::{convert, json};

/// How often a sender looks whether its broker is back.
const RECONNECT_POLL: Duration = Duration::from_millis(50);

/// Detections taken from the outbox per round.
const BATCH: usize = 64;

/// Requests the client queues for its event loop; a full queue makes the sender wait
/// (in its task), while new detections wait in the outbox.
const REQUEST_CAPACITY: usize = 64;

/// Largest detection sent, in bytes (a set's top-k labels with long names).
const MAX_PACKET: usize = 1 << 20;

/// Client ids must differ between the clients of one broker: the broker drops a client
/// when another connects with its id.
static CLIENTS: AtomicU64 = AtomicU64::new(0);

/// A client id unique across processes and hosts (process ids repeat between
/// containers, where they are often 1): a random part drawn once per process, and a
/// count within it. 23 characters at most, the length every MQTT 3.1.1 broker accepts.
fn client_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static PROCESS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let random = *PROCESS.get_or_init(|| {
        // RandomState is seeded from the system's randomness.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.finish()
    });
    format!(
        "cliptag-{:012x}-{}",
        random & 0xffff_ffff_ffff,
        CLIENTS.fetch_add(1, Ordering::Relaxed)
    )
}

/// TLS with the system's trusted roots; an error (not a panic) when none load.
fn system_tls() -> Result<rumqttc::TlsConfiguration, BrokerError> {
    use rumqttc::tokio_rustls::rustls;
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _unparsable) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none installed".to_string(), ToString::to_string);
        return Err(BrokerError::Tls(format!(
            "no trusted root certificates on this system ({why}); give mqtt-ca-file"
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BrokerError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(rumqttc::TlsConfiguration::Rustls(Arc::new(config)))
}

/// A client's connection state, kept by its event loop.
#[derive(Default)]
struct Connection {
    connected: AtomicBool,
    last_error: Mutex<String>,
}

impl LinkState for Connection {
    fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    fn last_error(&self) -> String {
        lock(&self.last_error).clone()
    }
}

fn mqtt_options(settings: &MqttSettings) -> Result<(MqttOptions, String), BrokerError> {
    let url = BrokerUrl::parse(Kind::Mqtt, &settings.url)?;
    let mut options = MqttOptions::new(client_id(), url.host.clone(), url.port);
    options
        .set_keep_alive(Duration::from_secs(5))
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_request_channel_capacity(REQUEST_CAPACITY);
    let username = settings.username.clone().or(url.username.clone());
    let password = settings.password.clone().or(url.password.clone());
    if let Some(username) = username {
        options.set_credentials(username, password.unwrap_or_default());
    }
    if url.tls {
        let tls = match &settings.ca_file {
            Some(path) => rumqttc::TlsConfiguration::Simple {
                ca: std::fs::read(path).map_err(|source| BrokerError::File {
                    path: path.clone(),
                    source,
                })?,
                alpn: None,
                client_auth: None,
            },
            None => system_tls()?,
        };
        options.set_transport(Transport::tls_with_config(tls));
    }
    Ok((options, url.redacted()))
}

/// Starts publishing stream `stream` to MQTT: its link and its two tasks (the client's
/// event loop, and the sender).
pub(crate) fn start_publishing(
    stream: &str,
    settings: &MqttSettings,
    capacity: usize,
    done: std::sync::mpsc::Sender<()>,
) -> Result<(Arc<Link>, Vec<tokio::task::AbortHandle>), BrokerError> {
    address::check_prefix(Kind::Mqtt, &settings.topic_prefix)?;
    let (options, url) = mqtt_options(settings)?;
    let topic = format!("{}/{stream}/detections", settings.topic_prefix);
    let connection = Arc::new(Connection::default());
    let link = Arc::new(Link {
        broker: "mqtt",
        url: url.clone(),
        subject: topic.clone(),
        outbox: Outbox::new(capacity),
        state: connection.clone(),
        finished: AtomicBool::new(false),
    });
    let runtime = runtime()?;
    let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
    let driver = runtime.spawn({
        let connection = connection.clone();
        let done = done.clone();
        let link = link.clone();
        async move {
            drive(eventloop, &connection, &url).await;
            // Everything queued before the disconnect has been written.
            link.finished.store(true, Ordering::Release);
            drop(done);
        }
    });
    let sender = runtime.spawn({
        let link = link.clone();
        async move {
            send(&link, &connection, &client, topic).await;
            drop(done);
        }
    });
    Ok((link, vec![driver.abort_handle(), sender.abort_handle()]))
}

/// Runs the client's event loop: connects, reconnects with backoff, and ends once the
/// sender's disconnect went out.
async fn drive(mut eventloop: EventLoop, connection: &Connection, url: &str) {
    let mut failures = 0usize;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                if ack.code == rumqttc::ConnectReturnCode::Success {
                    if failures > 0 {
                        tracing::info!("MQTT connected to {url} again");
                    } else {
                        tracing::debug!("MQTT connected to {url}");
                    }
                    lock(&connection.last_error).clear();
                    connection.connected.store(true, Ordering::Release);
                    failures = 0;
                } else {
                    *lock(&connection.last_error) = format!("refused: {:?}", ack.code);
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                connection.connected.store(false, Ordering::Release);
                return;
            }
            Ok(_) => {}
            Err(e) => {
                if connection.connected.swap(false, Ordering::AcqRel) {
                    tracing::warn!("MQTT connection to {url} lost: {e}; reconnecting");
                }
                *lock(&connection.last_error) = e.to_string();
                failures += 1;
                tokio::time::sleep(backoff(failures)).await;
            }
        }
    }
}

/// Sends the outbox while connected, until it is closed and empty; then disconnects.
async fn send(link: &Link, connection: &Connection, client: &AsyncClient, topic: String) {
    while link.outbox.wait().await {
        while !connection.connected() {
            tokio::time::sleep(RECONNECT_POLL).await;
        }
        for result in link.outbox.take(BATCH) {
            let detection = json::Detection::from_proto(convert::detection(&result));
            let payload = match serde_json::to_vec(&detection) {
                Ok(payload) => payload,
                Err(e) => {
                    *lock(&connection.last_error) = format!("cannot encode a detection: {e}");
                    link.outbox.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            match client
                .publish(topic.clone(), QoS::AtLeastOnce, false, payload)
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
    // Queued after the publishes: the event loop writes them first.
    let _ = client.disconnect().await;
}

/// Detections read from an MQTT broker, for programs that consume them (`cliptag watch
/// --mqtt`, the broker benchmark).
pub struct MqttDetections {
    client: AsyncClient,
    eventloop: EventLoop,
    topics: Vec<String>,
}

impl MqttDetections {
    /// Subscribes at QoS 1 to the detections of `streams` (every stream when empty)
    /// under `prefix`, failing if the broker does not accept within `timeout`.
    pub async fn subscribe(
        settings: &MqttSettings,
        streams: &[String],
        timeout: Duration,
    ) -> Result<Self, String> {
        address::check_prefix(Kind::Mqtt, &settings.topic_prefix).map_err(|e| e.to_string())?;
        let (mut options, url) = mqtt_options(settings).map_err(|e| e.to_string())?;
        // Room for every subscription before the event loop runs.
        let capacity = REQUEST_CAPACITY + streams.len();
        options.set_request_channel_capacity(capacity);
        let (client, mut eventloop) = AsyncClient::new(options, capacity);
        let topics: Vec<String> = if streams.is_empty() {
            vec![format!("{}/+/detections", settings.topic_prefix)]
        } else {
            for stream in streams {
                address::check_token("stream id", stream).map_err(|e| e.to_string())?;
            }
            streams
                .iter()
                .map(|s| format!("{}/{s}/detections", settings.topic_prefix))
                .collect()
        };
        for topic in &topics {
            client
                .subscribe(topic.clone(), QoS::AtLeastOnce)
                .await
                .map_err(|e| format!("cannot subscribe to {topic}: {e}"))?;
        }
        // Connected and subscribed once every SubAck is in.
        let mut acked = 0;
        let wait = async {
            while acked < topics.len() {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::SubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(e) => return Err(format!("cannot reach MQTT at {url}: {e}")),
                }
            }
            Ok(())
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| format!("MQTT at {url} did not answer within {timeout:?}"))??;
        Ok(Self {
            client,
            eventloop,
            topics,
        })
    }

    /// The next detection; an error for a message that is not one, or a lost
    /// connection (the next call reconnects).
    pub async fn next(&mut self) -> Result<v1::Detection, String> {
        loop {
            match self.eventloop.poll().await {
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    return super::decode_detection(None, &p.payload)
                        .map_err(|e| format!("{}: {e}", p.topic));
                }
                // A new session after a reconnect: subscribe again.
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    for topic in &self.topics {
                        let _ = self.client.try_subscribe(topic.clone(), QoS::AtLeastOnce);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    return Err(e.to_string());
                }
            }
        }
    }

    /// Disconnects.
    pub async fn close(self) {
        let _ = self.client.disconnect().await;
    }
}
