//! The `cliptag.v1.Cliptag` service over the hub's engines (transport is in `server`).

use std::collections::HashSet;
use std::sync::Arc;

use cliptag_engine::{Engine, EngineError, LabelError, LabelSet, LabelSetSpec, Quoted, StreamInfo};
use cliptag_proto::v1;
use cliptag_proto::v1::cliptag_server::Cliptag;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::brokers::{self, LabelsWriteError};
use crate::convert::{self, status};
use crate::detections::{self, Filter};
use crate::hub::hub;

/// Largest image `ClassifyImage` accepts, in bytes.
pub const MAX_IMAGE_BYTES: usize = 32 << 20;

/// Images `ClassifyImage` decodes and scores at once; more wait their turn, so that a
/// burst of requests cannot take every core (or the memory) from the pipelines.
const CLASSIFY_CONCURRENCY: usize = 2;

/// The service. Cheap to clone; every clone serves the same streams.
#[derive(Clone)]
pub struct CliptagService {
    token: Option<Arc<str>>,
    shutdown: watch::Receiver<bool>,
    classify: Arc<Semaphore>,
}

impl CliptagService {
    /// A service that asks `token` of label changes (when given) and ends detection
    /// streams when `shutdown` turns true.
    pub fn new(token: Option<String>, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            token: token.map(Arc::from),
            shutdown,
            classify: Arc::new(Semaphore::new(CLASSIFY_CONCURRENCY)),
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
            .ok_or_else(|| Status::not_found(format!("no stream {}", Quoted(stream))))
    }
}

/// One label set a request changes, checked and embedded, not yet swapped in.
struct Planned {
    engine: Arc<Engine>,
    set: String,
    version: u64,
    spec: LabelSetSpec,
}

/// Changes the label set of every target in two steps, so that a refusal changes
/// nothing: first every set's new spec is built, checked, tokenized and embedded
/// (filling the prompt cache); then each is swapped in, on condition that it is still
/// at the version the first step saw. Only a concurrent edit between the two steps can
/// stop the second one part way (with FAILED_PRECONDITION).
///
/// A set that follows a labels key changes through the key instead, so that every
/// process bound to it (this one included) takes the change the same way: once per key
/// (streams sharing a key are written once), on condition of `if_version` when given;
/// a replacement (`replace`) is written whatever the key holds, and an edit of the set
/// on condition that the key is still at the version the edit started from, so that
/// no other change is lost.
fn edit_all(
    targets: Vec<(Arc<Engine>, StreamInfo)>,
    if_version: Option<u64>,
    replace: bool,
    change: impl Fn(&str, Option<&LabelSetSpec>) -> cliptag_engine::Result<LabelSetSpec>,
) -> Result<v1::LabelsChanged, Status> {
    let mut plans: Vec<Planned> = Vec::new();
    for (engine, info) in &targets {
        // Streams sharing a set change it once.
        if plans
            .iter()
            .any(|p| Arc::ptr_eq(&p.engine, engine) && p.set == info.label_set)
        {
            continue;
        }
        let current = engine.labels(&info.label_set);
        let version = current.as_ref().map_or(0, |c| c.version());
        if let Some(expected) = if_version
            && expected != version
        {
            return Err(status(EngineError::VersionMismatch {
                set: info.label_set.clone(),
                expected,
                current: version,
            }));
        }
        let spec = change(&info.label_set, current.as_ref().map(|c| c.spec())).map_err(status)?;
        engine.compile_labels(spec.clone()).map_err(status)?;
        plans.push(Planned {
            engine: engine.clone(),
            set: info.label_set.clone(),
            version,
            spec,
        });
    }
    let mut swapped: Vec<(usize, Arc<LabelSet>)> = Vec::with_capacity(plans.len());
    let mut written: Vec<(Arc<brokers::BindingInner>, u64)> = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        let set = match brokers::binding_of(&plan.engine, &plan.set) {
            Some(binding) => {
                match written.iter().find(|(b, _)| b.same_key(&binding)) {
                    Some((_, revision)) => binding.wait_for(*revision),
                    None => {
                        let condition = if_version.or((!replace).then_some(plan.version));
                        binding.write(&plan.spec, condition).map(|revision| {
                            written.push((binding.clone(), revision));
                        })
                    }
                }
                .map_err(write_status)?;
                plan.engine.labels(&plan.set).ok_or_else(|| {
                    Status::internal(format!("label set {} vanished", Quoted(&plan.set)))
                })?
            }
            None => plan
                .engine
                .set_labels(&plan.set, plan.spec.clone(), Some(plan.version))
                .map_err(status)?,
        };
        swapped.push((i, set));
    }
    let sets = targets
        .iter()
        .filter_map(|(engine, info)| {
            let (_, set) = swapped.iter().find(|(i, _)| {
                Arc::ptr_eq(&plans[*i].engine, engine) && plans[*i].set == info.label_set
            })?;
            Some(convert::state(&info.id, set))
        })
        .collect();
    Ok(v1::LabelsChanged { sets })
}

