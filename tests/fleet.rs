//! Many processes through real brokers: `nats-server` (JetStream) and `mosquitto` from
//! Debian, started here on free loopback ports. Label groups in the NATS key-value
//! bucket change every process bound to them; every detection reaches NATS and MQTT
//! subscribers; a broker that dies and comes back costs no video.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cliptag_end_to_end::brokers::{
    Broker, Inbox, MqttSubscriber, Seen, frames_by_stream, nats_subscriber, snapshot, wait_for,
};
use cliptag_end_to_end::{Running, cliptag_bin, http, list_streams, make_clip, metrics_addr};
use cliptag_engine::{Label, LabelSetSpec};
use cliptag_service::brokers::LabelsBucket;

/// `cliptag <args>`: exit success, stdout and stderr.
fn cliptag(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(cliptag_bin())
        .args(args)
        .output()
        .expect("cliptag");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The version a `cliptag labels ... --json` printed.
fn printed_version(stdout: &str) -> u64 {
    let line: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    line["version"]
        .as_u64()
        .unwrap_or_else(|| panic!("no version in {stdout}"))
}

fn names(set: &[&str]) -> BTreeSet<String> {
    set.iter().map(|s| s.to_string()).collect()
}

/// Checks every detection of `streams` in `seen`: versions never go back within a stream
/// (in arrival order), and a detection scored by a version in `sets` names only that
/// set's labels (no result mixes two sets).
fn check_versions(seen: &[Seen], streams: &[String], sets: &BTreeMap<u64, BTreeSet<String>>) {
    for stream in streams {
        let mut last = 0;
        for s in seen.iter().filter(|s| &s.stream == stream) {
            assert!(
                s.version >= last,
                "{stream} went back from version {last} to {} at frame {}",
                s.version,
                s.frame
            );
            last = s.version;
            if let Some(labels) = sets.get(&s.version) {
                for label in &s.labels {
                    assert!(
                        labels.contains(label),
                        "{stream} frame {} names {label:?}, not of version {} ({labels:?})",
                        s.frame,
                        s.version
                    );
                }
            }
        }
    }
}

/// Waits until every stream has a detection at `version`.
fn wait_all_at(inbox: &Inbox, streams: &[String], version: u64, what: &str) {
    wait_for(inbox, Duration::from_secs(30), what, |seen| {
        streams
            .iter()
            .all(|id| seen.iter().any(|s| &s.stream == id && s.version == version))
    });
}

#[test]
fn one_labels_key_changes_every_process_bound_to_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Broker::nats(dir.path());
    let url = nats.url();
    let inbox = nats_subscriber(&url);
    // Two `cliptag run` processes, and a `cliptag serve` with two streams of one engine:
    // four streams in three processes, one label group.
    let streams: Vec<String> = (0..4).map(|i| format!("cam-{i}")).collect();
    let mut processes: Vec<Running> = streams[..2]
        .iter()
        .map(|id| {
            Running::start(
                &[
                    "--nats",
                    &url,
                    "--labels-key",
                    "lobby",
                    "--stream-id",
                    id,
                    "--labels",
                    "seed a,seed b",
                    "--test-format",
                    "160x120@15",
                    "--cycle",
                    "0",
                ],
                Stdio::null(),
            )
        })
        .collect();
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ngrpc = \"127.0.0.1:0\"\n[brokers]\nnats = \"{url}\"\n\
             [[streams]]\nid = \"cam-2\"\ntest_pattern = \"ball\"\nlabels = [\"seed a\", \"seed b\"]\nlabels_key = \"lobby\"\n\
             [[streams]]\nid = \"cam-3\"\ntest_pattern = \"snow\"\nlabels = [\"seed a\", \"seed b\"]\nlabels_key = \"lobby\"\n"
        ),
    )
    .expect("serve.toml");
    let config = config.display().to_string();
    processes.push(Running::start_command(
        &["serve", "--config", &config],
        Stdio::null(),
    ));
    let mut sets: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    // The first stream to reach the key wrote its labels there; the others took them.
    sets.insert(1, names(&["seed a", "seed b"]));
    wait_all_at(&inbox, &streams, 1, "every stream at the seeded revision 1");

    // One change from the command line reaches every stream.
    let (ok, out, err) = cliptag(&[
        "labels",
        "set",
        "--nats",
        &url,
        "--key",
        "lobby",
        "--labels",
        "one a,one b",
        "--json",
    ]);
    assert!(ok, "labels set --nats: {err}");
    let one = printed_version(&out);
    assert!(one > 1, "revision {one}");
    sets.insert(one, names(&["one a", "one b"]));
    wait_all_at(&inbox, &streams, one, "every stream at the new revision");

    // A change based on a stale version is refused and changes nothing.
    let (ok, _, err) = cliptag(&[
        "labels",
        "set",
        "--nats",
        &url,
        "--key",
        "lobby",
        "--labels",
        "stale",
        "--if-version",
        "1",
    ]);
    assert!(!ok, "a stale --if-version was taken");
    assert!(
        err.contains(&format!("at revision {one}, not 1")),
        "the refusal says why: {err}"
    );

    // A gRPC change on one process goes through the key to every stream.
    let (ok, out, err) = cliptag(&[
        "labels",
        "set",
        "--server",
        &processes[1].address,
        "--stream",
        "cam-1",
        "--labels",
        "grpc a,grpc b",
        "--json",
    ]);
    assert!(ok, "labels set over gRPC: {err}");
    let grpc = printed_version(&out);
    assert!(grpc > one, "gRPC wrote revision {grpc}");
    sets.insert(grpc, names(&["grpc a", "grpc b"]));
    wait_all_at(&inbox, &streams, grpc, "every stream at the gRPC change");
    let (ok, out, _) = cliptag(&["labels", "get", "--nats", &url, "--key", "lobby", "--json"]);
    assert!(ok);
    assert_eq!(printed_version(&out), grpc, "the key holds the gRPC change");
    // A change to every stream of the process whose two streams share the key writes
    // the key once; both streams report that one revision.
    let (ok, out, err) = cliptag(&[
        "labels",
        "set",
        "--server",
        &processes[2].address,
        "--labels",
        "both a,both b",
        "--json",
    ]);
    assert!(ok, "labels set on every stream of cliptag serve: {err}");
    let versions: BTreeSet<u64> = out.lines().map(printed_version).collect();
    assert_eq!(out.lines().count(), 2, "{out}");
    assert_eq!(versions.len(), 1, "one write: {out}");
    let both = versions.into_iter().next().unwrap_or_default();
    assert_eq!(both, grpc + 1, "written once: {out}");
    sets.insert(both, names(&["both a", "both b"]));
    wait_all_at(
        &inbox,
        &streams,
        both,
        "every stream at the serve-wide change",
    );
    // Reading a bucket that does not exist says so and does not create it.
    for _ in 0..2 {
        let (ok, _, err) = cliptag(&[
            "labels", "get", "--nats", &url, "--key", "lobby", "--bucket", "lables",
        ]);
        assert!(
            !ok && err.contains("cannot open bucket \"lables\""),
            "{err}"
        );
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let bucket = runtime
        .block_on(LabelsBucket::open(
            &url,
            "cliptag_labels",
            None,
            Duration::from_secs(5),
            false,
        ))
        .expect("the bucket");

    // A set no process can use (a prompt longer than the text tower takes) is refused
    // in each, counted, and the set in use stays.
    let too_long = LabelSetSpec {
        labels: vec![Label::new("word ".repeat(100).trim().to_string())],
        ..LabelSetSpec::default()
    };
    let refused = runtime
        .block_on(bucket.set("lobby", &too_long, None))
        .expect("written");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed: Vec<serde_json::Value> = processes
            .iter()
            .flat_map(|p| list_streams(&p.address).into_values())
            .collect();
        assert_eq!(listed.len(), streams.len(), "{listed:?}");
        let taken = |s: &serde_json::Value| {
            s["labels_binding"]["last_refusal"]
                .as_str()
                .is_some_and(|r| r.contains(&format!("revision {refused}")))
        };
        if listed.iter().all(taken) {
            for stream in &listed {
                assert_eq!(
                    stream["label_set_version"], both,
                    "the set in use stays: {stream}"
                );
                assert_eq!(stream["labels_binding"]["key"], "lobby", "{stream}");
                assert_eq!(stream["labels_binding"]["refused"], 1, "{stream}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every process refused it: {listed:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for(
        &inbox,
        Duration::from_secs(10),
        "detections after the refusal",
        |seen| seen.iter().filter(|s| s.version == both).count() > 40,
    );

    // A burst of 20 changes within a second: the last one wins everywhere.
    let start = Instant::now();
    let mut last = 0;
    for i in 0..20 {
        let labels = [format!("burst {i} a"), format!("burst {i} b")];
        let spec = LabelSetSpec::from_names(&labels);
        last = runtime
            .block_on(bucket.set("lobby", &spec, None))
            .expect("burst write");
        sets.insert(last, labels.into_iter().collect());
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(1), "20 writes took {took:?}");
    wait_all_at(
        &inbox,
        &streams,
        last,
        "every stream at the burst's last revision",
    );
    std::thread::sleep(Duration::from_millis(500));
    let seen = snapshot(&inbox);
    check_versions(&seen, &streams, &sets);
    for id in &streams {
        let newest = seen.iter().rev().find(|s| &s.stream == id).expect("seen");
        assert_eq!(newest.version, last, "{id} ends at the last revision");
    }
    drop(processes);
}

#[test]
fn every_detection_of_two_streams_reaches_nats_and_mqtt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Broker::nats(dir.path());
    let mosquitto = Broker::mosquitto(dir.path());
    let nats_inbox = nats_subscriber(&nats.url());
    let mqtt = MqttSubscriber::start(mosquitto.port, Inbox::default());
    let frames = 45u64;
    // `cliptag watch` on both brokers too, every result as a JSON line.
    let watchers: Vec<_> = [("--nats", nats.url()), ("--mqtt", mosquitto.url())]
        .into_iter()
        .map(|(option, url)| {
            let count = (2 * frames).to_string();
            let args = ["watch", option, &url, "--all", "--json", "--count", &count];
            let mut child = Command::new(cliptag_bin())
                .args(args)
                .args(["--duration", "60"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("cliptag watch");
            let stderr = child.stderr.take().expect("stderr");
            let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
            let said = lines
                .find_map(|l| l.ok().filter(|l| l.contains("subscribed to")))
                .expect("cliptag watch says it subscribed");
            assert!(
                said.contains("cliptag") && said.contains("detections"),
                "{said}"
            );
            // The rest of its stderr is read, so that a later line never meets a closed pipe.
            std::thread::spawn(move || lines.for_each(drop));
            child
        })
        .collect();
    make_clip(dir.path(), frames as u32);
    let clip = dir.path().join("clip.webm").display().to_string();
    let streams = ["file-a", "file-b"];
    let processes: Vec<Running> = streams
        .iter()
        .map(|id| {
            Running::start(
                &[
                    "--input",
                    &clip,
                    "--stream-id",
                    id,
                    "--nats",
                    &nats.url(),
                    "--mqtt",
                    &mosquitto.url(),
                ],
                Stdio::null(),
            )
        })
        .collect();
    for mut process in processes {
        let status = process.child.wait().expect("wait");
        assert!(status.success(), "cliptag run ended with {status}");
    }
    let expected: Vec<u64> = (0..frames).collect();
    let done = |seen: &[Seen]| {
        let by = frames_by_stream(seen);
        streams
            .iter()
            .all(|id| by.get(*id).is_some_and(|f| f.len() as u64 >= frames))
    };
    wait_for(
        &nats_inbox,
        Duration::from_secs(10),
        "every NATS detection",
        done,
    );
    wait_for(
        &mqtt.inbox,
        Duration::from_secs(10),
        "every MQTT detection",
        done,
    );
    let nats_frames = frames_by_stream(&snapshot(&nats_inbox));
    let mut mqtt_frames = frames_by_stream(&snapshot(&mqtt.inbox));
    for id in streams {
        assert_eq!(nats_frames[id], expected, "NATS, stream {id}");
        // QoS 1 is at least once: a repeat is allowed, a loss is not.
        let mqtt = mqtt_frames.get_mut(id).expect("MQTT detections");
        mqtt.dedup();
        assert_eq!(*mqtt, expected, "MQTT, stream {id}");
    }
    for watcher in watchers {
        let out = watcher.wait_with_output().expect("cliptag watch ends");
        assert!(out.status.success(), "cliptag watch: {}", out.status);
        let mut by: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let stream = v["stream"].as_str().unwrap_or_default().to_string();
            by.entry(stream)
                .or_default()
                .insert(v["frame"].as_u64().unwrap_or(u64::MAX));
        }
        for id in streams {
            assert_eq!(
                by.get(id).map(BTreeSet::len),
                Some(frames as usize),
                "watch, {id}: {by:?}"
            );
        }
    }
}

/// Frames the stream took in over `seconds`, read through gRPC.
fn frames_over(address: &str, id: &str, seconds: f64) -> u64 {
    let count = || list_streams(address)[id]["frames_in"].as_u64().unwrap_or(0);
    let before = count();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    count() - before
}

#[test]
fn brokers_that_die_and_return_cost_no_video() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nats = Broker::nats(dir.path());
    let mut mosquitto = Broker::mosquitto(dir.path());
    let nats_inbox = nats_subscriber(&nats.url());
    let mqtt = MqttSubscriber::start(mosquitto.port, Inbox::default());
    let process = Running::start(
        &[
            "--http",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--stream-id",
            "cam",
            "--nats",
            &nats.url(),
            "--mqtt",
            &mosquitto.url(),
            "--labels-key",
            "dock",
            "--broker-outbox",
            "20",
            "--test-format",
            "160x120@15",
        ],
        Stdio::null(),
    );
    // Said in this order: metrics, then the console.
    let metrics = metrics_addr(&process);
    let console = process.said("cliptag: web console on http://");
    let console = console.trim_end_matches('/');
    let flowing = |seen: &[Seen]| seen.iter().filter(|s| s.stream == "cam").count() >= 15;
    wait_for(
        &nats_inbox,
        Duration::from_secs(20),
        "detections on NATS",
        flowing,
    );
    wait_for(
        &mqtt.inbox,
        Duration::from_secs(20),
        "detections on MQTT",
        flowing,
    );
    let before = frames_over(&process.address, "cam", 3.0);

    nats.kill();
    mosquitto.kill();
    drop(mqtt);
    let during = frames_over(&process.address, "cam", 3.0);
    eprintln!("frames in 3 s: {before} with the brokers, {during} without");
    assert!(
        during * 3 >= before * 2 && during >= 20,
        "the video slowed while the brokers were down: {during} frames in 3 s, {before} before"
    );
    let listed = list_streams(&process.address);
    // The precision dtype=auto chose: bf16 exactly where the CPU has bf16 dot products.
    let native = cliptag_engine::cliptag_model::CpuFeatures::detected().native_bf16();
    assert_eq!(listed["cam"]["dtype"], if native { "bf16" } else { "f32" });
    let links = listed["cam"]["brokers"]
        .as_array()
        .expect("brokers")
        .clone();
    assert_eq!(links.len(), 2, "{links:?}");
    for link in &links {
        assert_eq!(link["connected"], false, "{link}");
        assert!(link["dropped"].as_u64() > Some(0), "drops counted: {link}");
        assert!(link["queued"].as_u64() <= Some(20), "bounded: {link}");
    }
    // The web console shows the same.
    let (status, body) = http(console, "GET", "/api/streams", &[], b"");
    assert_eq!(status, 200);
    let shown: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let shown = &shown["streams"][0];
    assert_eq!(
        shown["brokers"].as_array().map(Vec::len),
        Some(2),
        "{shown}"
    );
    assert!(
        shown["brokers"]
            .as_array()
            .is_some_and(|b| b.iter().all(|l| l["connected"] == false)),
        "{shown}"
    );
    assert_eq!(shown["labels_binding"]["key"], "dock", "{shown}");
    let (status, body) = http(&metrics, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    for broker in ["nats", "mqtt"] {
        let labels = format!("{{stream=\"cam\",broker=\"{broker}\"}}");
        assert!(
            text.contains(&format!("cliptag_broker_connected{labels} 0")),
            "{broker} down in the metrics:\n{text}"
        );
        let dropped = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cliptag_broker_dropped_total{labels} ")))
            .and_then(|v| v.parse::<f64>().ok());
        assert!(
            dropped > Some(0.0),
            "{broker} drops in the metrics:\n{text}"
        );
    }

    let back = Instant::now();
    nats.restart();
    mosquitto.restart();
    let mqtt = MqttSubscriber::start(mosquitto.port, Inbox::default());
    let resumed = |seen: &[Seen]| {
        seen.iter()
            .filter(|s| s.stream == "cam" && s.received > back)
            .count()
            >= 15
    };
    wait_for(
        &nats_inbox,
        Duration::from_secs(20),
        "NATS delivery resumed",
        resumed,
    );
    wait_for(
        &mqtt.inbox,
        Duration::from_secs(20),
        "MQTT delivery resumed",
        resumed,
    );
    let listed = list_streams(&process.address);
    for link in listed["cam"]["brokers"].as_array().expect("brokers") {
        assert_eq!(link["connected"], true, "{link}");
        let published_before = links
            .iter()
            .find(|l| l["broker"] == link["broker"])
            .and_then(|l| l["published"].as_u64());
        assert!(link["published"].as_u64() > published_before, "{link}");
    }
    // The detections after the outage continue the stream: newer frames than before.
    let seen = snapshot(&nats_inbox);
    let newest_before = seen
        .iter()
        .filter(|s| s.received <= back)
        .map(|s| s.frame)
        .max();
    let first_after = seen
        .iter()
        .filter(|s| s.received > back)
        .map(|s| s.frame)
        .min();
    assert!(
        first_after > newest_before,
        "{first_after:?} after {newest_before:?}"
    );
    // The labels key is watched again on the restarted server (its store kept): a
    // change made now reaches the stream.
    let (ok, out, err) = cliptag(&[
        "labels",
        "set",
        "--nats",
        &nats.url(),
        "--key",
        "dock",
        "--labels",
        "after a,after b",
        "--json",
    ]);
    assert!(ok, "labels set after the restart: {err}");
    let after = printed_version(&out);
    assert!(
        after >= 2,
        "revision {after}: the key's history survived the restart"
    );
    wait_all_at(
        &nats_inbox,
        &["cam".to_string()],
        after,
        "the stream at the change made after the restart",
    );
}

/// A self-signed certificate for `localhost` (trusted directly, as a client's CA file).
fn certificate(dir: &std::path::Path) -> (String, String) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success(), "openssl failed");
    (cert.display().to_string(), key.display().to_string())
}

