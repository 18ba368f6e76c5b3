//! What the service tests share: a real engine on the bundled model fed by producer
//! threads, a real server on a loopback port, real tonic clients.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cliptag_engine::cliptag_model::{ClipModel, LoadOptions, PixelFormat};
use cliptag_engine::{Engine, EngineConfig, FrameTiming, LabelSetSpec, OwnedFrame, StreamConfig};
use cliptag_service::v1::cliptag_client::CliptagClient;
use cliptag_service::{Registration, Server, ServerConfig, hub};
use tonic::transport::Channel;

/// The hub is process-wide: tests that look at "every stream" must not overlap. (An
/// async lock: each test's runtime awaits while holding it.)
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

pub fn model() -> Arc<ClipModel> {
    static MODEL: OnceLock<Arc<ClipModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| Arc::new(ClipModel::bundled(&LoadOptions::default()).expect("bundled")))
        .clone()
}

/// An engine on the bundled model, registered with the hub.
pub fn engine(observer_buffer: usize) -> (Arc<Engine>, Registration) {
    let config = EngineConfig {
        observer_buffer,
        max_latency: Duration::from_millis(5),
        ..EngineConfig::default()
    };
    let engine = Engine::with_model(model(), config).expect("engine");
    let registration = hub().register(&engine);
    (engine, registration)
}

/// A small solid frame: the tests here are about delivery, not about what it shows.
pub fn frame(rgb: [u8; 3]) -> OwnedFrame {
    let (w, h) = (64, 48);
    let data = rgb.iter().copied().cycle().take(w * h * 3).collect();
    OwnedFrame::new(PixelFormat::Rgb, w, h, data).expect("frame")
}

/// A stream submitting frames from its own thread, `fps` per second (0: as fast as the
/// engine takes them), until stopped or `limit` frames.
pub struct Producer {
    pub stream: Arc<cliptag_engine::Stream>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl Producer {
    pub fn start(engine: &Arc<Engine>, id: &str, labels: &[&str], fps: u32, limit: u64) -> Self {
        engine
            .set_labels(id, LabelSetSpec::from_names(labels), None)
            .expect("labels");
        let config = StreamConfig {
            max_pending: 8,
            ..StreamConfig::default()
        };
        let stream = Arc::new(engine.attach(id, config, |_| {}).expect("attach"));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stream = stream.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < limit {
                    if fps > 0 {
                        let due = start + Duration::from_secs_f64(n as f64 / f64::from(fps));
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                    let timing = FrameTiming {
                        pts_ns: Some(n * 33_333_333),
                        running_time_ns: None,
                    };
                    let shade = (n % 200) as u8;
                    if stream
                        .submit(frame([shade, 255 - shade, 90]), timing)
                        .is_err()
                    {
                        break;
                    }
                    n += 1;
                }
                n
            })
        };
        Self {
            stream,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops submitting, waits for every result; returns the frames submitted.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let n = self
            .thread
            .take()
            .map(|t| t.join().expect("producer"))
            .unwrap_or(0);
        assert!(self.stream.drain(Duration::from_secs(60)), "drain");
        n
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn server() -> Arc<Server> {
    Server::start(ServerConfig::new("127.0.0.1:0")).expect("server")
}

pub async fn client(server: &Server) -> CliptagClient<Channel> {
    let url = format!("http://{}", server.local_addr());
    CliptagClient::connect(url).await.expect("connect")
}

/// A label set of these names, everything else at its default.
pub fn set(names: &[&str]) -> cliptag_service::v1::LabelSet {
    cliptag_service::v1::LabelSet {
        labels: names
            .iter()
            .map(|n| cliptag_service::v1::Label {
                name: n.to_string(),
                prompts: vec![],
            })
            .collect(),
        ..Default::default()
    }
}
