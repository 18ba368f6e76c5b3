//! The element's gRPC server in real pipelines: labels changed by a tonic client reach
//! the buffers' meta and the detection stream, the server stops with the pipeline, and
//! an address that cannot be served fails the state change with a message naming it.

use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use cliptag_proto::v1::{self, cliptag_client::CliptagClient, detection_event::Event};
use gst::prelude::*;
use gstcliptag::meta::{self, Tags};
use tokio_stream::StreamExt;

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().expect("gst init");
        gstcliptag::register_static().expect("register the plugin");
    });
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

const WAIT: Duration = Duration::from_secs(60);

async fn connect(port: u16) -> CliptagClient<tonic::transport::Channel> {
    let deadline = Instant::now() + WAIT;
    loop {
        match CliptagClient::connect(format!("http://127.0.0.1:{port}")).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("no server on {port}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_set_over_grpc_reach_the_meta_and_the_stream_ends_with_the_pipeline() {
    init();
    let port = free_port();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc pattern=ball is-live=true \
         ! video/x-raw,width=160,height=120,framerate=30/1 \
         ! cliptag name=tagger stream-id=grpc-cam grpc-address=127.0.0.1:{port} \
           labels=\"a moving ball,smpte color bars\" ! appsink name=out sync=false"
    ))
    .expect("pipeline")
    .downcast::<gst::Pipeline>()
    .expect("a pipeline");
    let tags: Arc<Mutex<Vec<Tags>>> = Arc::default();
    let sink = pipeline
        .by_name("out")
        .and_downcast::<gst_app::AppSink>()
        .expect("appsink");
    let t = tags.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                if let Some(tags) = meta::read(buffer) {
                    t.lock().expect("tags").push(tags);
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    pipeline.set_state(gst::State::Playing).expect("playing");
    let mut client = connect(port).await;
    let mut detections = client
        .stream_detections(v1::StreamDetectionsRequest {
            streams: vec!["grpc-cam".into()],
            include_empty: true,
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let first = tokio::time::timeout(WAIT, detections.next())
        .await
        .expect("a detection in time");
    let Some(Ok(v1::DetectionEvent {
        event: Some(Event::Detection(first)),
    })) = first
    else {
        panic!("unexpected {first:?}");
    };
    assert_eq!(first.label_set_version, 1);
    assert_eq!(first.labels[0].label, "a moving ball");

    let new = ["tv static", "a checkerboard", "a moving ball again"];
    let reply = client
        .set_labels(v1::SetLabelsRequest {
            stream: "grpc-cam".into(),
            labels: Some(v1::LabelSet {
                labels: new
                    .iter()
                    .map(|n| v1::Label {
                        name: n.to_string(),
                        prompts: vec![],
                    })
                    .collect(),
                ..Default::default()
            }),
            if_version: Some(1),
        })
        .await
        .expect("set labels")
        .into_inner();
    assert_eq!(reply.sets[0].version, 2);
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "version 2 never reached a detection"
        );
        match tokio::time::timeout(WAIT, detections.next()).await {
            Ok(Some(Ok(v1::DetectionEvent {
                event: Some(Event::Detection(d)),
            }))) if d.label_set_version == 2 => {
                assert!(d.labels.iter().all(|l| new.contains(&l.label.as_str())));
                break;
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // So do the element's label properties, which read the set the stream is scored by.
    let tagger = pipeline.by_name("tagger").expect("the cliptag element");
    assert_eq!(tagger.property::<String>("labels"), new.join(","));
    let list: Vec<String> = tagger
        .property::<gst::Array>("label-list")
        .iter()
        .filter_map(|v| v.get::<String>().ok())
        .collect();
    assert_eq!(list, new);
    // A property set now changes only itself: the labels set over gRPC stay.
    tagger.set_property("threshold", 0.3f64);
    assert_eq!(tagger.property::<f64>("threshold"), 0.3);
    assert_eq!(tagger.property::<String>("labels"), new.join(","));
    // The buffers say the same.
    let deadline = Instant::now() + WAIT;
    while !tags.lock().expect("tags").iter().any(|t| t.version == 2) {
        assert!(Instant::now() < deadline, "no buffer carries version 2");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tags.lock().expect("tags").iter().filter(|t| t.version == 2) {
        assert!(t.labels.iter().all(|(l, _)| new.contains(&l.as_str())));
    }

    // Stopping the pipeline stops the server: the stream ends, new calls fail.
    tokio::task::spawn_blocking(move || pipeline.set_state(gst::State::Null))
        .await
        .expect("join")
        .expect("null");
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match detections.next().await {
                Some(Ok(_)) => continue,
                Some(Err(status)) => break Some(status),
                None => break None,
            }
        }
    })
    .await
    .expect("the stream ended");
    assert!(ended.is_none(), "the stream ended with an error: {ended:?}");
    assert!(
        CliptagClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .is_err(),
        "the server still accepts connections"
    );
}

#[test]
fn an_address_that_cannot_be_served_fails_with_a_message_naming_it() {
    init();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers=5 ! cliptag grpc-address=127.0.0.1:{port} ! fakesink"
    ))
    .expect("pipeline");
    assert!(pipeline.set_state(gst::State::Playing).is_err());
    let msg = pipeline
        .bus()
        .expect("bus")
        .timed_pop_filtered(gst::ClockTime::from_seconds(10), &[gst::MessageType::Error])
        .expect("an error on the bus");
    let gst::MessageView::Error(err) = msg.view() else {
        unreachable!("filtered")
    };
    let text = format!("{} {:?}", err.error(), err.debug());
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(text.contains("cannot serve gRPC"), "{text}");
    pipeline.set_state(gst::State::Null).expect("null");
}
