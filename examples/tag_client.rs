//! A cliptag.v1 client in Rust with tonic: follow one stream's detections, add a label
//! while it runs (with a version check, so a concurrent edit is never overwritten), and
//! see the detections switch to the new label set.
//!
//! ```text
//! cliptag run --grpc 127.0.0.1:50051 --stream-id cam &
//! cargo run -p cliptag-proto --example tag_client -- http://127.0.0.1:50051 cam "concentric circles"
//! ```
//!
//! A client of its own needs only the generated code (`cliptag-proto`, or `proto/`
//! compiled with `tonic-prost-build`), tonic and tokio. With a server that has a token,
//! set CLIPTAG_TOKEN. Exits 1 if the new set never reaches a frame.

use std::time::Duration;

use cliptag_proto::v1;
use cliptag_proto::v1::cliptag_client::CliptagClient;
use tonic::Request;

/// Detections to see before the change, and with the new set after it.
const DETECTIONS: usize = 5;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("tag_client: the new label set reached no frame");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tag_client: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, stream, label] = args.as_slice() else {
        return Err("usage: tag_client http://HOST:PORT STREAM LABEL".into());
    };
    let channel = tonic::transport::Endpoint::from_shared(server.clone())?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await?;
    let mut client = CliptagClient::new(channel);

    let streams = client
        .list_streams(v1::ListStreamsRequest {})
        .await?
        .into_inner();
    println!(
        "streams: {:?}",
        streams.streams.iter().map(|s| &s.id).collect::<Vec<_>>()
    );
    let current = client
        .get_labels(v1::GetLabelsRequest {
            stream: stream.clone(),
        })
        .await?
        .into_inner()
        .sets
        .into_iter()
        .next()
        .ok_or("the stream has no label set")?;

    let mut detections = client
        .stream_detections(v1::StreamDetectionsRequest {
            streams: vec![stream.clone()],
            include_empty: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut next = async || -> Result<v1::Detection, Box<dyn std::error::Error>> {
        loop {
            let event = detections
                .message()
                .await?
                .ok_or("the server ended the stream")?;
            match event.event {
                Some(v1::detection_event::Event::Detection(d)) => return Ok(d),
                Some(v1::detection_event::Event::Lagged(l)) => {
                    println!("lagged: {} missed", l.missed)
                }
                None => {}
            }
        }
    };
    let show = |d: &v1::Detection| {
        let labels: Vec<String> = d
            .labels
            .iter()
            .map(|l| format!("{} {:.2}", l.label, l.score))
            .collect();
        println!(
            "frame {} v{}: {}",
            d.frame,
            d.label_set_version,
            labels.join(" | ")
        );
    };
    for _ in 0..DETECTIONS {
        show(&next().await?);
    }

    // Applies only if nobody changed the set since it was read (else FAILED_PRECONDITION).
    let mut change = Request::new(v1::UpdateLabelsRequest {
        stream: stream.clone(),
        add: vec![v1::Label {
            name: label.clone(),
            prompts: vec![],
        }],
        remove: vec![],
        if_version: Some(current.version),
    });
    if let Ok(token) = std::env::var("CLIPTAG_TOKEN") {
        change
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    let changed = client.update_labels(change).await?.into_inner();
    let version = changed.sets.first().map_or(0, |s| s.version);
    println!("label set v{version}: added {label:?}");

    let mut new = 0;
    let mut scored = false;
    while new < DETECTIONS {
        let d = tokio::time::timeout(Duration::from_secs(30), next()).await??;
        show(&d);
        if d.label_set_version >= version {
            new += 1;
            scored |= d.labels.iter().any(|l| &l.label == label);
        }
    }
    Ok(scored)
}