#[test]
fn mqtt_over_tls_with_a_user_and_a_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = certificate(dir.path());
    let passwords = dir.path().join("passwords");
    for (user, password) in [("camera", "p@ss word"), ("reader", "r3ad")] {
        let mut command = Command::new("mosquitto_passwd");
        if !passwords.exists() {
            command.arg("-c");
        }
        let status = command
            .arg("-b")
            .arg(&passwords)
            .args([user, password])
            .status()
            .expect("mosquitto_passwd");
        assert!(status.success());
    }
    let broker = Broker::mosquitto_with(
        dir.path(),
        &format!(
            "certfile {cert}\nkeyfile {key}\nallow_anonymous false\npassword_file {}\n",
            passwords.display()
        ),
        "mqtts",
    );
    let port = broker.port;
    // The password travels in the URL, percent-encoded.
    let good = format!("mqtts://camera:p%40ss%20word@localhost:{port}");
    let camera = Running::start(
        &[
            "--stream-id",
            "cam",
            "--mqtt",
            &good,
            "--mqtt-ca",
            &cert,
            "--test-format",
            "160x120@15",
        ],
        Stdio::null(),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let received = runtime.block_on(async {
        let settings = cliptag_service::brokers::MqttSettings {
            url: format!("mqtts://localhost:{port}"),
            topic_prefix: "cliptag".into(),
            username: Some("reader".into()),
            password: Some("r3ad".into()),
            ca_file: Some(cert.clone().into()),
        };
        let mut detections = cliptag_service::brokers::MqttDetections::subscribe(
            &settings,
            &["cam".to_string()],
            Duration::from_secs(5),
        )
        .await
        .expect("the reader subscribes over TLS");
        let mut frames = Vec::new();
        while frames.len() < 10 {
            let d = tokio::time::timeout(Duration::from_secs(20), detections.next())
                .await
                .expect("detections over TLS")
                .expect("a detection");
            assert_eq!(d.stream, "cam");
            frames.push(d.frame);
        }
        frames
    });
    // In order (QoS 1 may repeat one after a reconnect).
    assert!(received.windows(2).all(|w| w[1] >= w[0]), "{received:?}");

    // A wrong password: the video runs, the link says why it is down, nothing leaks.
    let wrong = format!("mqtts://camera:wrong@localhost:{port}");
    let refused = Running::start(
        &["--stream-id", "cam2", "--mqtt", &wrong, "--mqtt-ca", &cert],
        Stdio::null(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = list_streams(&refused.address);
        let link = &listed["cam2"]["brokers"][0];
        assert_eq!(link["url"], format!("mqtts://camera:***@localhost:{port}"));
        let error = link["last_error"].as_str().unwrap_or_default().to_string();
        if link["connected"] == false && !error.is_empty() {
            assert!(!error.contains("wrong"), "{error}");
            assert!(listed["cam2"]["frames_in"].as_u64() > Some(0));
            break;
        }
        assert!(Instant::now() < deadline, "no refusal reported: {link}");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop((camera, refused));
}

#[test]
fn nats_with_a_user_and_a_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Broker::nats_with(dir.path(), &["--user", "cam", "--pass", "p+ss word"]);
    let port = nats.port;
    let good = format!("nats://cam:p%2Bss%20word@127.0.0.1:{port}");
    let inbox = nats_subscriber(&good);
    let process = Running::start(
        &[
            "--stream-id",
            "cam",
            "--nats",
            &good,
            "--labels-key",
            "gate",
        ],
        Stdio::null(),
    );
    wait_for(
        &inbox,
        Duration::from_secs(20),
        "detections with credentials",
        |seen| {
            seen.iter()
                .filter(|s| s.stream == "cam" && s.version >= 1)
                .count()
                >= 5
        },
    );
    let (ok, out, err) = cliptag(&[
        "labels", "set", "--nats", &good, "--key", "gate", "--labels", "in,out", "--json",
    ]);
    assert!(ok, "{err}");
    let version = printed_version(&out);
    wait_all_at(
        &inbox,
        &["cam".to_string()],
        version,
        "the change with credentials",
    );
    let listed = list_streams(&process.address);
    let link = &listed["cam"]["brokers"][0];
    assert_eq!(
        link["url"],
        format!("nats://cam:***@127.0.0.1:{port}"),
        "{link}"
    );
    assert_eq!(listed["cam"]["labels_binding"]["url"], link["url"]);

    // A wrong password is refused with the server's reason, and not shown.
    let wrong = format!("nats://cam:nope@127.0.0.1:{port}");
    let (ok, _, err) = cliptag(&["labels", "get", "--nats", &wrong, "--key", "gate"]);
    assert!(!ok, "a wrong password was let in");
    assert!(err.contains("cam:***@"), "{err}");
    assert!(!err.contains("nope"), "{err}");
    assert!(err.to_lowercase().contains("authoriz"), "{err}");
}
