//! `cliptag run` as users run it: a real pipeline and gRPC server in one process, driven
//! by `cliptag labels` and `cliptag watch` processes and by a Python grpcio client whose
//! stubs are generated from the .proto in the test; Ctrl-C stops it cleanly.

use std::process::{Command, Output, Stdio};

use cliptag_end_to_end::{Running, cliptag_bin, python, repo_root};
use serde_json::Value;

fn cliptag(args: &[&str]) -> Output {
    Command::new(cliptag_bin())
        .args(args)
        .output()
        .expect("run cliptag")
}

/// `cliptag run` with the live test source changing pattern every second.
fn start(extra: &[&str]) -> Running {
    let mut args = vec!["--cycle", "1", "--duration", "120"];
    args.extend_from_slice(extra);
    Running::start(&args, Stdio::null())
}

fn json_lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn labels_and_watch_drive_a_running_pipeline_and_ctrl_c_stops_it() {
    let run = start(&["--stream-id", "cam"]);
    let server = run.address.clone();

    let streams = json_lines(&cliptag(&["streams", "--server", &server, "--json"]));
    assert_eq!(streams.len(), 1);
    assert_eq!(streams[0]["id"], "cam");
    assert_eq!(streams[0]["label_set_version"], 1);

    let set = json_lines(&cliptag(&[
        "labels",
        "set",
        "--server",
        &server,
        "--stream",
        "cam",
        "--if-version",
        "1",
        "--labels",
        "a moving ball,tv static,a pinwheel",
        "--json",
    ]));
    assert_eq!(set[0]["version"], 2);
    let refused = cliptag(&[
        "labels",
        "set",
        "--server",
        &server,
        "--stream",
        "cam",
        "--if-version",
        "1",
        "--labels",
        "x,y",
    ]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("FailedPrecondition"), "{message}");
    let added = json_lines(&cliptag(&[
        "labels",
        "add",
        "--server",
        &server,
        "--stream",
        "cam",
        "--label",
        "concentric circles",
        "--json",
    ]));
    assert_eq!(added[0]["version"], 3);
    assert_eq!(added[0]["labels"][3], "concentric circles");

    let watched = json_lines(&cliptag(&[
        "watch", "--server", &server, "--stream", "cam", "--all", "--json", "--count", "30",
    ]));
    assert_eq!(watched.len(), 30);
    // Frames whose inference began before a change may still be on their way, scored by
    // the set they began with (even the first one); after them, only the newest set.
    // Never a mix within a frame, never back to an older version.
    let sets: [&[&str]; 3] = [
        &[
            "smpte color bars",
            "a moving ball",
            "tv static",
            "a checkerboard",
        ],
        &["a moving ball", "tv static", "a pinwheel"],
        &[
            "a moving ball",
            "tv static",
            "a pinwheel",
            "concentric circles",
        ],
    ];
    let mut last = 0;
    for d in &watched {
        let version = d["label_set_version"].as_u64().expect("version");
        assert!((1..=3).contains(&version), "{d}");
        assert!(version >= last, "versions went back: {d}");
        last = version;
        let allowed = sets[version as usize - 1];
        for l in d["labels"].as_array().expect("labels") {
            assert!(
                allowed.contains(&l["label"].as_str().expect("label")),
                "{d}"
            );
        }
    }
    assert_eq!(last, 3, "the last change never reached a frame");

    let (exit, rest) = run.interrupt();
    assert!(exit.success(), "exit {exit:?}: {rest:?}");
    assert!(
        rest.iter()
            .any(|l| l.contains("frames") && l.contains("labels v3")),
        "{rest:?}"
    );
    let gone = cliptag(&["streams", "--server", &server]);
    assert!(!gone.status.success(), "the server outlived the pipeline");
}

#[test]
fn a_python_grpcio_client_changes_labels_and_sees_health_and_reflection() {
    let run = start(&["--stream-id", "py-cam"]);
    let root = repo_root();
    let out = Command::new(python())
        .arg(root.join("tests/python/grpc_client.py"))
        .arg(root.join("proto"))
        .arg(&run.address)
        .arg("py-cam")
        .output()
        .expect("run the Python client");
    assert!(
        out.status.success(),
        "Python client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(report["health"], "SERVING");
    assert_eq!(report["version"], 2);
    assert_eq!(report["new_results"], 5);
    let (exit, _) = run.interrupt();
    assert!(exit.success());
}

#[test]
fn a_bad_input_or_a_taken_address_is_one_clear_line() {
    let out = cliptag(&[
        "run",
        "--input",
        "/nonexistent/video.mp4",
        "--grpc",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/video.mp4"), "{err}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = cliptag(&["run", "--grpc", &addr]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen on") && err.contains(&addr),
        "{err}"
    );
    let out = cliptag(&["watch", "--server", "127.0.0.1:1", "--count", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

#[test]
fn the_elements_knobs_reach_the_pipeline() {
    let out = cliptag(&[
        "run",
        "--grpc",
        "127.0.0.1:0",
        "--duration",
        "3",
        "--cycle",
        "1",
        "--json",
        "--interval",
        "3",
        "--top-k",
        "2",
        "--scoring",
        "sigmoid",
        "--max-batch",
        "2",
        "--stream-id",
        "knobs",
    ]);
    let lines = json_lines(&out);
    assert!(!lines.is_empty());
    for line in &lines {
        let labels = line["labels"].as_array().expect("labels");
        assert!(labels.len() <= 2, "top-k 2: {line}");
    }
    // "cliptag: N frames, M inferred, ..." at the end: every third frame inferred.
    let err = String::from_utf8_lossy(&out.stderr);
    let counts: Vec<u64> = err
        .lines()
        .rev()
        .find(|l| l.contains(" frames, ") && l.contains(" inferred"))
        .expect("the counters line")
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let (frames, inferred) = (counts[0], counts[1]);
    assert!(frames >= 20, "{err}");
    assert!(
        inferred.abs_diff(frames.div_ceil(3)) <= 1,
        "interval 3: {frames} frames, {inferred} inferred"
    );
    let bad = cliptag(&["run", "--threshold", "1.5"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--threshold"));
}

#[test]
fn logs_are_json_lines_on_request_and_plain_lines_otherwise() {
    let json = cliptag(&[
        "--log-format",
        "json",
        "run",
        "--grpc",
        "127.0.0.1:0",
        "--duration",
        "1.5",
    ]);
    assert!(json.status.success());
    let err = String::from_utf8_lossy(&json.stderr);
    let lines: Vec<Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string()),
        "{err}"
    );
    assert!(
        lines.iter().any(|l| l["level"] == "INFO"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("serving cliptag.v1 on "))),
        "{err}"
    );
    // An error is a JSON line too, at level ERROR.
    let failed = cliptag(&[
        "run",
        "--log-format",
        "json",
        "--input",
        "/nonexistent/clip.webm",
    ]);
    assert!(!failed.status.success());
    let line: Value = serde_json::from_slice(failed.stderr.trim_ascii()).expect("one JSON line");
    assert_eq!(line["level"], "ERROR");
    assert!(
        line["message"]
            .as_str()
            .is_some_and(|m| m.contains("/nonexistent/clip.webm"))
    );
    // Plain: the same events as `cliptag: ...` lines.
    let plain = cliptag(&["run", "--grpc", "127.0.0.1:0", "--duration", "1.5"]);
    let err = String::from_utf8_lossy(&plain.stderr);
    assert!(err.lines().all(|l| l.starts_with("cliptag: ")), "{err}");
    assert!(err.contains("cliptag: serving cliptag.v1 on "), "{err}");
}
