//! The `cliptag.v1.Cliptag` service over the hub's engines (transport is in `server`).

use std::collections::HashSet;
use std::sync::Arc;

use cliptag_engine::{Engine, LabelError, LabelSet, LabelSetSpec, StreamInfo};
use cliptag_proto::v1;
use cliptag_proto::v1::cliptag_server::Cliptag;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::convert::{self, status};
use crate::detections::{self, Filter};
use crate::hub::hub;

/// Largest image `ClassifyImage` accepts, in bytes.
pub const MAX_IMAGE_BYTES: usize = 32 << 20;

/// The service. Cheap to clone; every clone serves the same streams.
#[derive(Clone)]
pub struct CliptagService {
    token: Option<Arc<str>>,
    shutdown: watch::Receiver<bool>,
}

impl CliptagService {
    /// A service that asks `token` of label changes (when given) and ends detection
    /// streams when `shutdown` turns true.
    pub fn new(token: Option<String>, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            token: token.map(Arc::from),
            shutdown,
        }
    }

    /// Refuses a label change without the right token.
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(Status::unauthenticated("wrong token")),
            None => Err(Status::unauthenticated(
                "label changes need the server's token: metadata `authorization: Bearer <token>`",
            )),
        }
    }
}

/// Compares without returning early, so response times do not reveal how much of a
/// guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The streams a request names: one by id, or every stream.
fn targets(stream: &str) -> Result<Vec<(Arc<Engine>, StreamInfo)>, Status> {
    if stream.is_empty() {
        let all = hub().streams();
        if all.is_empty() {
            return Err(Status::failed_precondition(
                "no stream is running in this process",
            ));
        }
        Ok(all)
    } else {
        hub()
            .stream(stream)
            .map(|s| vec![s])
            .ok_or_else(|| Status::not_found(format!("no stream {stream:?}")))
    }
}

/// Applies `edit` to the label set of every target, in order. The first refusal stops
/// the edit; as every set is checked the same way, a bad set is refused before any
/// change.
fn edit_all(
    targets: Vec<(Arc<Engine>, StreamInfo)>,
    if_version: Option<u64>,
    edit: impl Fn(&Engine, &str, Option<u64>) -> cliptag_engine::Result<Arc<LabelSet>>,
) -> Result<v1::LabelsChanged, Status> {
    if if_version.is_some() && targets.len() > 1 {
        return Err(Status::invalid_argument(
            "if_version needs a stream: sets of different streams have their own versions",
        ));
    }
    let mut done: Vec<(*const Engine, String, Arc<LabelSet>)> = Vec::new();
    let mut sets = Vec::with_capacity(targets.len());
    for (engine, info) in targets {
        let key = (Arc::as_ptr(&engine), info.label_set.clone());
        // Streams sharing a set change it once.
        let set = match done.iter().find(|(e, s, _)| (*e, s.clone()) == key) {
            Some((_, _, set)) => set.clone(),
            None => {
                let set = edit(&engine, &info.label_set, if_version).map_err(status)?;
                done.push((key.0, key.1, set.clone()));
                set
            }
        };
        sets.push(convert::state(&info.id, &set));
    }
    Ok(v1::LabelsChanged { sets })
}

/// Runs blocking work (text or image encoding) off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Status::internal(format!("the request's worker failed: {e}")))?
}

#[tonic::async_trait]
impl Cliptag for CliptagService {
    async fn list_streams(
        &self,
        _request: Request<v1::ListStreamsRequest>,
    ) -> Result<Response<v1::ListStreamsResponse>, Status> {
        let streams = hub()
            .streams()
            .into_iter()
            .map(|(engine, info)| v1::StreamInfo {
                label_set_version: engine.labels(&info.label_set).map_or(0, |s| s.version()),
                model: engine.model().source.clone(),
                stats: Some(convert::stats_to_proto(&info.stats)),
                label_set: info.label_set,
                id: info.id,
            })
            .collect();
        Ok(Response::new(v1::ListStreamsResponse { streams }))
    }

    async fn get_labels(
        &self,
        request: Request<v1::GetLabelsRequest>,
    ) -> Result<Response<v1::GetLabelsResponse>, Status> {
        let sets = targets(&request.get_ref().stream)?
            .into_iter()
            .filter_map(|(engine, info)| {
                let set = engine.labels(&info.label_set)?;
                Some(convert::state(&info.id, &set))
            })
            .collect();
        Ok(Response::new(v1::GetLabelsResponse { sets }))
    }

