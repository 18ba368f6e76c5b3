//! Real brokers for the fleet tests: Debian's `nats-server` (with JetStream) and
//! `mosquitto` on free loopback ports, killed and restarted on the same port at will;
//! and subscribers that record every detection they receive.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cliptag_service::brokers::NatsDetections;

/// A free loopback port (free when this returns; the broker takes it right after).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits until something accepts connections on `port`.
fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on port {port} within 15 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A broker process.
pub struct Broker {
    program: &'static str,
    args: Vec<String>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    scheme: &'static str,
    log: PathBuf,
    child: Option<Child>,
}

impl Broker {
    /// `nats-server` with JetStream, its store in `dir` (kept across restarts).
    pub fn nats(dir: &Path) -> Self {
        let port = free_port();
        let store = dir.join("jetstream");
        let args = vec![
            "-js".into(),
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-sd".into(),
            store.display().to_string(),
        ];
        Self::start(
            "nats-server",
            args,
            port,
            "nats",
            dir.join("nats-server.log"),
        )
    }

    /// `nats-server` with JetStream and `extra` arguments (a user and a password).
    pub fn nats_with(dir: &Path, extra: &[&str]) -> Self {
        let mut broker = Self::nats(dir);
        broker.kill();
        broker.args.extend(extra.iter().map(|a| a.to_string()));
        broker.restart();
        broker
    }

    /// `mosquitto` listening on loopback, anonymous clients allowed.
    pub fn mosquitto(dir: &Path) -> Self {
        Self::mosquitto_with(dir, "allow_anonymous true\n", "mqtt")
    }

    /// `mosquitto` listening on loopback with `settings` for its listener (TLS files,
    /// a password file), reached with `scheme`.
    pub fn mosquitto_with(dir: &Path, settings: &str, scheme: &'static str) -> Self {
        let port = free_port();
        let config = dir.join(format!("mosquitto-{port}.conf"));
        // Run as root it would change to the user mosquitto, which cannot read the
        // test's private directory; `user root` keeps the user it was started as.
        std::fs::write(
            &config,
            format!("user root\npersistence false\nlistener {port} 127.0.0.1\n{settings}"),
        )
        .expect("mosquitto.conf");
        let args = vec!["-c".into(), config.display().to_string()];
        Self::start("mosquitto", args, port, scheme, dir.join("mosquitto.log"))
    }

    fn start(
        program: &'static str,
        args: Vec<String>,
        port: u16,
        scheme: &'static str,
        log: PathBuf,
    ) -> Self {
        let mut broker = Self {
            program,
            args,
            port,
            scheme,
            log,
            child: None,
        };
        broker.restart();
        broker
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// Starts it (again, on the same port and store) and waits until it listens.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} runs already", self.program);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("broker log");
        let child = Command::new(self.program)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e} (./x test installs it from Debian)",
                    self.program
                )
            });
        self.child = Some(child);
        wait_listening(self.port, self.program);
    }

    /// Kills it at once (SIGKILL: no goodbye to its clients, like a crash or a cable
    /// pulled).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One detection as a subscriber received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Its stream.
    pub stream: String,
    /// Its frame number.
    pub frame: u64,
    /// The label-set version that scored it.
    pub version: u64,
    /// Its labels, best first.
    pub labels: Vec<String>,
    /// When it arrived here.
    pub received: Instant,
}

/// What a subscriber has received so far.
pub type Inbox = Arc<Mutex<Vec<Seen>>>;

/// Everything in `inbox` now.
pub fn snapshot(inbox: &Inbox) -> Vec<Seen> {
    inbox.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Waits until `done` holds for what `inbox` received; panics with `what` after
/// `timeout`.
pub fn wait_for(inbox: &Inbox, timeout: Duration, what: &str, done: impl Fn(&[Seen]) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if done(&snapshot(inbox)) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Subscribes to every stream's detections on a NATS server (reconnecting when it
/// comes back) and records them, in a thread of its own.
pub fn nats_subscriber(url: &str) -> Inbox {
    let inbox: Inbox = Arc::default();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (url, sink) = (url.to_string(), inbox.clone());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let mut detections =
                NatsDetections::subscribe(&url, None, "cliptag", &[], Duration::from_secs(5))
                    .await
                    .expect("subscribe to NATS");
            let _ = ready_tx.send(());
            while let Some(d) = detections.next().await {
                let d = match d {
                    Ok(d) => d,
                    // Said, and left out: a test counting detections fails on its own.
                    Err(e) => {
                        eprintln!("not a detection on NATS: {e}");
                        continue;
                    }
                };
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Seen {
                        stream: d.stream,
                        frame: d.frame,
                        version: d.label_set_version,
                        labels: d.labels.into_iter().map(|l| l.label).collect(),
                        received: Instant::now(),
                    });
            }
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the NATS subscriber is ready");
    inbox
}

/// `mosquitto_sub` on every stream's detections at QoS 1, recording them; stops when
/// dropped or when the broker goes.
pub struct MqttSubscriber {
    child: Child,
    /// What it received.
    pub inbox: Inbox,
}

impl MqttSubscriber {
    /// Subscribes to `cliptag/+/detections` on the broker at `port`, into `inbox`.
    pub fn start(port: u16, inbox: Inbox) -> Self {
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-q", "1", "-t", "cliptag/+/detections"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub (./x test installs mosquitto-clients)");
        let stdout = child.stdout.take().expect("stdout");
        let sink = inbox.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    eprintln!("not a detection on MQTT: {line}");
                    continue;
                };
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Seen {
                        stream: v["stream"].as_str().unwrap_or_default().to_string(),
                        frame: v["frame"].as_u64().unwrap_or(u64::MAX),
                        version: v["label_set_version"].as_u64().unwrap_or(u64::MAX),
                        labels: v["labels"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|l| l["label"].as_str().map(String::from))
                                    .collect()
                            })
                            .unwrap_or_default(),
                        received: Instant::now(),
                    });
            }
        });
        // Subscribed once a probe published after it comes back.
        let probe = r#"{"stream":"_probe","frame":0,"label_set_version":0,"labels":[]}"#;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !snapshot(&inbox).iter().any(|s| s.stream == "_probe") {
            assert!(Instant::now() < deadline, "mosquitto_sub did not subscribe");
            let _ = Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .args(["-q", "1", "-t", "cliptag/_probe/detections", "-m", probe])
                .status();
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, inbox }
    }
}

impl Drop for MqttSubscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Per stream, the frame numbers received, sorted (duplicates kept).
pub fn frames_by_stream(seen: &[Seen]) -> std::collections::BTreeMap<String, Vec<u64>> {
    let mut by: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for s in seen {
        by.entry(s.stream.clone()).or_default().push(s.frame);
    }
    for frames in by.values_mut() {
        frames.sort_unstable();
    }
    by
}
