//! A headless Chromium driven through the DevTools protocol over a pipe
//! (`--remote-debugging-pipe`: JSON messages ending in a NUL byte, commands on the
//! browser's descriptor 3, replies and events on 4), so that no WebDriver or WebSocket
//! library stands between a test and the browser.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use serde_json::{Value, json};

/// Debian's browsers, headless shell first.
const BROWSERS: [&str; 3] = [
    "/usr/bin/chromium-headless-shell",
    "/usr/lib/chromium/chromium-headless-shell",
    "/usr/bin/chromium",
];

/// How long one command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The browser executable: `CLIPTAG_CHROMIUM`, or one of Debian's.
pub fn browser_path() -> Option<PathBuf> {
    std::env::var_os("CLIPTAG_CHROMIUM")
        .map(PathBuf::from)
        .into_iter()
        .chain(BROWSERS.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

/// A browser with one page.
pub struct Browser {
    child: Child,
    commands: File,
    replies: mpsc::Receiver<Value>,
    session: String,
    next_id: u64,
    log: PathBuf,
    _profile: tempfile::TempDir,
}

/// A pipe with both ends closed on exec: (read, write).
fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: pipe2 succeeded: both are new descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Browser {
    /// Starts the browser with a `width` x `height` window and attaches to its page.
    pub fn start(executable: &Path, width: u32, height: u32) -> Result<Self> {
        let profile = tempfile::tempdir().context("a profile directory")?;
        // What the browser says goes to a file, shown when a command fails.
        let log = profile.path().join("browser.log");
        let log_file = File::create(&log).context("the browser's log")?;
        let (to_browser_read, to_browser_write) = pipe()?;
        let (from_browser_read, from_browser_write) = pipe()?;
        let (cmd_fd, reply_fd) = (
            std::os::fd::AsRawFd::as_raw_fd(&to_browser_read),
            std::os::fd::AsRawFd::as_raw_fd(&from_browser_write),
        );
        let mut command = Command::new(executable);
        command
            .args([
                "--headless",
                "--remote-debugging-pipe",
                // Tests run as root in containers, where the sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                // Containers give /dev/shm a few MB; the browser would crash on it.
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        // SAFETY: only async-signal-safe calls (dup2) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // The pipes may themselves be 3 or 4: move them out of the way first.
                // dup2 clears close-on-exec on the copies: the browser keeps 3 and 4.
                let cmd = libc::fcntl(cmd_fd, libc::F_DUPFD_CLOEXEC, 10);
                let reply = libc::fcntl(reply_fd, libc::F_DUPFD_CLOEXEC, 10);
                if cmd < 0 || reply < 0 || libc::dup2(cmd, 3) < 0 || libc::dup2(reply, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", executable.display()))?;
        drop((to_browser_read, from_browser_write));
        let (tx, replies) = mpsc::channel();
        let reader = File::from(from_browser_read);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                message.pop_if(|b| *b == 0);
                if let Ok(value) = serde_json::from_slice::<Value>(&message)
                    && tx.send(value).is_err()
                {
                    return;
                }
                message.clear();
            }
        });
        let mut browser = Self {
            child,
            commands: File::from(to_browser_write),
            replies,
            session: String::new(),
            next_id: 0,
            log,
            _profile: profile,
        };
        // A slow machine may not have opened the first page yet.
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let page = loop {
            let targets = browser.command("Target.getTargets", json!({}))?;
            let page = targets["targetInfos"]
                .as_array()
                .and_then(|t| t.iter().find(|t| t["type"] == "page"))
                .and_then(|t| t["targetId"].as_str())
                .map(String::from);
            match page {
                Some(page) => break page,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                None => bail!(
                    "the browser opened no page: {targets}{}",
                    browser.log_tail()
                ),
            }
        };
        let attached = browser.command(
            "Target.attachToTarget",
            json!({"targetId": page, "flatten": true}),
        )?;
        browser.session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no session: {attached}"))?
            .to_string();
        browser.command("Page.enable", json!({}))?;
        browser.command("Runtime.enable", json!({}))?;
        Ok(browser)
    }

    /// Sends a command (to the page once attached) and waits for its reply.
    pub fn command(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&message)?;
        bytes.push(0);
        if let Err(e) = self.commands.write_all(&bytes) {
            bail!("{method}: the browser is gone ({e}){}", self.log_tail());
        }
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(reply) = self.replies.recv_timeout(left) else {
                bail!(
                    "{method}: no reply within {COMMAND_TIMEOUT:?}{}",
                    self.log_tail()
                );
            };
            // Events (no id) and replies to nothing pending are skipped.
            if reply["id"].as_u64() != Some(id) {
                continue;
            }
            if let Some(error) = reply.get("error") {
                bail!("{method}: {error}");
            }
            return Ok(reply["result"].clone());
        }
    }

    /// The end of what the browser wrote to its log, to show with an error.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        if tail.is_empty() {
            String::new()
        } else {
            format!("\nthe browser's log ends:\n{tail}")
        }
    }

    /// Loads `url` in the page.
    pub fn navigate(&mut self, url: &str) -> Result<()> {
        let reply = self.command("Page.navigate", json!({"url": url}))?;
        if let Some(error) = reply["errorText"].as_str() {
            bail!("cannot load {url}: {error}");
        }
        Ok(())
    }

    /// Evaluates a JavaScript expression in the page (awaiting it when it is a promise)
    /// and returns its value; a thrown exception is an error with its text.
    pub fn eval(&mut self, expression: &str) -> Result<Value> {
        let reply = self.command(
            "Runtime.evaluate",
            json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
        )?;
        if let Some(e) = reply.get("exceptionDetails") {
            bail!(
                "{expression}: {}",
                e["exception"]["description"]
                    .as_str()
                    .unwrap_or("an exception")
            );
        }
        Ok(reply["result"]["value"].clone())
    }

    /// Evaluates `expression` until it returns something other than null, false or
    /// undefined, and returns that; an error when `timeout` passes first (with the last
    /// value seen).
    pub fn wait_for(&mut self, expression: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            match self.eval(expression) {
                Ok(Value::Null | Value::Bool(false)) => {}
                Ok(value) => return Ok(value),
                Err(e) => last = json!(e.to_string()),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("waited {timeout:?} for {expression} (last: {last})")
    }

    /// A PNG of the page as it shows now.
    pub fn screenshot(&mut self) -> Result<Vec<u8>> {
        let reply = self.command("Page.captureScreenshot", json!({"format": "png"}))?;
        let data = reply["data"]
            .as_str()
            .ok_or_else(|| anyhow!("no screenshot data"))?;
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .context("the screenshot's base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Browser.close belongs to the browser, not to the page's session.
        self.session.clear();
        let _ = self.command("Browser.close", json!({}));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