    async fn set_labels(
        &self,
        request: Request<v1::SetLabelsRequest>,
    ) -> Result<Response<v1::LabelsChanged>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        let labels = request
            .labels
            .ok_or_else(|| Status::invalid_argument("labels is required"))?;
        convert::check_scoring(&labels)?;
        let spec = convert::spec_from_proto(labels);
        spec.validate()
            .map_err(|e| Status::invalid_argument(format!("invalid label set: {e}")))?;
        let targets = targets(&request.stream)?;
        let changed = blocking(move || {
            edit_all(targets, request.if_version, |engine, set, if_version| {
                engine.set_labels(set, spec.clone(), if_version)
            })
        })
        .await?;
        Ok(Response::new(changed))
    }

    async fn update_labels(
        &self,
        request: Request<v1::UpdateLabelsRequest>,
    ) -> Result<Response<v1::LabelsChanged>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        if request.add.is_empty() && request.remove.is_empty() {
            return Err(Status::invalid_argument("nothing to add or remove"));
        }
        let add: Vec<_> = request
            .add
            .into_iter()
            .map(convert::label_from_proto)
            .collect();
        let remove = request.remove;
        let targets = targets(&request.stream)?;
        let changed = blocking(move || {
            edit_all(targets, request.if_version, |engine, set, if_version| {
                engine.edit_labels(set, if_version, |current| {
                    apply_update(current, &remove, &add)
                })
            })
        })
        .await?;
        Ok(Response::new(changed))
    }

    type StreamDetectionsStream = ReceiverStream<Result<v1::DetectionEvent, Status>>;

    async fn stream_detections(
        &self,
        request: Request<v1::StreamDetectionsRequest>,
    ) -> Result<Response<Self::StreamDetectionsStream>, Status> {
        let filter = Filter::new(request.get_ref())?;
        let (tx, rx) = mpsc::channel(detections::CHANNEL_DEPTH);
        let subscriber = detections::Subscriber::new(filter);
        tokio::spawn(subscriber.run(tx, self.shutdown.clone()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn classify_image(
        &self,
        request: Request<v1::ClassifyImageRequest>,
    ) -> Result<Response<v1::ClassifyImageResponse>, Status> {
        let request = request.into_inner();
        if request.image.is_empty() {
            return Err(Status::invalid_argument("image is empty"));
        }
        if request.image.len() > MAX_IMAGE_BYTES {
            return Err(Status::invalid_argument(format!(
                "image is {} bytes; at most {MAX_IMAGE_BYTES} are accepted",
                request.image.len()
            )));
        }
        let (engine, stream, set) = match request.labels {
            Some(labels) => {
                convert::check_scoring(&labels)?;
                let engine = match request.stream.as_str() {
                    "" => hub().engines().into_iter().next().ok_or_else(|| {
                        Status::failed_precondition("no model is running in this process")
                    })?,
                    id => targets(id)?.remove(0).0,
                };
                let spec = convert::spec_from_proto(labels);
                let compiled = {
                    let engine = engine.clone();
                    blocking(move || engine.compile_labels(spec).map_err(status)).await?
                };
                (engine, String::new(), Arc::new(compiled))
            }
            None => {
                let mut streams = targets(&request.stream)?;
                if streams.len() > 1 {
                    return Err(Status::invalid_argument(
                        "several streams run: name one, or give labels",
                    ));
                }
                let (engine, info) = streams.remove(0);
                let set = engine.labels(&info.label_set).ok_or_else(|| {
                    Status::failed_precondition(format!("stream {:?} has no labels", info.id))
                })?;
                (engine, info.id, set)
            }
        };
        let version = set.version();
        let image = request.image;
        let labels = blocking(move || {
            let rgb = cliptag_engine::cliptag_model::image_file::decode_rgb(&image)
                .map_err(|e| Status::invalid_argument(format!("cannot decode the image: {e}")))?;
            let frame = rgb
                .frame()
                .map_err(|e| Status::invalid_argument(format!("unusable image: {e}")))?;
            engine.classify(frame, &set).map_err(status)
        })
        .await?;
        Ok(Response::new(v1::ClassifyImageResponse {
            labels: labels
                .into_iter()
                .map(|l| v1::LabelScore {
                    label: l.label.to_string(),
                    score: l.score,
                })
                .collect(),
            stream,
            label_set_version: version,
        }))
    }
}

/// Removes `remove`, then appends `add`.
fn apply_update(
    current: &LabelSetSpec,
    remove: &[String],
    add: &[cliptag_engine::Label],
) -> Result<LabelSetSpec, LabelError> {
    let mut spec = current.clone();
    let mut removed = HashSet::new();
    for name in remove {
        if !removed.insert(name.as_str()) || !spec.labels.iter().any(|l| &l.name == name) {
            return Err(LabelError::NoSuchLabel(name.clone()));
        }
    }
    spec.labels.retain(|l| !removed.contains(l.name.as_str()));
    spec.labels.extend(add.iter().cloned());
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_remove_then_add() {
        let current = LabelSetSpec::from_names(&["a", "b", "c"]);
        let next = apply_update(&current, &["b".into()], &[cliptag_engine::Label::new("d")])
            .map(|s| s.labels.into_iter().map(|l| l.name).collect::<Vec<_>>());
        assert_eq!(next, Ok(vec!["a".into(), "c".into(), "d".into()]));
        assert_eq!(
            apply_update(&current, &["x".into()], &[]).map(|_| ()),
            Err(LabelError::NoSuchLabel("x".into()))
        );
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
