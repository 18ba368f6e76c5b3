//! What the gRPC server and the web console share: a listener bound on the caller's
//! thread (so a taken address is an error at once), and a small tokio runtime on a
//! thread of its own serving it until told to stop; stopping waits for that thread.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use crate::server::ServerError;

/// A server running in the background; dropping it stops it.
pub(crate) struct Background {
    local: SocketAddr,
    shutdown: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Binds `addr`, then runs `serve(listener, stop)` on a runtime of `threads` worker
    /// threads named `name`. `stop` turns true when the server should stop; connections
    /// still open `grace` after `serve` returns are cut.
    pub(crate) fn start<F>(
        addr: SocketAddr,
        threads: usize,
        name: &str,
        grace: Duration,
        serve: impl FnOnce(TcpListener, watch::Receiver<bool>) -> F + Send + 'static,
    ) -> Result<Self, ServerError>
    where
        F: Future<Output = ()>,
    {
        let listener = TcpListener::bind(addr).map_err(|source| ServerError::Bind {
            address: addr,
            source,
        })?;
        let local = listener.local_addr().map_err(|source| ServerError::Bind {
            address: addr,
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(ServerError::Runtime)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .enable_all()
            .build()
            .map_err(ServerError::Runtime)?;
        let (shutdown, stop) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name(format!("{name}-main"))
            .spawn(move || {
                runtime.block_on(serve(listener, stop));
                runtime.shutdown_timeout(grace);
            })
            .map_err(ServerError::Runtime)?;
        Ok(Self {
            local,
            shutdown,
            thread: Some(thread),
        })
    }

    /// The address it listens on (with the port picked when 0 was asked for).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
