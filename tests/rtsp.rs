//! `cliptag serve` on real network cameras: GStreamer's RTSP server (through PyGObject,
//! `tests/python/rtsp_server.py`) serves two live mounts; `cliptag serve` tags both and a
//! looping file on one engine, batched together. Then one camera goes away (its mount
//! removed, its connection closed): that stream is reported restarting with growing
//! waits while the others keep their rate, and tags again once the camera is back. Then
//! a camera hangs with its connection open: the stall watchdog restarts that stream.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cliptag_end_to_end::{Running, frames_in_shared_batches, list_streams, make_clip, repo_root};
use serde_json::Value;

/// The RTSP server process, driven through its stdin.
struct RtspServer {
    child: Child,
    stdin: ChildStdin,
    answers: mpsc::Receiver<String>,
    port: u16,
}

impl RtspServer {
    fn start(mounts: &[&str]) -> Self {
        let mut child = Command::new("/usr/bin/python3")
            .arg(repo_root().join("tests/python/rtsp_server.py"))
            .args(mounts)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with gir1.2-gst-rtsp-server-1.0 (Debian)");
        let stdin = child.stdin.take().expect("the server's stdin");
        let stdout = child.stdout.take().expect("the server's stdout");
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let ready = answers
            .recv_timeout(Duration::from_secs(20))
            .expect("the RTSP server did not start");
        let port = ready
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the RTSP server: {ready}"));
        Self {
            child,
            stdin,
            answers,
            port,
        }
    }

    fn url(&self, mount: &str) -> String {
        format!("rtsp://127.0.0.1:{}/{mount}", self.port)
    }

    /// Sends one command (kill, start, freeze, thaw) and waits for its answer.
    fn command(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").expect("write to the RTSP server");
        let answer = self
            .answers
            .recv_timeout(Duration::from_secs(10))
            .expect("no answer from the RTSP server");
        assert_eq!(answer, format!("ok {command}"));
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn counter(streams: &HashMap<String, Value>, id: &str, key: &str) -> u64 {
    streams.get(id).and_then(|s| s[key].as_u64()).unwrap_or(0)
}

fn state(streams: &HashMap<String, Value>, id: &str) -> String {
    streams
        .get(id)
        .and_then(|s| s["health"]["state"].as_str())
        .unwrap_or("absent")
        .to_string()
}

/// Polls the stream list until `done` holds, or fails with `what` after `timeout`.
fn wait_until(
    address: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&HashMap<String, Value>) -> bool,
) -> HashMap<String, Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = list_streams(address);
        if done(&now) {
            return now;
        }
        assert!(Instant::now() < deadline, "{what}: {now:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Frames each of `ids` took in over `window` (a stream started again in the window
/// counts from its new start).
fn frames_over(address: &str, ids: &[&str], window: Duration) -> Vec<u64> {
    let before = list_streams(address);
    std::thread::sleep(window);
    let after = list_streams(address);
    ids.iter()
        .map(|id| {
            let (before, after) = (
                counter(&before, id, "frames_in"),
                counter(&after, id, "frames_in"),
            );
            if after >= before {
                after - before
            } else {
                after
            }
        })
        .collect()
}

#[test]
fn rtsp_cameras_and_a_file_tag_together_and_a_lost_camera_restarts_alone() {
    let mut rtsp = RtspServer::start(&["ball", "snow"]);
    let dir = tempfile::tempdir().expect("a temporary directory");
    // 30 s at 15 frames a second: no loop inside the measured windows.
    make_clip(dir.path(), 450);
    let config = dir.path().join("cliptag.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
grpc = "127.0.0.1:0"

[engines.shared]
max_batch = 8
max_latency_ms = 80

[[streams]]
id = "door"
uri = "{ball}"
engine = "shared"
stall_timeout = 3

[[streams]]
id = "yard"
uri = "{snow}"
engine = "shared"
stall_timeout = 3

[[streams]]
id = "file"
file = "clip.webm"
engine = "shared"
restart = "always"
"#,
            ball = rtsp.url("ball"),
            snow = rtsp.url("snow"),
        ),
    )
    .expect("write the config");
    let config_arg = config.display().to_string();
    let run = Running::start_command(&["serve", "--config", &config_arg], Stdio::null());
    let ids = ["door", "yard", "file"];

    // All three tag, and frames of different streams share forward passes.
    let seen = wait_until(
        &run.address,
        Duration::from_secs(60),
        "the three streams did not all tag",
        |now| {
            ids.iter()
                .all(|id| counter(now, id, "inferred") >= 30 && state(now, id) == "running")
        },
    );
    let shared_batches = frames_in_shared_batches(&seen);
    assert!(
        shared_batches > 0,
        "no batch held frames of two streams: {seen:#?}"
    );
    let baseline = frames_over(&run.address, &["door", "file"], Duration::from_secs(3));

    // The yard camera goes away: its stream is reported failing and retried with growing
    // waits; the others keep their rate.
    rtsp.command("kill snow");
    let down = wait_until(
        &run.address,
        Duration::from_secs(15),
        "the lost camera's stream was not restarted",
        |now| {
            now.get("yard")
                .is_some_and(|s| s["health"]["restarts"].as_u64().unwrap_or(0) >= 2)
        },
    );
    let yard = &down["yard"]["health"];
    assert!(
        yard["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{yard}"
    );
    let during = frames_over(&run.address, &["door", "file"], Duration::from_secs(3));
    println!(
        "frames in 3 s, before / while the yard camera was gone: door {} / {}, file {} / {}",
        baseline[0], during[0], baseline[1], during[1]
    );
    for (i, id) in ["door", "file"].iter().enumerate() {
        // Live at 15 frames a second; two thirds of the rate before, at least.
        assert!(
            during[i] * 3 >= baseline[i] * 2 && during[i] >= 20,
            "{id}: {} frames in 3 s before the camera went away, {} after",
            baseline[i],
            during[i]
        );
    }
    assert_ne!(
        state(&list_streams(&run.address), "yard"),
        "running",
        "a stream whose camera is gone is not reported running"
    );

    // The camera comes back: the stream is running and tagging again on its own.
    rtsp.command("start snow");
    let back = wait_until(
        &run.address,
        Duration::from_secs(30),
        "the stream did not come back with its camera",
        |now| state(now, "yard") == "running" && counter(now, "yard", "inferred") >= 15,
    );
    assert!(back["yard"]["health"]["restarts"].as_u64().unwrap_or(0) >= 2);

    // The door camera hangs with its connection open: no error ever comes, the stall
    // watchdog restarts the stream after 3 s without a frame.
    rtsp.command("freeze ball");
    let stalled = wait_until(
        &run.address,
        Duration::from_secs(20),
        "the hung camera's stream was not restarted",
        |now| {
            now.get("door").is_some_and(|s| {
                s["health"]["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("no frame for 3 s"))
            })
        },
    );
    // Reconnected to a camera that still sends nothing, it is not reported running.
    assert_ne!(state(&stalled, "door"), "running", "{:#?}", stalled["door"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_ne!(state(&list_streams(&run.address), "door"), "running");
    rtsp.command("thaw ball");
    wait_until(
        &run.address,
        Duration::from_secs(30),
        "the stream did not recover with its camera",
        |now| state(now, "door") == "running" && counter(now, "door", "inferred") >= 15,
    );

    let (exit, rest) = run.interrupt();
    assert!(exit.success(), "{rest:?}");
}
