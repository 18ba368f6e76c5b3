//! Detection streams over real loopback gRPC: a label change reaches every later frame and
//! never mixes with the old set, slow subscribers lag without slowing anyone, a hundred
//! subscribers get every result, and streams end with the server.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use cliptag_service::v1::{self, detection_event::Event};
use common::{Producer, client, engine, serial, server};
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

fn set(names: &[&str]) -> v1::LabelSet {
    v1::LabelSet {
        top_k: 3,
        ..common::set(names)
    }
}

fn only(stream: &str) -> v1::StreamDetectionsRequest {
    v1::StreamDetectionsRequest {
        streams: vec![stream.into()],
        include_empty: true,
        ..Default::default()
    }
}

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_change_reaches_every_later_frame_and_never_mixes() {
    let _serial = serial().await;
    let (engine, _registration) = engine(4096);
    let old = ["a red square", "tv static", "a checkerboard"];
    let new = ["a ball", "colour bars", "snow", "a zone plate"];
    let producer = Producer::start(&engine, "swap-cam", &old, 120, u64::MAX);
    let server = server();
    let mut c = client(&server).await;
    let mut detections = c
        .stream_detections(only("swap-cam"))
        .await
        .expect("subscribe")
        .into_inner();
    // Let some old-set results flow first.
    let mut seen = Vec::new();
    while seen.len() < 20 {
        match detections.next().await {
            Some(Ok(v1::DetectionEvent {
                event: Some(Event::Detection(d)),
            })) => seen.push(d),
            other => panic!("unexpected {other:?}"),
        }
    }
    let reply = c
        .set_labels(v1::SetLabelsRequest {
            stream: "swap-cam".into(),
            labels: Some(set(&new)),
            if_version: None,
        })
        .await
        .expect("set")
        .into_inner();
    let version = reply.sets[0].version;
    assert_eq!(version, 2);
    // Every frame submitted after the reply was scored by the new set.
    let submitted_before_reply = producer.stream.stats().frames_in;
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "the new set never reached frame {submitted_before_reply}"
        );
        match tokio::time::timeout(WAIT, detections.next()).await {
            Ok(Some(Ok(v1::DetectionEvent {
                event: Some(Event::Detection(d)),
            }))) => {
                let reached = d.frame >= submitted_before_reply;
                seen.push(d);
                if reached {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(producer);
    let mut last_version = 0;
    let mut last_frame = None;
    let switched_at = seen
        .iter()
        .find(|d| d.label_set_version == version)
        .map(|d| d.frame)
        .expect("a detection of the new version");
    for d in &seen {
        assert!(
            last_frame.is_none_or(|f| d.frame == f + 1),
            "frames in order, none missed"
        );
        last_frame = Some(d.frame);
        assert!(
            d.label_set_version >= last_version,
            "versions never go back"
        );
        last_version = d.label_set_version;
        let names: &[&str] = if d.label_set_version == 1 { &old } else { &new };
        assert!(!d.labels.is_empty());
        for l in &d.labels {
            assert!(
                names.contains(&l.label.as_str()),
                "frame {} (version {}) scored {:?}, not in its set",
                d.frame,
                d.label_set_version,
                l.label
            );
        }
        if d.frame >= submitted_before_reply {
            assert_eq!(
                d.label_set_version, version,
                "frame {} after the reply",
                d.frame
            );
        }
    }
    println!(
        "new set from frame {switched_at}; {submitted_before_reply} frames submitted when the reply arrived"
    );
}

/// A client whose HTTP/2 windows are tiny, so the server cannot buffer much for it.
async fn slow_client(addr: std::net::SocketAddr) -> v1::cliptag_client::CliptagClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .initial_stream_window_size(Some(2048))
        .initial_connection_window_size(Some(2048))
        .connect()
        .await
        .expect("connect");
    v1::cliptag_client::CliptagClient::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_lags_while_others_miss_nothing() {
    let _serial = serial().await;
    // A small ring so that the stalled subscriber falls out of it quickly.
    let (engine, _registration) = engine(64);
    let server = server();
    let mut fast = client(&server).await;
    let mut slow = slow_client(server.local_addr()).await;
    let mut fast_stream = fast
        .stream_detections(only("lag-cam"))
        .await
        .expect("fast")
        .into_inner();
    let mut slow_stream = slow
        .stream_detections(only("lag-cam"))
        .await
        .expect("slow")
        .into_inner();
    // Paced, so that the reading subscriber has slack on a busy machine (a 64-result ring
    // at 200 results/s: about 300 ms), while the stalled one, which can hold only a few
    // hundred results in its channel and HTTP/2 window, falls out of the ring.
    let frames = 1000;
    let producer = Producer::start(&engine, "lag-cam", &["a cat", "a dog"], 200, frames);
    // The fast subscriber reads everything while the slow one reads nothing.
    let mut got = Vec::new();
    while (got.len() as u64) < frames {
        match tokio::time::timeout(WAIT, fast_stream.next()).await {
            Ok(Some(Ok(v1::DetectionEvent {
                event: Some(Event::Detection(d)),
            }))) => got.push(d.frame),
            other => panic!("fast subscriber: unexpected {other:?}"),
        }
    }
    assert_eq!(producer.finish(), frames);
    assert_eq!(
        got,
        (0..frames).collect::<Vec<_>>(),
        "the fast subscriber missed nothing"
    );
    // Now the slow one reads: what it held, then news that it lagged, then the rest.
    let mut missed = 0;
    let mut read = Vec::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_secs(2), slow_stream.next()).await
    {
        match message.expect("slow subscriber").event {
            Some(Event::Lagged(l)) => missed += l.missed,
            Some(Event::Detection(d)) => read.push(d.frame),
            None => panic!("empty event"),
        }
    }
    assert!(
        missed > 0,
        "the stalled subscriber was never told it lagged"
    );
    assert_eq!(
        read.len() as u64 + missed,
        frames,
        "every result was either read or counted as missed"
    );
    assert_eq!(read.last(), Some(&(frames - 1)), "it continued to the end");
    println!("stalled subscriber: read {}, missed {missed}", read.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_subscribers_on_four_streams_get_every_result() {
    let _serial = serial().await;
    let (engine, _registration) = engine(4096);
    let server = server();
    let streams = ["fan-1", "fan-2", "fan-3", "fan-4"];
    let mut readers = Vec::new();
    for i in 0..100 {
        // Subscribers share connections ten by ten, like real clients multiplexing.
        let mut c = if i % 10 == 0 {
            client(&server).await
        } else {
            readers
                .last()
                .map(|(c, _): &(v1::cliptag_client::CliptagClient<Channel>, _)| c.clone())
                .expect("client")
        };
        let stream = c
            .stream_detections(v1::StreamDetectionsRequest {
                streams: streams.iter().map(|s| s.to_string()).collect(),
                include_empty: true,
                ..Default::default()
            })
            .await
            .expect("subscribe")
            .into_inner();
        readers.push((c, stream));
    }
    let seconds = 3;
    let per_stream = 30 * seconds;
    let producers: Vec<_> = streams
        .iter()
        .map(|s| Producer::start(&engine, s, &["a cat", "a dog"], 30, per_stream))
        .collect();
    let tasks: Vec<_> = readers
        .into_iter()
        .map(|(_c, mut stream)| {
            tokio::spawn(async move {
                let mut frames: BTreeMap<String, Vec<u64>> = BTreeMap::new();
                let mut lagged = 0;
                let mut total = 0;
                while total < 4 * per_stream {
                    match tokio::time::timeout(WAIT, stream.next()).await {
                        Ok(Some(Ok(v1::DetectionEvent {
                            event: Some(Event::Detection(d)),
                        }))) => {
                            frames.entry(d.stream).or_default().push(d.frame);
                            total += 1;
                        }
                        Ok(Some(Ok(v1::DetectionEvent {
                            event: Some(Event::Lagged(l)),
                        }))) => lagged += l.missed,
                        other => panic!("unexpected {other:?}"),
                    }
                }
                (frames, lagged)
            })
        })
        .collect();
    let mut lag_total = 0;
    for task in tasks {
        let (frames, lagged) = task.await.expect("reader");
        lag_total += lagged;
        for s in streams {
            assert_eq!(
                frames.get(s).cloned().unwrap_or_default(),
                (0..per_stream).collect::<Vec<_>>(),
                "stream {s}"
            );
        }
    }
    assert_eq!(lag_total, 0);
    for p in producers {
        assert_eq!(p.finish(), per_stream);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_narrow_and_streams_end_with_the_server() {
    let _serial = serial().await;
    let (engine, _registration) = engine(4096);
    let server = server();
    let mut c = client(&server).await;
    let mut filtered = c
        .stream_detections(v1::StreamDetectionsRequest {
            streams: vec!["filter-cam".into()],
            labels: vec!["a green image".into()],
            min_score: 0.0,
            changes_only: true,
            include_empty: false,
        })
        .await
        .expect("subscribe")
        .into_inner();
    let mut everything = c
        .stream_detections(only("filter-cam"))
        .await
        .expect("subscribe")
        .into_inner();
    let producer = Producer::start(
        &engine,
        "filter-cam",
        &["a green image", "a purple image"],
        0,
        40,
    );
    let mut all = Vec::new();
    while all.len() < 40 {
        match tokio::time::timeout(WAIT, everything.next()).await {
            Ok(Some(Ok(v1::DetectionEvent {
                event: Some(Event::Detection(d)),
            }))) => all.push(d),
            other => panic!("unexpected {other:?}"),
        }
    }
    producer.finish();
    // What the filtered subscriber should get, computed from the full stream.
    let mut expected = Vec::new();
    let mut last_top: HashMap<String, Option<String>> = HashMap::new();
    for d in &all {
        let labels: Vec<_> = d
            .labels
            .iter()
            .filter(|l| l.label == "a green image")
            .collect();
        let events = d.events.iter().any(|e| e.label == "a green image");
        if labels.is_empty() && !events {
            continue;
        }
        let top = labels.first().map(|l| l.label.clone());
        let previous = last_top.insert(d.stream.clone(), top.clone());
        if previous == Some(top) && !events {
            continue;
        }
        expected.push(d.frame);
    }
    assert!(!expected.is_empty());
    drop(server);
    // The server is gone: both streams end instead of hanging.
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, filtered.next()).await {
            Ok(Some(Ok(v1::DetectionEvent {
                event: Some(Event::Detection(d)),
            }))) => {
                assert!(d.labels.iter().all(|l| l.label == "a green image"));
                got.push(d.frame);
            }
            Ok(None) => break,
            Ok(Some(Err(status))) => panic!("stream failed: {status}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, expected);
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(Ok(_)) = everything.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the unfiltered stream did not end");
}
