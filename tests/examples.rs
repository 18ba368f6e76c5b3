//! The client examples run against a live `cliptag run`: the Python one (grpcio) and
//! the Rust one (tonic) each follow a stream, add a label with a version check, and see
//! the new label scored on the frames that follow.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use cliptag_end_to_end::{Running, python, repo_root};
use serde_json::Value;

/// The Rust example, which `cargo test --workspace` builds (`target/<profile>/examples/`).
fn rust_example() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("examples/tag_client"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("no tag_client example built: cargo build -p cliptag-proto --example tag_client")
        })
}

#[test]
fn the_python_example_follows_a_stream_and_adds_a_label() {
    let run = Running::start(&["--stream-id", "py-example"], Stdio::null());
    let out = Command::new(python())
        .arg(repo_root().join("examples/python/tag_client.py"))
        .args([run.address.as_str(), "py-example", "concentric circles"])
        .output()
        .expect("run the Python example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["summary"] == true)
        .expect("a summary line");
    assert_eq!(summary["version"], 2, "{summary}");
    assert_eq!(summary["new_label_scored"], true, "{summary}");
    let (exit, _) = run.interrupt();
    assert!(exit.success());
}

#[test]
fn the_rust_example_follows_a_stream_and_adds_a_label() {
    let run = Running::start(&["--stream-id", "rs-example"], Stdio::null());
    let out = Command::new(rust_example())
        .args([
            format!("http://{}", run.address).as_str(),
            "rs-example",
            "concentric circles",
        ])
        .output()
        .expect("run the Rust example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("label set v2: added \"concentric circles\""),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains(" v2: ") && l.contains("concentric circles")),
        "{stdout}"
    );
    let (exit, _) = run.interrupt();
    assert!(exit.success());
}
