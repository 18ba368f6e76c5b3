//! The options every gRPC client command shares, and the connection they describe.

use std::path::PathBuf;

use anyhow::{Context, Result};
use cliptag_service::v1::cliptag_client::CliptagClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// `--server`, `--tls-ca`, `--token`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The server: host:port, a bare port on 127.0.0.1, or a URL.
    #[arg(long, default_value = "127.0.0.1:50051", value_name = "ADDR")]
    pub server: String,
    /// Connect with TLS, trusting this PEM certificate (the server's or its CA's).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Name the server's certificate must carry (default: the host of --server).
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub tls_domain: Option<String>,
    /// Token for label changes (sent as `authorization: Bearer <token>`).
    #[arg(long, env = "CLIPTAG_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ClientArgs {
    /// The URL to connect to.
    fn url(&self) -> String {
        let scheme = if self.tls_ca.is_some() {
            "https"
        } else {
            "http"
        };
        if self.server.contains("://") {
            self.server.clone()
        } else if let Ok(port) = self.server.parse::<u16>() {
            format!("{scheme}://127.0.0.1:{port}")
        } else {
            format!("{scheme}://{}", self.server)
        }
    }

    /// Connects.
    pub async fn connect(&self) -> Result<CliptagClient<Channel>> {
        let url = self.url();
        let mut endpoint = Endpoint::from_shared(url.clone())
            .with_context(|| format!("invalid server address {:?}", self.server))?;
        if let Some(ca) = &self.tls_ca {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            if let Some(domain) = &self.tls_domain {
                tls = tls.domain_name(domain.clone());
            }
            endpoint = endpoint.tls_config(tls).context("TLS settings")?;
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        Ok(CliptagClient::new(channel))
    }

    /// A request carrying the token, if one was given.
    pub fn request<T>(&self, message: T) -> Result<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}")
                .parse()
                .context("the token cannot be sent as a header")?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// A status as one line: code and message.
pub fn describe(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

/// A small runtime for a client command.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