/// A write through a labels key that was not made.
fn write_status(error: LabelsWriteError) -> Status {
    match error {
        LabelsWriteError::Conflict { .. } => Status::failed_precondition(error.to_string()),
        LabelsWriteError::Unavailable(_) => Status::unavailable(error.to_string()),
        LabelsWriteError::Refused(_) => Status::invalid_argument(error.to_string()),
    }
}

/// `if_version` names one set's version: it needs a stream.
fn check_if_version(stream: &str, if_version: Option<u64>) -> Result<(), Status> {
    if if_version.is_some() && stream.is_empty() {
        return Err(Status::invalid_argument(
            "if_version needs a stream: sets of different streams have their own versions",
        ));
    }
    Ok(())
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
        let mut supervised: std::collections::BTreeMap<_, _> =
            hub().supervised().into_iter().collect();
        let mut streams: Vec<v1::StreamInfo> = hub()
            .streams()
            .into_iter()
            .map(|(engine, info)| v1::StreamInfo {
                label_set_version: engine.labels(&info.label_set).map_or(0, |s| s.version()),
                model: engine.model().source.clone(),
                dtype: format!("{:?}", engine.model().network.dtype()).to_lowercase(),
                stats: Some(convert::stats_to_proto(&info.stats)),
                health: supervised
                    .remove(&info.id)
                    .map(|h| convert::health_to_proto(&h)),
                brokers: brokers::links_of(&info.id),
                labels_binding: brokers::binding_proto(&engine, &info.label_set),
                label_set: info.label_set,
                id: info.id,
            })
            .collect();
        // Supervised streams whose pipelines are down: no engine knows them now.
        streams.extend(supervised.into_iter().map(|(id, h)| v1::StreamInfo {
            model: h.model.clone(),
            health: Some(convert::health_to_proto(&h)),
            id,
            ..Default::default()
        }));
        streams.sort_by(|a, b| a.id.cmp(&b.id));
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
        check_if_version(&request.stream, request.if_version)?;
        let targets = targets(&request.stream)?;
        let changed =
            blocking(move || edit_all(targets, request.if_version, true, |_, _| Ok(spec.clone())))
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
        check_if_version(&request.stream, request.if_version)?;
        let targets = targets(&request.stream)?;
        let changed = blocking(move || {
            edit_all(
                targets,
                request.if_version,
                false,
                |set, current| match current {
                    Some(current) => Ok(apply_update(current, &remove, &add)?),
                    None => Err(EngineError::UnknownLabelSet(set.to_string())),
                },
            )
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
                    Status::failed_precondition(format!(
                        "stream {} has no labels",
                        Quoted(&info.id)
                    ))
                })?;
                (engine, info.id, set)
            }
        };
        let version = set.version();
        let image = request.image;
        let _turn = self
            .classify
            .acquire()
            .await
            .map_err(|_| Status::unavailable("the server is stopping"))?;
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
