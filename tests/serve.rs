//! `cliptag serve --config`: three streams (two live test patterns and a file played
//! in a loop) on one engine tag together and are batched together; a fourth whose
//! source is missing is restarted with growing waits while the others keep their rate;
//! `--check` validates without starting anything; a bad file names its line and key and
//! starts nothing; Ctrl-C stops everything cleanly.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cliptag_end_to_end::{Running, cliptag_bin, frames_in_shared_batches, list_streams, make_clip};
use serde_json::Value;

const CONFIG: &str = r#"
[server]
grpc = "127.0.0.1:0"

[engines.shared]
max_batch = 8
max_latency_ms = 80

[[streams]]
id = "ball"
test_pattern = "ball"
engine = "shared"

[[streams]]
id = "snow"
test_pattern = "snow"
engine = "shared"
labels = ["tv static", "a moving ball"]

[[streams]]
id = "file"
file = "clip.webm"
engine = "shared"
restart = "always"

[[streams]]
id = "broken"
uri = "file:///nonexistent/camera.webm"
engine = "shared"
"#;

#[test]
fn streams_on_one_engine_batch_together_and_a_failing_source_restarts_alone() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    make_clip(dir.path(), 30);
    let config = dir.path().join("cliptag.toml");
    std::fs::write(&config, CONFIG).expect("write the config");

    let check = Command::new(cliptag_bin())
        .args(["serve", "--check", "--config"])
        .arg(&config)
        .output()
        .expect("cliptag serve --check");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let listed = String::from_utf8_lossy(&check.stdout);
    assert!(listed.contains("4 stream(s), 1 engine(s)"), "{listed}");

    let config_arg = config.display().to_string();
    let run = Running::start_command(&["serve", "--config", &config_arg], Stdio::null());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut restarts = Vec::new();
    let seen = loop {
        while let Ok(line) = run.stderr.try_recv() {
            if line.contains("stream \"broken\" failed") && line.contains("restarting in") {
                restarts.push(line);
            }
        }
        let now = list_streams(&run.address);
        let all_tagging = ["ball", "snow", "file"].iter().all(|id| {
            now.get(*id)
                .is_some_and(|s| s["inferred"].as_u64().unwrap_or(0) >= 20)
        });
        if all_tagging && restarts.len() >= 2 {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "streams: {now:?}\nrestarts: {restarts:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    // The stream that cannot start is listed as restarting, with its restarts and why.
    let broken = &seen["broken"]["health"];
    assert!(
        broken["state"] == "restarting" || broken["state"] == "starting",
        "{broken}"
    );
    assert!(broken["restarts"].as_u64().unwrap_or(0) >= 1, "{broken}");
    assert!(
        broken["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("nonexistent")),
        "{broken}"
    );
    assert_eq!(seen["broken"]["frames_in"], 0, "{broken}");
    for id in ["ball", "snow"] {
        let health = &seen[id]["health"];
        assert_eq!(health["state"], "running", "{id}: {health}");
        assert_eq!(health["restarts"], 0, "{id}: {health}");
    }
    // The file runs in a loop: each end counts as a restart, with no error.
    assert_eq!(seen["file"]["health"]["last_error"], Value::Null);
    assert!(
        restarts[0].contains("restarting in 1 s") && restarts[1].contains("restarting in 2 s"),
        "{restarts:?}"
    );
    // Frames of different streams shared forward passes.
    let batched = frames_in_shared_batches(&seen);
    assert!(batched > 0, "no batch held frames of two streams: {seen:?}");

    // The others keep their rate while the broken one keeps failing: the live ball
    // gains frames at about its 15 a second (two thirds of it at least, to leave room
    // for a loaded machine).
    let before = list_streams(&run.address)["ball"]["frames_in"]
        .as_u64()
        .unwrap_or(0);
    std::thread::sleep(Duration::from_secs(2));
    let after = list_streams(&run.address)["ball"]["frames_in"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        after - before >= 20,
        "ball gained {} frames in 2 s",
        after - before
    );

    let (exit, rest) = run.interrupt();
    assert!(exit.success(), "{rest:?}");
}

#[test]
fn a_bad_config_names_its_line_and_key_and_starts_nothing() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("cliptag.toml");
    std::fs::write(&config, "[server]\ngrpc = \"127.0.0.1:0\"\n\n[[streams]]\nid = \"a\"\ntest_pattern = \"ball\"\nintervall = 2\n")
        .expect("write");
    let out = Command::new(cliptag_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("cliptag serve");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&config.display().to_string())
            && err.contains("line 7")
            && err.contains("intervall"),
        "{err}"
    );
    assert!(!err.contains("serving"), "something started: {err}");
}

const BEFORE: &str = r#"
[server]
grpc = "127.0.0.1:0"

[[streams]]
id = "keep"
test_pattern = "ball"

[[streams]]
id = "drop"
test_pattern = "snow"

[[streams]]
id = "change"
test_pattern = "smpte"
labels = ["smpte color bars", "tv static"]
"#;

const AFTER: &str = r#"
[server]
grpc = "127.0.0.1:0"

[[streams]]
id = "keep"
test_pattern = "ball"

[[streams]]
id = "change"
test_pattern = "smpte"
labels = ["smpte color bars", "tv static", "a checkerboard"]

[[streams]]
id = "new"
test_pattern = "checkers-8"
"#;

fn wait_for_streams(address: &str, ids: &[&str]) -> std::collections::HashMap<String, Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = list_streams(address);
        let mut running: Vec<&str> = now.keys().map(String::as_str).collect();
        running.sort_unstable();
        let mut want = ids.to_vec();
        want.sort_unstable();
        if running == want
            && now
                .values()
                .all(|s| s["inferred"].as_u64().unwrap_or(0) > 0)
        {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "wanted {want:?}, running {running:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn sighup_applies_a_changed_file_without_touching_unchanged_streams() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("cliptag.toml");
    std::fs::write(&config, BEFORE).expect("write the config");
    let config_arg = config.display().to_string();
    let run = Running::start_command(&["serve", "--config", &config_arg], Stdio::null());
    let before = wait_for_streams(&run.address, &["keep", "drop", "change"]);
    let keep_before = before["keep"]["frames_in"].as_u64().unwrap_or(0);

    // A broken file is refused; everything runs on.
    std::fs::write(&config, "[[streams]]\nid = \n").expect("write");
    let sighup = |pid: u32| {
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    sighup(run.child.id());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = run
            .stderr
            .recv_timeout(Duration::from_secs(30))
            .expect("a log line");
        if line.contains("the running configuration stays") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broken file was not reported"
        );
    }
    wait_for_streams(&run.address, &["keep", "drop", "change"]);

    std::fs::write(&config, AFTER).expect("write the config");
    sighup(run.child.id());
    let after = wait_for_streams(&run.address, &["keep", "change", "new"]);
    assert!(
        after["keep"]["frames_in"].as_u64().unwrap_or(0) > keep_before,
        "the unchanged stream was restarted: {before:?} -> {after:?}"
    );
    let labels = Command::new(cliptag_bin())
        .args([
            "labels",
            "get",
            "--server",
            &run.address,
            "--stream",
            "change",
        ])
        .output()
        .expect("cliptag labels get");
    let shown = String::from_utf8_lossy(&labels.stdout);
    assert!(
        shown.contains("a checkerboard"),
        "the changed stream runs the new labels: {shown}"
    );
    let (exit, _) = run.interrupt();
    assert!(exit.success());
}
