//! Serving: one gRPC server per process and address, on its own small tokio runtime, so
//! that no GStreamer thread ever runs async code.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use cliptag_proto::v1::cliptag_server::CliptagServer;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, ServerTlsConfig};

use crate::background::Background;
use crate::service::CliptagService;

/// Threads of a server's runtime: enough for a hundred subscribers on loopback, few
/// enough to leave the cores to inference.
const RUNTIME_THREADS: usize = 2;

/// How long a stopping server waits for clients to read the end of their streams.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// TLS from PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// How a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// `host:port`; a bare port means `127.0.0.1:port`, port 0 picks a free one.
    pub address: String,
    /// When set, label changes need `authorization: Bearer <token>`.
    pub token: Option<String>,
    /// When set, the server speaks TLS only.
    pub tls: Option<TlsFiles>,
}

impl ServerConfig {
    /// A plain-text server on `address` without a token.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            token: None,
            tls: None,
        }
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address does not parse.
    #[error("invalid address {address:?}: {reason}")]
    Address {
        /// As given.
        address: String,
        /// Why.
        reason: String,
    },
    /// Binding failed (in use, not a local address, no permission).
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The system's reason.
        source: std::io::Error,
    },
    /// A TLS file cannot be read or used.
    #[error("TLS: {0}")]
    Tls(String),
    /// A server already runs on the address with another token or TLS setting.
    #[error("a gRPC server already runs on {0} with another token or TLS setting")]
    Conflict(String),
    /// The runtime could not start.
    #[error("cannot start the server's runtime: {0}")]
    Runtime(std::io::Error),
}

/// `host:port`, or a bare port on loopback.
pub fn parse_address(address: &str) -> Result<SocketAddr, ServerError> {
    let invalid = |reason: &str| ServerError::Address {
        address: address.to_string(),
        reason: reason.to_string(),
    };
    if let Ok(port) = address.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Ok(addr);
    }
    use std::net::ToSocketAddrs;
    address
        .to_socket_addrs()
        .map_err(|e| invalid(&e.to_string()))?
        .next()
        .ok_or_else(|| invalid("resolves to no address"))
}

/// A running server. Dropping the last handle stops it: detection streams end cleanly,
/// then the server closes its connections.
pub struct Server {
    config: ServerConfig,
    background: Background,
}

impl Server {
    /// Starts a server that this caller alone owns.
    pub fn start(config: ServerConfig) -> Result<Arc<Self>, ServerError> {
        let addr = parse_address(&config.address)?;
        let mut builder = tonic::transport::Server::builder();
        if let Some(files) = &config.tls {
            builder = builder
                .tls_config(tls_config(files)?)
                .map_err(|e| ServerError::Tls(e.to_string()))?;
        }
        let token = config.token.clone();
        let background = Background::start(
            addr,
            RUNTIME_THREADS,
            "cliptag-grpc",
            SHUTDOWN_GRACE,
            move |listener, stop| {
                let service = CliptagService::new(token, stop.clone());
                serve(listener, builder, service, stop)
            },
        )?;
        Ok(Arc::new(Self { config, background }))
    }

    /// The server of this process on `config.address`, started if there is none. Every
    /// caller naming the same address shares it; it stops when the last one lets go.
    /// Asking for a running address with another token or TLS setting is an error.
    pub fn shared(config: ServerConfig) -> Result<Arc<Self>, ServerError> {
        // "50051" and "127.0.0.1:50051" are the same server.
        let key = parse_address(&config.address)?.to_string();
        let mut servers = crate::hub().servers();
        servers.retain(|_, s| s.strong_count() > 0);
        if let Some(server) = servers.get(&key).and_then(Weak::upgrade) {
            if (&server.config.token, &server.config.tls) != (&config.token, &config.tls) {
                return Err(ServerError::Conflict(key));
            }
            return Ok(server);
        }
        let server = Self::start(config)?;
        servers.insert(key, Arc::downgrade(&server));
        Ok(server)
    }

    /// The address it listens on (with the port picked when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.background.local_addr()
    }

    /// Whether label changes need a token.
    pub fn has_token(&self) -> bool {
        self.config.token.is_some()
    }
}

fn tls_config(files: &TlsFiles) -> Result<ServerTlsConfig, ServerError> {
    let read = |path: &PathBuf| {
        std::fs::read(path)
            .map_err(|e| ServerError::Tls(format!("cannot read {}: {e}", path.display())))
    };
    let identity = Identity::from_pem(read(&files.cert)?, read(&files.key)?);
    Ok(ServerTlsConfig::new().identity(identity))
}

async fn serve(
    listener: TcpListener,
    mut builder: tonic::transport::Server,
    service: CliptagService,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("gRPC listener failed: {e}");
            return;
        }
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<CliptagServer<CliptagService>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(cliptag_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // Both reflection versions: grpcurl and grpcio's client still speak v1alpha.
    let (reflection_v1, reflection_v1alpha) =
        match (reflection().build_v1(), reflection().build_v1alpha()) {
            (Ok(v1), Ok(v1alpha)) => (v1, v1alpha),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!("gRPC reflection failed: {e}");
                return;
            }
        };
    let router = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        // Room for the largest image ClassifyImage takes, plus the rest of the message.
        .add_service(
            CliptagServer::new(service)
                .max_decoding_message_size(crate::service::MAX_IMAGE_BYTES + (64 << 10)),
        );
    let mut stopped = stop.clone();
    let shutdown = async move {
        let _ = stopped.wait_for(|s| *s).await;
        health
            .set_not_serving::<CliptagServer<CliptagService>>()
            .await;
    };
    // Without TCP_NODELAY, small detection messages wait for delayed ACKs (40 ms).
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let serving = tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown));
    tokio::select! {
        done = serving => match done {
            Ok(Err(e)) => tracing::error!("gRPC server failed: {e}"),
            Err(e) => tracing::error!("gRPC server failed: {e}"),
            Ok(Ok(())) => {}
        },
        // Graceful shutdown waits for every response to finish; a client that stopped
        // reading would hold it forever.
        _ = async {
            let _ = stop.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {}
    }
}
