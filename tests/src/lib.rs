//! What the end-to-end tests and the soak run share: finding the built `cliptag` binary,
//! starting `cliptag run` and reading where it serves, the Python client's interpreter,
//! reading a process's resources from `/proc`, the plugin for `GST_PLUGIN_PATH`, and a
//! headless browser ([`browser`]).
//!
//! The tests run the binaries `cargo test --workspace` builds (as `./x test` runs it);
//! `cargo build -p cliptag-cli` first when running this package's tests alone.

pub mod brokers;
pub mod browser;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The `cliptag` binary built beside the running executable (`target/<profile>/`).
pub fn cliptag_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // Tests run from target/<profile>/deps/, programs from target/<profile>/.
    let candidates = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("cliptag"))
        .collect::<Vec<_>>();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no cliptag binary in {candidates:?}: build it first (cargo build -p cliptag-cli; \
                 ./x test and cargo test --workspace do)"
            )
        })
}

/// A `cliptag run` child, the address it serves on, and what it writes to stderr.
pub struct Running {
    /// The process.
    pub child: Child,
    /// `host:port` it serves gRPC on.
    pub address: String,
    /// Its stderr, line by line.
    pub stderr: mpsc::Receiver<String>,
}

impl Running {
    /// `cliptag run --grpc 127.0.0.1:0 <args>`, its stdout as `stdout` says; returns once
    /// it says where it serves.
    pub fn start(args: &[&str], stdout: Stdio) -> Self {
        let mut all = vec!["run", "--grpc", "127.0.0.1:0"];
        all.extend_from_slice(args);
        Self::start_command(&all, stdout)
    }

    /// `cliptag <args>` (a command that serves gRPC and says where); returns once it
    /// says where it serves.
    pub fn start_command(args: &[&str], stdout: Stdio) -> Self {
        let mut child = Command::new(cliptag_bin())
            .args(args)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("cliptag run");
        let (tx, stderr) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut address = None;
        while address.is_none() {
            let line = stderr
                .recv_timeout(Duration::from_secs(120))
                .expect("cliptag run says where it serves");
            address = line
                .strip_prefix("cliptag: serving cliptag.v1 on ")
                .and_then(|rest| rest.split_whitespace().next())
                .map(String::from);
        }
        Self {
            child,
            address: address.unwrap_or_default(),
            stderr,
        }
    }

    /// The first word after `prefix` on the next line of stderr that starts with it
    /// (an address it announces), waiting up to a minute. Lines before it are passed
    /// over: the announcements come in a fixed order (gRPC, metrics, console).
    pub fn said(&self, prefix: &str) -> String {
        loop {
            let line = self
                .stderr
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("cliptag said no line starting {prefix:?}"));
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
            }
        }
    }

    /// SIGINT, as Ctrl-C sends; the exit status and the rest of stderr.
    pub fn interrupt(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let exit = self.child.wait().expect("wait");
        // The reader thread ends at the end of the pipe: every line is in.
        let rest = self.stderr.iter().collect();
        (exit, rest)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python with grpcio that `./x test` prepares (`CLIPTAG_TEST_PYTHON`).
pub fn python() -> PathBuf {
    match std::env::var_os("CLIPTAG_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "CLIPTAG_TEST_PYTHON is not set: `./x test` sets it to a Python with grpcio, \
             grpcio-tools, grpcio-health-checking and grpcio-reflection"
        ),
    }
}

/// What a process holds: resident memory, threads, open file descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// Threads.
    pub threads: usize,
    /// Open file descriptors.
    pub fds: usize,
}

/// Reads `pid`'s resources from `/proc` (`None` once it has exited).
pub fn resources(pid: u32) -> Option<Resources> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let status = std::fs::read_to_string(proc.join("status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(Resources {
        rss_kib: field("VmRSS:")?,
        threads: field("Threads:")? as usize,
        fds: std::fs::read_dir(proc.join("fd")).ok()?.count(),
    })
}

/// A directory holding only the plugin (`libgstcliptag.so`), for `GST_PLUGIN_PATH`, and
/// a registry file of its own for `GST_REGISTRY`: cargo builds the library next to the
/// tests in `deps/`, among files GStreamer must not scan.
pub fn plugin_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap_or_default();
        let candidates: Vec<PathBuf> = exe
            .ancestors()
            .skip(1)
            .take(2)
            .map(|dir| dir.join("libgstcliptag.so"))
            .collect();
        let lib = candidates
            .iter()
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("no libgstcliptag.so in {candidates:?}"));
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::copy(lib, dir.path().join("libgstcliptag.so")).expect("copy the plugin");
        dir
    })
    .path()
    .to_path_buf()
}

/// One HTTP/1.1 request on its own connection: the status and the body.
pub fn http(addr: &str, method: &str, path: &str, headers: &[&str], body: &[u8]) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).expect("connect to the server");
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|h| h.starts_with("host:")) {
        request.push_str(&format!("host: {addr}\r\n"));
    }
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    conn.write_all(request.as_bytes()).expect("send");
    // A server refusing a large body may close before reading all of it; its reply
    // is still there to read.
    let _ = conn.write_all(body);
    let mut reply = Vec::new();
    let _ = conn.read_to_end(&mut reply);
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete reply");
    let head = String::from_utf8_lossy(&reply[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    (status, reply[split + 4..].to_vec())
}

/// Writes `clip.webm` into `dir`: `frames` frames of videotestsrc's ball, 320x240 at 15
/// a second, VP8 (Debian's good plugins).
pub fn make_clip(dir: &Path, frames: u32) {
    let status = Command::new("gst-launch-1.0")
        .current_dir(dir)
        .args([
            "-q",
            "videotestsrc",
            "pattern=ball",
            &format!("num-buffers={frames}"),
            "!",
        ])
        .args(["video/x-raw,width=320,height=240,framerate=15/1", "!"])
        .args(["vp8enc", "deadline=1", "!", "webmmux", "!"])
        .args(["filesink", "location=clip.webm"])
        .status()
        .expect("gst-launch-1.0 (Debian gstreamer1.0-tools)");
    assert!(
        status.success(),
        "cannot make clip.webm in {}",
        dir.display()
    );
}

/// The metrics address (host:port) a `cliptag run --metrics` says after where it serves.
pub fn metrics_addr(run: &Running) -> String {
    run.said("cliptag: metrics on http://")
        .trim_end_matches("/metrics")
        .to_string()
}

/// `cliptag streams --json` against `address`: each stream's line, by id.
pub fn list_streams(address: &str) -> std::collections::HashMap<String, serde_json::Value> {
    let out = Command::new(cliptag_bin())
        .args(["streams", "--server", address, "--json"])
        .output()
        .expect("cliptag streams");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| (v["id"].as_str().unwrap_or_default().to_string(), v))
        .collect()
}

/// Frames of the listed streams that were inferred in batches of more than one frame
/// (with several streams on one engine: batches that held frames of two streams).
pub fn frames_in_shared_batches(
    streams: &std::collections::HashMap<String, serde_json::Value>,
) -> u64 {
    streams
        .values()
        .map(|s| {
            s["batch_sizes"].as_array().map_or(0, |b| {
                b.iter()
                    .skip(2)
                    .filter_map(serde_json::Value::as_u64)
                    .sum::<u64>()
            })
        })
        .sum()
}
