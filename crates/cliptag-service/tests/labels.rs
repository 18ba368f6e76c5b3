//! Label changes over real loopback gRPC: versions, every refusal with its status code
//! (and the running set unchanged after each), tokens, TLS, health.

mod common;

use std::time::Duration;

use cliptag_service::v1::{self, cliptag_client::CliptagClient};
use cliptag_service::{Server, ServerConfig, TlsFiles};
use common::{Producer, client, engine, serial, server, set};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

async fn current(client: &mut CliptagClient<Channel>, stream: &str) -> v1::LabelSetState {
    let reply = client
        .get_labels(v1::GetLabelsRequest {
            stream: stream.into(),
        })
        .await
        .expect("get labels")
        .into_inner();
    assert_eq!(reply.sets.len(), 1);
    reply.sets.into_iter().next().expect("one set")
}

fn names(state: &v1::LabelSetState) -> Vec<String> {
    state
        .labels
        .as_ref()
        .map(|l| l.labels.iter().map(|l| l.name.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_get_update_and_versions() {
    let _serial = serial().await;
    let (engine, _registration) = engine(1024);
    let producer = Producer::start(&engine, "labels-cam", &["a red square", "tv static"], 0, 8);
    let server = server();
    let mut c = client(&server).await;

    let listed = c
        .list_streams(v1::ListStreamsRequest {})
        .await
        .expect("list")
        .into_inner();
    let info = listed
        .streams
        .iter()
        .find(|s| s.id == "labels-cam")
        .expect("stream listed");
    assert_eq!(info.label_set_version, 1);
    assert!(info.model.contains("cliptag-tiny"), "{}", info.model);
    assert!(info.stats.is_some());

    let before = current(&mut c, "labels-cam").await;
    assert_eq!(before.version, 1);
    assert_eq!(names(&before), ["a red square", "tv static"]);

    let changed = c
        .set_labels(v1::SetLabelsRequest {
            stream: "labels-cam".into(),
            labels: Some(set(&["a ball", "colour bars"])),
            if_version: Some(1),
        })
        .await
        .expect("set")
        .into_inner();
    assert_eq!(changed.sets[0].version, 2);
    let changed = c
        .update_labels(v1::UpdateLabelsRequest {
            stream: "labels-cam".into(),
            add: vec![v1::Label {
                name: "snow".into(),
                prompts: vec!["tv static".into(), "white noise".into()],
            }],
            remove: vec!["a ball".into()],
            if_version: Some(2),
        })
        .await
        .expect("update")
        .into_inner();
    assert_eq!(changed.sets[0].version, 3);
    let now = current(&mut c, "labels-cam").await;
    assert_eq!(names(&now), ["colour bars", "snow"]);
    let snow = &now.labels.as_ref().expect("labels").labels[1];
    assert_eq!(snow.prompts, ["tv static", "white noise"]);
    producer.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_its_code_and_changes_nothing() {
    let _serial = serial().await;
    let (engine, _registration) = engine(1024);
    let producer = Producer::start(&engine, "bad-cam", &["a cat", "a dog"], 0, 4);
    let server = server();
    let mut c = client(&server).await;
    let before = current(&mut c, "bad-cam").await;

    let too_many: Vec<String> = (0..=cliptag_engine::MAX_LABELS)
        .map(|i| format!("label {i}"))
        .collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let long = "word ".repeat(100);
    let mut negative_top = set(&["a", "b"]);
    negative_top.threshold = Some(2.0);
    let mut bad_template = set(&["a", "b"]);
    bad_template.template = "no placeholder".into();
    let mut bad_scoring = set(&["a", "b"]);
    bad_scoring.scoring = 99;
    let cases: Vec<(&str, v1::SetLabelsRequest, Code)> = vec![
        (
            "empty",
            request("bad-cam", set(&[]), None),
            Code::InvalidArgument,
        ),
        (
            "duplicate",
            request("bad-cam", set(&["a cat", "a cat"]), None),
            Code::InvalidArgument,
        ),
        (
            "too many",
            request("bad-cam", set(&too_many), None),
            Code::InvalidArgument,
        ),
        (
            "past the context",
            request("bad-cam", set(&["a cat", long.trim()]), None),
            Code::InvalidArgument,
        ),
        (
            "threshold",
            request("bad-cam", negative_top, None),
            Code::InvalidArgument,
        ),
        (
            "template",
            request("bad-cam", bad_template, None),
            Code::InvalidArgument,
        ),
        (
            "scoring",
            request("bad-cam", bad_scoring, None),
            Code::InvalidArgument,
        ),
        (
            "stale version",
            request("bad-cam", set(&["x", "y"]), Some(7)),
            Code::FailedPrecondition,
        ),
        (
            "unknown stream",
            request("no-such-cam", set(&["x", "y"]), None),
            Code::NotFound,
        ),
    ];
    for (what, req, code) in cases {
        let status = c.set_labels(req).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {}", status.message());
        assert!(!status.message().is_empty(), "{what}: no reason given");
        assert_eq!(
            current(&mut c, "bad-cam").await,
            before,
            "{what} changed the set"
        );
    }

    let updates: Vec<(&str, v1::UpdateLabelsRequest, Code)> = vec![
        (
            "nothing",
            update("bad-cam", &[], &[], None),
            Code::InvalidArgument,
        ),
        (
            "remove missing",
            update("bad-cam", &[], &["a fox"], None),
            Code::InvalidArgument,
        ),
        (
            "add existing",
            update("bad-cam", &["a dog"], &[], None),
            Code::InvalidArgument,
        ),
        (
            "remove all",
            update("bad-cam", &[], &["a cat", "a dog"], None),
            Code::InvalidArgument,
        ),
        (
            "stale version",
            update("bad-cam", &["a fox"], &[], Some(9)),
            Code::FailedPrecondition,
        ),
        (
            "unknown stream",
            update("nope", &["a fox"], &[], None),
            Code::NotFound,
        ),
    ];
    for (what, req, code) in updates {
        let status = c.update_labels(req).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {}", status.message());
        assert_eq!(
            current(&mut c, "bad-cam").await,
            before,
            "{what} changed the set"
        );
    }

    let status = c
        .get_labels(v1::GetLabelsRequest {
            stream: "nope".into(),
        })
        .await
        .expect_err("unknown stream");
    assert_eq!(status.code(), Code::NotFound);
    let status = c
        .classify_image(v1::ClassifyImageRequest {
            image: b"not an image".to_vec(),
            stream: "bad-cam".into(),
            labels: None,
        })
        .await
        .expect_err("garbage image");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("decode"), "{}", status.message());
    // A PNG whose header claims 60000x60000 pixels is refused before any allocation.
    let status = c
        .classify_image(v1::ClassifyImageRequest {
            image: png_header_only(60_000, 60_000),
            stream: "bad-cam".into(),
            labels: None,
        })
        .await
        .expect_err("a decompression bomb");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    // Larger than gRPC's default 4 MiB message, within the documented limit: it gets as
    // far as the decoder.
    let status = c
        .classify_image(v1::ClassifyImageRequest {
            image: vec![0; 6 << 20],
            stream: "bad-cam".into(),
            labels: None,
        })
        .await
        .expect_err("6 MB of zeros");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    let status = c
        .stream_detections(v1::StreamDetectionsRequest {
            min_score: f32::NAN,
            ..Default::default()
        })
        .await
        .expect_err("NaN filter");
    assert_eq!(status.code(), Code::InvalidArgument);
    producer.finish();
}

/// 20 KB of user text in a refused request: the status names the real reason and quotes
/// the text short, instead of a message too large for its header (which reaches the
/// client as RESOURCE_EXHAUSTED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_input_comes_back_short_with_the_real_reason() {
    let _serial = serial().await;
    let (engine, _registration) = engine(1024);
    let producer = Producer::start(&engine, "long-cam", &["a cat", "a dog"], 0, 4);
    let server = server();
    let mut c = client(&server).await;
    let before = current(&mut c, "long-cam").await;
    let huge = "a very long prompt ".repeat(1100);
    assert!(huge.len() > 20_000);
    let mut long_prompt = set(&["a cat", "a dog"]);
    long_prompt.labels[1].prompts = vec![huge.trim().to_string()];
    let mut long_template = set(&["a cat", "a dog"]);
    long_template.template = huge.clone();
    let long_name = huge.trim().to_string();
    let cases: Vec<(&str, v1::SetLabelsRequest, Code, &str)> = vec![
        (
            "a 20 KB prompt",
            request("long-cam", long_prompt, None),
            Code::InvalidArgument,
            "tokens",
        ),
        (
            "a 20 KB template",
            request("long-cam", long_template, None),
            Code::InvalidArgument,
            "exactly once",
        ),
        (
            "a 20 KB label twice",
            request("long-cam", set(&[&long_name, &long_name]), None),
            Code::InvalidArgument,
            "more than once",
        ),
        (
            "a 20 KB stream id",
            request(&long_name, set(&["x", "y"]), None),
            Code::NotFound,
            "no stream",
        ),
    ];
    for (what, req, code, reason) in cases {
        let status = c.set_labels(req).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {}", status.message());
        assert!(
            status.message().contains(reason),
            "{what}: {}",
            status.message()
        );
        assert!(
            status.message().len() < 512,
            "{what}: a message of {} bytes",
            status.message().len()
        );
        assert!(
            status.message().contains("bytes)"),
            "{what}: {}",
            status.message()
        );
        assert_eq!(
            current(&mut c, "long-cam").await,
            before,
            "{what} changed the set"
        );
    }
    producer.finish();
}

fn request(stream: &str, labels: v1::LabelSet, if_version: Option<u64>) -> v1::SetLabelsRequest {
    v1::SetLabelsRequest {
        stream: stream.into(),
        labels: Some(labels),
        if_version,
    }
}

fn update(
    stream: &str,
    add: &[&str],
    remove: &[&str],
    if_version: Option<u64>,
) -> v1::UpdateLabelsRequest {
    v1::UpdateLabelsRequest {
        stream: stream.into(),
        add: add
            .iter()
            .map(|n| v1::Label {
                name: n.to_string(),
                prompts: vec![],
            })
            .collect(),
        remove: remove.iter().map(|n| n.to_string()).collect(),
        if_version,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stream_at_once_and_classify() {
    let _serial = serial().await;
    let (engine, _registration) = engine(1024);
    let a = Producer::start(&engine, "all-a", &["a cat", "a dog"], 0, 4);
    let b = Producer::start(&engine, "all-b", &["a fish", "a bird"], 0, 4);
    let server = server();
    let mut c = client(&server).await;
    // Adding "a bird" to every stream: all-b has it, so nothing changes anywhere.
    let status = c
        .update_labels(update("", &["a bird"], &[], None))
        .await
        .expect_err("a duplicate in one of the sets");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert_eq!(current(&mut c, "all-a").await.version, 1, "all-a changed");
    assert_eq!(names(&current(&mut c, "all-a").await), ["a cat", "a dog"]);
    assert_eq!(current(&mut c, "all-b").await.version, 1);
    let changed = c
        .set_labels(v1::SetLabelsRequest {
            stream: String::new(),
            labels: Some(set(&["a red image", "a blue image"])),
            if_version: None,
        })
        .await
        .expect("set all")
        .into_inner();
    let streams: Vec<_> = changed.sets.iter().map(|s| s.stream.as_str()).collect();
    assert_eq!(streams, ["all-a", "all-b"]);
    assert!(changed.sets.iter().all(|s| s.version == 2));
    let status = c
        .set_labels(v1::SetLabelsRequest {
            stream: String::new(),
            labels: Some(set(&["x", "y"])),
            if_version: Some(2),
        })
        .await
        .expect_err("if_version without a stream");
    assert_eq!(status.code(), Code::InvalidArgument);

    // A red PNG scored against the stream's set, then against a set in the request.
    let png = red_png();
    let status = c
        .classify_image(v1::ClassifyImageRequest {
            image: png.clone(),
            stream: String::new(),
            labels: None,
        })
        .await
        .expect_err("two streams, none named");
    assert_eq!(status.code(), Code::InvalidArgument);
    let reply = c
        .classify_image(v1::ClassifyImageRequest {
            image: png.clone(),
            stream: "all-a".into(),
            labels: None,
        })
        .await
        .expect("classify")
        .into_inner();
    assert_eq!(reply.label_set_version, 2);
    assert_eq!(reply.labels[0].label, "a red image");
    let reply = c
        .classify_image(v1::ClassifyImageRequest {
            image: png,
            stream: String::new(),
            labels: Some(set(&["a green image", "a red image", "a yellow image"])),
        })
        .await
        .expect("classify with a set")
        .into_inner();
    assert_eq!(reply.labels[0].label, "a red image");
    assert_eq!(reply.labels.len(), 3);
    let sum: f32 = reply.labels.iter().map(|l| l.score).sum();
    assert!((sum - 1.0).abs() < 1e-4, "softmax sums to {sum}");
    a.finish();
    b.finish();
}

/// A PNG signature and header chunk for a `w` x `h` RGB image, and no pixels.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut chunk = b"IHDR".to_vec();
    chunk.extend(w.to_be_bytes());
    chunk.extend(h.to_be_bytes());
    chunk.extend([8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(&chunk);
    png.extend(crc32(&chunk).to_be_bytes());
    png
}

fn red_png() -> Vec<u8> {
    let img = image::RgbImage::from_pixel(96, 80, image::Rgb([220, 20, 20]));
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png)
        .expect("png");
    bytes.into_inner()
}

fn openssl_cert(dir: &std::path::Path) -> TlsFiles {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        // An end-entity certificate trusted directly (rustls refuses a CA as a server's).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success(), "openssl failed");
    TlsFiles { cert, key }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_guards_label_changes_over_tls() {
    let _serial = serial().await;
    let (engine, _registration) = engine(1024);
    let producer = Producer::start(&engine, "tls-cam", &["a cat", "a dog"], 0, 4);
    let dir = tempfile::tempdir().expect("tempdir");
    let files = openssl_cert(dir.path());
    let server = Server::start(ServerConfig {
        address: "127.0.0.1:0".into(),
        token: Some("s3cret".into()),
        tls: Some(files.clone()),
    })
    .expect("TLS server");
    let ca = Certificate::from_pem(std::fs::read(&files.cert).expect("cert"));
    let channel = Channel::from_shared(format!("https://localhost:{}", server.local_addr().port()))
        .expect("uri")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(ca)
                .domain_name("localhost"),
        )
        .expect("tls")
        .connect()
        .await
        .expect("TLS connect");
    let mut c = CliptagClient::new(channel);
    // Reading needs no token.
    assert_eq!(current(&mut c, "tls-cam").await.version, 1);
    let status = c
        .set_labels(request("tls-cam", set(&["x", "y"]), None))
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut wrong = tonic::Request::new(request("tls-cam", set(&["x", "y"]), None));
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer guess".parse().expect("header"));
    assert_eq!(
        c.set_labels(wrong).await.expect_err("wrong token").code(),
        Code::Unauthenticated
    );
    assert_eq!(current(&mut c, "tls-cam").await.version, 1);
    let mut right = tonic::Request::new(request("tls-cam", set(&["x", "y"]), None));
    right
        .metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().expect("header"));
    assert_eq!(
        c.set_labels(right).await.expect("token").into_inner().sets[0].version,
        2
    );

    // A plain-text client cannot talk to it.
    let plain = CliptagClient::connect(format!("http://{}", server.local_addr())).await;
    if let Ok(mut plain) = plain {
        assert!(plain.list_streams(v1::ListStreamsRequest {}).await.is_err());
    }
    producer.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_serving_and_addresses_are_checked() {
    let server = server();
    let channel = Channel::from_shared(format!("http://{}", server.local_addr()))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "cliptag.v1.Cliptag".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        reply.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let taken = server.local_addr().to_string();
    let err = Server::start(ServerConfig::new(taken.clone()))
        .err()
        .expect("address in use");
    assert!(err.to_string().contains("cannot listen"), "{err}");
    assert!(Server::start(ServerConfig::new("not an address")).is_err());
    // Shared servers: same address, same server; another token is refused.
    let shared = Server::shared(ServerConfig::new("127.0.0.1:0")).expect("shared");
    let again = Server::shared(ServerConfig::new("127.0.0.1:0")).expect("shared again");
    assert!(std::sync::Arc::ptr_eq(&shared, &again));
    let bare = Server::shared(ServerConfig::new("0")).expect("a bare port is loopback");
    assert!(std::sync::Arc::ptr_eq(&shared, &bare));
    let mut other = ServerConfig::new("127.0.0.1:0");
    other.token = Some("t".into());
    assert!(Server::shared(other).is_err());
    tokio::time::sleep(Duration::from_millis(1)).await;
}
