//! `cliptag run | head -3` and the like: a reader that goes away ends a command quietly,
//! with success, not with a panic.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cliptag_end_to_end::{Running, cliptag_bin};

/// Reads `n` lines of the child's stdout, closes it, and waits (at most a minute) for
/// the child to exit; its exit code and stderr.
fn read_then_close(child: &mut Child, n: usize) -> (Option<i32>, String) {
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    for i in 0..n {
        let line = lines.next().and_then(Result::ok);
        assert!(line.is_some(), "line {i} never came");
    }
    drop(lines);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the command went on after its reader left");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn quiet((code, stderr): (Option<i32>, String), what: &str) {
    assert_eq!(code, Some(0), "{what}: exit {code:?}; stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
}

#[test]
fn run_piped_to_head_exits_quietly() {
    // The test source changes pattern every half second: a line each time.
    let mut run = Running::start(
        &[
            "--cycle",
            "0.5",
            "--duration",
            "120",
            "--stream-id",
            "piped",
        ],
        Stdio::piped(),
    );
    let (code, _) = read_then_close(&mut run.child, 3);
    // stderr stays with `run`'s reader thread: look there for a panic.
    let rest: Vec<String> = run.stderr.try_iter().collect();
    quiet((code, rest.join("\n")), "cliptag run | head -3");
}

#[test]
fn watch_streams_and_labels_piped_to_a_closed_reader_exit_quietly() {
    let run = Running::start(
        &[
            "--cycle",
            "0.5",
            "--duration",
            "120",
            "--stream-id",
            "closed",
        ],
        Stdio::null(),
    );
    let mut watch = Command::new(cliptag_bin())
        .args(["watch", "--server", &run.address, "--all"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("watch");
    quiet(read_then_close(&mut watch, 3), "cliptag watch | head -3");
    for args in [
        vec!["streams", "--server", &run.address],
        vec!["labels", "get", "--server", &run.address],
    ] {
        // The reader is gone before the first line is written.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = Command::new(cliptag_bin())
            .args(&args)
            .stdout(writer)
            .output()
            .expect("cliptag");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        quiet((out.status.code(), stderr), &args.join(" "));
    }
}
