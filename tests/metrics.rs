//! `cliptag run --metrics`: Debian's `promtool check metrics` accepts what it serves,
//! the counters move while frames flow, the latency histogram counts every inferred
//! frame, subscribers are counted, and Prometheus (asking for OpenMetrics) gets it.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cliptag_end_to_end::{Running, cliptag_bin, http, metrics_addr};

fn scrape(addr: &str, accept: &[&str]) -> String {
    let (status, body) = http(addr, "GET", "/metrics", accept, b"");
    assert_eq!(status, 200);
    String::from_utf8(body).expect("text")
}

/// The value of the sample whose line starts with `prefix` (name and labels).
fn value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
}

#[test]
fn promtool_accepts_the_metrics_and_the_counters_move() {
    let run = Running::start(
        &[
            "--metrics",
            "127.0.0.1:0",
            "--stream-id",
            "metered",
            "--duration",
            "120",
        ],
        Stdio::null(),
    );
    let addr = metrics_addr(&run);
    let first = scrape(&addr, &[]);

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; ./x test installs it)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(first.as_bytes())
        .expect("write");
    let checked = promtool.wait_with_output().expect("promtool");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{first}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let stream = r#"{stream="metered",model="cliptag-tiny (bundled)"}"#;
    let frames = |text: &str| value(text, &format!("cliptag_stream_frames_in_total{stream}"));
    // A subscriber while the counters move.
    let mut watch = Command::new(cliptag_bin())
        .args(["watch", "--server", &run.address, "--duration", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cliptag watch");
    let deadline = Instant::now() + Duration::from_secs(30);
    let later = loop {
        std::thread::sleep(Duration::from_millis(300));
        let text = scrape(&addr, &[]);
        if frames(&text) > frames(&first) && value(&text, "cliptag_subscribers") >= 1.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the counters did not move:\n{text}"
        );
    };
    let _ = watch.kill();
    let _ = watch.wait();
    let inferred = value(&later, &format!("cliptag_stream_inferred_total{stream}"));
    let counted = value(
        &later,
        &format!("cliptag_stream_latency_seconds_count{stream}"),
    );
    assert_eq!(
        inferred, counted,
        "every inferred frame is in the latency histogram"
    );
    assert!(value(&later, &format!("cliptag_stream_label_set_version{stream}")) >= 1.0);
    // dtype=auto: the precision it chose, bf16 exactly where the CPU has bf16 dot products.
    let dtype = if cliptag_engine::cliptag_model::CpuFeatures::detected().native_bf16() {
        "bf16"
    } else {
        "f32"
    };
    assert_eq!(
        value(
            &later,
            &format!(
                r#"cliptag_engine_info{{engine="0",model="cliptag-tiny (bundled)",device="cpu",dtype="{dtype}"}}"#
            )
        ),
        1.0
    );
    assert!(value(&later, r#"cliptag_engine_batches_total{engine="0"}"#) >= 1.0);
    assert!(value(&later, r#"cliptag_engine_batch_seconds_total{engine="0"}"#) > 0.0);

    let openmetrics = scrape(
        &addr,
        &["accept: application/openmetrics-text; version=1.0.0"],
    );
    assert!(openmetrics.trim_end().ends_with("# EOF"), "{openmetrics}");
    assert!(openmetrics.contains("# TYPE cliptag_stream_frames_in counter"));
    let (exit, _) = run.interrupt();
    assert!(exit.success());
}
