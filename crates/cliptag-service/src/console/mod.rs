//! The web console: one page, compiled into the binary, that shows each stream's
//! picture, its labels as they change and its counters, and edits its label set. It
//! speaks a small JSON and server-sent-events API ([`api`]) whose every operation is the
//! gRPC service's own, so the two can never disagree. Loopback by default; label changes
//! need the server's token when it has one (`Authorization: Bearer <token>`).
//!
//! ```no_run
//! use cliptag_service::console::{Console, ConsoleConfig, Snapshots};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let snapshots = Snapshots::new();
//! let console = Console::start(ConsoleConfig::new("127.0.0.1:8080", snapshots.clone()))?;
//! println!("console on http://{}/", console.local_addr());
//! // The program running the pipeline puts each stream's latest JPEG on the board:
//! snapshots.put("main", std::fs::read("frame.jpg")?);
//! # Ok(()) }
//! ```

mod api;
mod snapshots;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

pub use snapshots::Snapshots;
use tokio::sync::watch;

use crate::background::Background;
use crate::server::{ServerError, parse_address};
use crate::service::CliptagService;

/// Threads of the console's runtime: a page or two, a few requests a second each.
const RUNTIME_THREADS: usize = 1;

/// How long a stopping console waits for its responses to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// How the console listens.
#[derive(Clone)]
pub struct ConsoleConfig {
    /// `host:port`; a bare port means `127.0.0.1:port`, port 0 picks a free one.
    pub address: String,
    /// When set, label changes need `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Where the streams' pictures come from.
    pub snapshots: Snapshots,
}

impl ConsoleConfig {
    /// A console on `address` without a token.
    pub fn new(address: impl Into<String>, snapshots: Snapshots) -> Self {
        Self {
            address: address.into(),
            token: None,
            snapshots,
        }
    }
}

/// A running console; dropping it stops it (open pages lose their connection).
pub struct Console {
    background: Background,
}

impl Console {
    /// Binds `config.address` and serves there on a small runtime of its own.
    pub fn start(config: ConsoleConfig) -> Result<Self, ServerError> {
        let addr = parse_address(&config.address)?;
        // A name (not an address) in --http: requests may name it in `Host`.
        let host = config
            .address
            .rsplit_once(':')
            .map_or(config.address.as_str(), |(host, _)| host);
        let host_name = (host.parse::<std::net::IpAddr>().is_err() && !host.starts_with('['))
            .then(|| host.to_string())
            .filter(|h| !h.is_empty());
        let background = Background::start(
            addr,
            RUNTIME_THREADS,
            "cliptag-http",
            SHUTDOWN_GRACE,
            move |listener, stop| {
                let shared = api::Shared {
                    host_name,
                    token_required: config.token.is_some(),
                    service: CliptagService::new(config.token, stop.clone()),
                    snapshots: config.snapshots,
                };
                serve(listener, api::router(shared), stop)
            },
        )?;
        Ok(Self { background })
    }

    /// The address it listens on (with the port picked when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.background.local_addr()
    }
}

async fn serve(listener: TcpListener, router: axum::Router, mut stop: watch::Receiver<bool>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("console listener failed: {e}");
            return;
        }
    };
    let mut stopped = stop.clone();
    let serving = axum::serve(listener, router).with_graceful_shutdown(async move {
        let _ = stopped.wait_for(|s| *s).await;
    });
    tokio::select! {
        done = serving => if let Err(e) = done {
            tracing::error!("console failed: {e}");
        },
        // Open event streams would hold a graceful shutdown forever.
        _ = async {
            let _ = stop.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {}
    }
}
