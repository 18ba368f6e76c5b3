//! The servers a tagging command runs beside its pipelines (`run`, `serve`): the web
//! console and the metrics endpoint, bound first so that a taken address fails before
//! any model loads, and the gRPC server; stopped in that order when dropped.

use std::sync::Arc;

use anyhow::{Context, Result};
use cliptag_service::console::{Console, ConsoleConfig, Snapshots};
use cliptag_service::metrics::MetricsServer;
use cliptag_service::{Server, ServerConfig, TlsFiles};

/// Where to serve.
pub struct Endpoints {
    /// The gRPC address.
    pub grpc: String,
    /// Token for label changes (gRPC and the console).
    pub token: Option<String>,
    /// TLS for gRPC.
    pub tls: Option<TlsFiles>,
    /// The web console's address, if any.
    pub http: Option<String>,
    /// The metrics endpoint's address, if any.
    pub metrics: Option<String>,
}

/// The running servers.
pub struct Servers {
    /// The web console, when asked for.
    pub console: Option<Console>,
    /// The metrics endpoint, when asked for.
    pub metrics: Option<MetricsServer>,
    /// The gRPC server (shared with any element of the process naming its address).
    pub grpc: Arc<Server>,
    /// The streams' pictures the console shows.
    pub snapshots: Snapshots,
    tls: bool,
}

impl Servers {
    /// Starts them all.
    pub fn start(e: Endpoints) -> Result<Self> {
        let snapshots = Snapshots::new();
        let console = match &e.http {
            Some(address) => Some(
                Console::start(ConsoleConfig {
                    address: address.clone(),
                    token: e.token.clone(),
                    snapshots: snapshots.clone(),
                })
                .context("cannot start the web console")?,
            ),
            None => None,
        };
        let metrics = match &e.metrics {
            Some(address) => {
                Some(MetricsServer::start(address).context("cannot start the metrics endpoint")?)
            }
            None => None,
        };
        let tls = e.tls.is_some();
        let grpc = Server::shared(ServerConfig {
            address: e.grpc,
            token: e.token,
            tls: e.tls,
        })
        .context("cannot start the gRPC server")?;
        Ok(Self {
            console,
            metrics,
            grpc,
            snapshots,
            tls,
        })
    }

    /// Says where each serves (clients that connect after this find the streams).
    pub fn announce(&self) {
        let token = self.grpc.has_token();
        tracing::info!(
            "serving cliptag.v1 on {} ({}{})",
            self.grpc.local_addr(),
            if self.tls { "TLS" } else { "plain text" },
            if token {
                ", token required for label changes"
            } else {
                ""
            }
        );
        if let Some(metrics) = &self.metrics {
            tracing::info!("metrics on http://{}/metrics", metrics.local_addr());
        }
        if let Some(console) = &self.console {
            tracing::info!(
                "web console on http://{}/{}",
                console.local_addr(),
                if token {
                    " (token required for label changes)"
                } else {
                    ""
                }
            );
            if token && !console.local_addr().ip().is_loopback() {
                tracing::warn!(
                    "the console speaks plain HTTP: the token crosses the network \
                     unencrypted (put a TLS proxy in front of it, or keep it on loopback)"
                );
            }
        }
    }
}
