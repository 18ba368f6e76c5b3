//! The element's implementation.
//!
//! ```text
//! gst-launch-1.0 filesrc location=clip.webm ! decodebin ! videoconvert \
//!     ! cliptag labels="a dog,a cat" ! videoconvert ! autovideosink
//! ```
//!
//! Sync mode: the sink pad maps each buffer (no copy) and submits it to the engine; the
//! engine hands frames back in order with their results on its worker thread, where the
//! meta is attached and the buffer queued for the source pad's task, which pushes
//! downstream. Serialized events ride in order with the frames (`Stream::after_frames`)
//! through the same queue, so they neither overtake frames nor wait for them on the
//! streaming thread. What the element holds is bounded (`max-in-flight`, see
//! [`super::outbound`]): the sink pad waits for room, so a source faster than the sink
//! is held back. A flush starts a new generation: nothing from before it is pushed after
//! the FlushStop. The streaming thread never runs the model.
//!
//! Async mode: the sink pad attaches the newest result available and pushes the buffer
//! at once; a reference to it goes to the engine only when there is room.
//!
//! A batch that fails as a whole (the inference worker panicked, the forward pass
//! failed) posts an ERROR naming the cause and makes the chain function return an error,
//! so the pipeline ends instead of waiting for results that will never come.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use cliptag_engine::cliptag_model::FrameRef;
use cliptag_engine::{Completion, Engine, FrameResult, FrameTiming, Stream, VideoFrame};
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::key_writer::KeyWriter;
use super::outbound::{Item, Next, Outbound};
use cliptag_service::brokers::{LabelsBinding, LabelsKey, Publisher, redacted_url};

use super::settings::{
    self, Mode, NatsFormat, Overload, PROPERTIES, Scoring, Settings, check_device, check_dtype,
    checked_text, optional_text, split_labels,
};
use crate::frame::{self, MappedFrame};
use crate::meta;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "cliptag",
        gst::DebugColorFlags::empty(),
        Some("open-vocabulary CLIP labels on video frames"),
    )
});

/// Negotiated input.
#[derive(Clone)]
struct Input {
    info: gst_video::VideoInfo,
    format: cliptag_engine::cliptag_model::PixelFormat,
    colorimetry: cliptag_engine::cliptag_model::preprocess::Colorimetry,
}

/// A mapped buffer on its way through the engine, with the generation it was taken in.
struct InFlight {
    frame: MappedFrame,
    generation: u64,
}

impl VideoFrame for InFlight {
    fn pixels(&self) -> FrameRef<'_> {
        self.frame.pixels()
    }
}

/// What exists between READY and NULL, and between PAUSED and READY.
#[derive(Default)]
struct State {
    engine: Option<Arc<Engine>>,
    /// The label set this element's stream is scored by.
    label_set: String,
    model_name: String,
    /// Latency the element adds in sync mode.
    latency: gst::ClockTime,
    stream: Option<Arc<Stream>>,
    input: Option<Input>,
    segment: Option<gst::FormattedSegment<gst::ClockTime>>,
    /// Sync mode: the queue to the source pad's task.
    out: Option<Arc<Outbound>>,
    /// Keeps the engine visible to the process's gRPC servers.
    registration: Option<cliptag_service::Registration>,
    /// The server `grpc-address` names.
    server: Option<Arc<cliptag_service::Server>>,
    /// Publishes the stream's detections to `nats-url` and `mqtt-url`.
    publisher: Option<Publisher>,
    /// Keeps the label set following `labels-key`.
    binding: Option<Arc<LabelsBinding>>,
}

pub struct Cliptag {
    sinkpad: gst::Pad,
    srcpad: gst::Pad,
    settings: Mutex<Settings>,
    state: Mutex<State>,
    flushing: AtomicBool,
    /// Inference failed and the error was posted: frames are refused until a flush.
    failed: AtomicBool,
    /// Frames seen since the stream started (async mode numbers frames itself).
    frames: AtomicU64,
    /// Label properties set while the labels follow a key, written through it.
    key_writer: Arc<KeyWriter>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long the way to READY waits for a `labels-key` to be read before it scores with
/// the element's own labels (and says so).
const LABELS_KEY_WAIT: Duration = Duration::from_secs(2);

/// How long the way to PAUSED waits for the brokers before it says which are unreachable
/// (publishing goes on trying).
const BROKER_WAIT: Duration = Duration::from_millis(500);

/// How long a serialized query waits for the frames before it.
const QUERY_DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the source pad's task waits for an item before it looks again.
const TASK_WAIT: Duration = Duration::from_millis(100);

impl Cliptag {
    fn stream_id(&self) -> String {
        lock(&self.settings)
            .stream_id
            .clone()
            .unwrap_or_else(|| self.obj().name().to_string())
    }

    // ------------------------------------------------------------------ lifecycle

    /// NULL -> READY: load (or join) the engine and set the labels.
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = lock(&self.settings).clone();
        let config = settings
            .engine_config()
            .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ["{e}"]))?;
        let engine = match &settings.engine_id {
            None => Engine::new(config),
            Some(id) => cliptag_service::hub().shared_engine(id, config),
        }
        .map_err(|e| {
            gst::error_msg!(gst::ResourceError::OpenRead, ["cannot load the model: {e}"])
        })?;
        let label_set = self.stream_id();
        let spec = settings
            .label_spec()
            .map_err(|e| gst::error_msg!(gst::ResourceError::OpenRead, ["{e}"]))?;
        let labels_key = settings
            .labels_key()
            .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ["{e}"]))?;
        let binding = match &labels_key {
            None => {
                engine
                    .set_labels(&label_set, spec, None)
                    .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ["{e}"]))?;
                None
            }
            Some(key) => Some(self.bind_labels(&engine, &label_set, key, spec)?),
        };
        let inference = engine
            .warm_up(settings.max_batch as usize)
            .map_err(|e| gst::error_msg!(gst::LibraryError::Failed, ["{e}"]))?;
        let latency = gst::ClockTime::from_nseconds(
            (inference + Duration::from_millis(u64::from(settings.max_latency_ms))).as_nanos()
                as u64,
        );
        let network = &engine.model().network;
        let dtype = format!("{:?}", network.dtype()).to_lowercase();
        gst::info!(
            CAT,
            imp = self,
            "model {} ready in {dtype} ({}); adds {latency} in sync mode",
            engine.model().source,
            network.plan().kernel()
        );
        if settings.dtype.trim() == "bf16" && dtype != "bf16" {
            gst::element_warning!(
                self.obj(),
                gst::LibraryError::Settings,
                [
                    "dtype=bf16 runs in {dtype} here: this CPU ({}) has no bf16 dot products (AVX512_BF16)",
                    cliptag_engine::cliptag_model::CpuFeatures::detected().names()
                ]
            );
        }
        let server = settings
            .server_config()
            .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ["{e}"]))?
            .map(|config| {
                let address = config.address.clone();
                let server = cliptag_service::Server::shared(config).map_err(|e| {
                    gst::error_msg!(
                        gst::ResourceError::OpenReadWrite,
                        ["cannot serve gRPC on {address}: {e}"]
                    )
                })?;
                gst::info!(CAT, imp = self, "gRPC on {}", server.local_addr());
                Ok::<_, gst::ErrorMessage>(server)
            })
            .transpose()?;
        let mut state = lock(&self.state);
        state.model_name = engine.model().source.clone();
        state.registration = Some(cliptag_service::hub().register(&engine));
        state.server = server;
        state.binding = binding;
        state.engine = Some(engine);
        state.label_set = label_set;
        state.latency = latency;
        Ok(())
    }

    /// Binds the label set to `key`: its own labels score at version 0 until the key is
    /// read (and are written there when the key has none).
    fn bind_labels(
        &self,
        engine: &Arc<Engine>,
        label_set: &str,
        key: &LabelsKey,
        spec: cliptag_engine::LabelSetSpec,
    ) -> Result<Arc<LabelsBinding>, gst::ErrorMessage> {
        // A set already bound in this engine (a restart in one process) keeps its revision.
        if engine.labels(label_set).is_none_or(|s| s.version() == 0) {
            engine
                .install_labels(label_set, spec.clone(), 0)
                .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ["{e}"]))?;
        }
        let binding = LabelsBinding::start(engine, label_set, key, &spec)
            .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ["{e}"]))?;
        match binding.wait_ready(LABELS_KEY_WAIT) {
            Some(revision) => gst::info!(
                CAT,
                imp = self,
                "labels from key {:?} at revision {revision}",
                key.key
            ),
            None => gst::element_imp_warning!(
                self,
                gst::ResourceError::OpenRead,
                [
                    "labels key {:?} of bucket {:?} not read within {} s (is NATS at {} up, with JetStream?); scoring with this element's labels at version 0 until it is",
                    key.key,
                    key.bucket,
                    LABELS_KEY_WAIT.as_secs(),
                    binding.to_proto().url
                ]
            ),
        }
        Ok(Arc::new(binding))
    }

    /// Starts publishing detections when `nats-url` or `mqtt-url` is set; a broker that
    /// does not answer at once is said on the bus, once, and retried in the background.
    fn start_publishing(
        &self,
        settings: &Settings,
    ) -> Result<Option<Publisher>, gst::ErrorMessage> {
        let Some(publish) = settings.publish_settings() else {
            return Ok(None);
        };
        let publisher = Publisher::start(&self.stream_id(), &publish)
            .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ["{e}"]))?;
        for down in publisher.unreachable(BROKER_WAIT) {
            gst::element_imp_warning!(
                self,
                gst::ResourceError::OpenWrite,
                [
                    "{down}; the pipeline runs on, detections wait in an outbox of {} (the oldest dropped when full) and are sent once it connects",
                    publish.outbox
                ]
            );
        }
        Ok(Some(publisher))
    }

    /// READY -> PAUSED: attach the stream and start the source pad's task.
    fn attach(&self) -> Result<(), gst::ErrorMessage> {
        let settings = lock(&self.settings).clone();
        let publisher = self.start_publishing(&settings)?;
        let outlet = publisher.as_ref().map(Publisher::outlet);
        let publish = move |done: &Completion| {
            if let Some(outlet) = &outlet
                && done.error.is_none()
            {
                outlet.offer(&done.result);
            }
        };
        let mut state = lock(&self.state);
        let engine = state
            .engine
            .clone()
            .ok_or_else(|| gst::error_msg!(gst::CoreError::StateChange, ["no engine"]))?;
        let config = settings.stream_config(&state.label_set);
        let element = self.obj().downgrade();
        let model = state.model_name.clone();
        let out = Arc::new(Outbound::new());
        let stream = match settings.mode {
            Mode::Sync => {
                let out = out.clone();
                engine.attach(&self.stream_id(), config, move |done: Completion| {
                    publish(&done);
                    if let Some(element) = element.upgrade() {
                        element.imp().deliver(done, &out, &model);
                    }
                })
            }
            // Async frames went downstream when they arrived: only a failure matters.
            Mode::Async => engine.attach(&self.stream_id(), config, move |done: Completion| {
                publish(&done);
                if let (Some(element), Some(cause)) = (element.upgrade(), &done.error) {
                    element.imp().fail_inference(cause, None);
                }
            }),
        }
        .map_err(|e| gst::error_msg!(gst::CoreError::StateChange, ["{e}"]))?;
        state.stream = Some(Arc::new(stream));
        state.out = (settings.mode == Mode::Sync).then_some(out);
        state.publisher = publisher;
        drop(state);
        self.flushing.store(false, Ordering::SeqCst);
        self.failed.store(false, Ordering::SeqCst);
        self.frames.store(0, Ordering::SeqCst);
        if settings.mode == Mode::Sync {
            self.ensure_task()
                .map_err(|e| gst::error_msg!(gst::CoreError::StateChange, ["{e}"]))?;
        }
        Ok(())
    }

    /// PAUSED -> READY: stop the task and detach (pending frames are dropped).
    fn detach(&self) {
        self.flushing.store(true, Ordering::SeqCst);
        let (stream, out) = {
            let state = lock(&self.state);
            (state.stream.clone(), state.out.clone())
        };
        if let Some(out) = &out {
            out.flush_start();
        }
        if let Some(stream) = &stream {
            stream.flush();
        }
        let _ = self.srcpad.stop_task();
        let mut state = lock(&self.state);
        // The stream detaches when its last handle goes, here or in a chain call that
        // is returning.
        state.stream = None;
        state.out = None;
        state.input = None;
        state.segment = None;
        let publisher = state.publisher.take();
        drop(state);
        // Sends what its outboxes hold (briefly, while connected): not under the lock.
        drop(publisher);
    }

    fn stop(&self) {
        let (server, registration, engine, binding) = {
            let mut state = lock(&self.state);
            (
                state.server.take(),
                state.registration.take(),
                state.engine.take(),
                state.binding.take(),
            )
        };
        drop(binding);
        // Detection streams end first, then the stream leaves the service, then the
        // engine goes (stopping a server waits for its clients: not under the lock).
        drop(server);
        drop(registration);
        drop(engine);
    }

    /// Starts the source pad's task, or resumes it where it is paused (after a flush or
    /// an EOS).
    fn ensure_task(&self) -> Result<(), glib::BoolError> {
        // gst_pad_start_task on a pad that has a task ignores the new function and
        // never frees it: the task made at attach is resumed instead, as
        // gst_pad_start_task itself would.
        // SAFETY: the pad's task pointer is read under the pad's object lock, as
        // gst_pad_start_task reads it; the pad keeps its reference to the task, which is
        // only set to started.
        let resumed = unsafe {
            let _guard = self.srcpad.object_lock();
            let task = (*self.srcpad.as_ptr()).task;
            !task.is_null()
                && gst::ffi::gst_task_set_state(task, gst::ffi::GST_TASK_STARTED)
                    != glib::ffi::GFALSE
        };
        if resumed {
            return Ok(());
        }
        let element = self.obj().downgrade();
        self.srcpad.start_task(move || {
            let Some(element) = element.upgrade() else {
                return;
            };
            element.imp().push_next();
        })
    }

    /// Restarts the task from whichever thread queued an item after it parked.
    fn resume_task(&self) {
        if let Err(e) = self.ensure_task() {
            gst::element_imp_error!(
                self,
                gst::CoreError::Failed,
                ["cannot restart the source pad's task: {e}"]
            );
        }
    }

    // ------------------------------------------------------------------ results

    /// Sync mode, on the thread that delivers results (usually the engine's worker):
    /// attach the result and queue the buffer for the task.
    fn deliver(&self, done: Completion, out: &Outbound, model: &str) {
        let result = done.result.clone();
        let error = done.error.clone();
        let Some(frame) = done.into_frame::<InFlight>() else {
            return;
        };
        let generation = frame.generation;
        if let Some(cause) = error {
            out.release_frame(generation);
            self.fail_inference(&cause, Some(out));
            return;
        }
        if !out.is_current(generation) {
            return;
        }
        let mut buffer = frame.frame.into_buffer();
        meta::attach(buffer.make_mut(), &result, model);
        self.post(&result, model);
        out.send(generation, Item::Buffer(buffer), || self.resume_task());
    }

    /// Inference failed as a whole: one ERROR on the bus naming the cause, and every
    /// later frame refused with an error, so the pipeline stops.
    fn fail_inference(&self, cause: &str, out: Option<&Outbound>) {
        if let Some(out) = out {
            out.set_flow(Err(gst::FlowError::Error));
        }
        if !self.failed.swap(true, Ordering::SeqCst) {
            let stream = self.stream_id();
            gst::element_imp_error!(
                self,
                gst::LibraryError::Failed,
                ["inference stopped on stream {stream}: {cause}"]
            );
        }
    }

    fn post(&self, result: &FrameResult, model: &str) {
        if !lock(&self.settings).post_messages {
            return;
        }
        let mut s = meta::structure(result, model);
        if let Some(pts) = result.timing.pts_ns {
            s.set("timestamp", pts);
        }
        if let Some(rt) = result.timing.running_time_ns {
            s.set("running-time", rt);
        }
        let obj = self.obj();
        let _ = obj.post_message(gst::message::Element::builder(s).src(&*obj).build());
    }

    /// The source pad's task: push the next buffer or event downstream.
    fn push_next(&self) {
        let Some(out) = lock(&self.state).out.clone() else {
            let _ = self.srcpad.pause_task();
            return;
        };
        match out.next(TASK_WAIT) {
            Next::Idle => {}
            Next::Closed => {
                let _ = self.srcpad.pause_task();
            }
            Next::Item(Item::Buffer(buffer)) => {
                let res = self.srcpad.push(buffer);
                out.set_flow(res);
                if let Err(err) = res {
                    gst::debug!(CAT, imp = self, "pausing after push: {err:?}");
                    if matches!(err, gst::FlowError::NotNegotiated | gst::FlowError::Error) {
                        gst::element_imp_error!(
                            self,
                            gst::StreamError::Failed,
                            ["downstream refused a buffer: {err:?}"]
                        );
                    }
                    let _ = self.srcpad.pause_task();
                }
            }
            Next::Item(Item::Event(event)) => {
                let eos = matches!(event.view(), gst::EventView::Eos(_));
                if !self.srcpad.push_event(event) {
                    gst::debug!(CAT, imp = self, "downstream refused an event");
                }
                if eos {
                    // Nothing follows an EOS until a flush or a new stream, which
                    // restarts the task.
                    out.park_if_idle(|| {
                        let _ = self.srcpad.pause_task();
                    });
                }
            }
        }
    }

    // ------------------------------------------------------------------ sink pad

    fn sink_chain(&self, buffer: gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        if self.flushing.load(Ordering::SeqCst) {
            return Err(gst::FlowError::Flushing);
        }
        if self.failed.load(Ordering::SeqCst) {
            return Err(gst::FlowError::Error);
        }
        let (stream, out, input, segment, model) = {
            let state = lock(&self.state);
            (
                state.stream.clone(),
                state.out.clone(),
                state.input.clone(),
                state.segment.clone(),
                state.model_name.clone(),
            )
        };
        let stream = stream.ok_or(gst::FlowError::Flushing)?;
        let Some(input) = input else {
            gst::element_imp_error!(
                self,
                gst::CoreError::Negotiation,
                ["a buffer arrived before caps"]
            );
            return Err(gst::FlowError::NotNegotiated);
        };
        let pts = buffer.pts();
        let timing = FrameTiming {
            pts_ns: pts.map(|t| t.nseconds()),
            running_time_ns: segment
                .as_ref()
                .zip(pts)
                .and_then(|(s, t)| s.to_running_time(t))
                .map(|t| t.nseconds()),
        };
        match out {
            Some(out) => self.chain_sync(&stream, &out, buffer, &input, timing),
            None => self.chain_async(&stream, buffer, &input, timing, &model),
        }
    }

    fn chain_sync(
        &self,
        stream: &Stream,
        out: &Outbound,
        buffer: gst::Buffer,
        input: &Input,
        timing: FrameTiming,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let bound = lock(&self.settings).in_flight_bound();
        let generation = out.reserve_frame(bound)?;
        let frame = match self.map(buffer, input) {
            Ok(frame) => frame,
            Err(e) => {
                out.release_frame(generation);
                return Err(e);
            }
        };
        if let Err(e) = stream.submit(InFlight { frame, generation }, timing) {
            gst::debug!(CAT, imp = self, "submit: {e}");
            out.release_frame(generation);
            return Err(gst::FlowError::Flushing);
        }
        out.flow()
    }

    fn chain_async(
        &self,
        stream: &Stream,
        mut buffer: gst::Buffer,
        input: &Input,
        timing: FrameTiming,
        model: &str,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let frame_no = self.frames.fetch_add(1, Ordering::SeqCst);
        if let Some(latest) = stream.latest() {
            let mut result = (*latest).clone();
            result.stale = latest.computed_for != Some(frame_no);
            result.frame = frame_no;
            result.timing = timing;
            result.events.clear();
            meta::attach(buffer.make_mut(), &result, model);
            self.post(&result, model);
        }
        // The engine reads a second reference; the meta is already on the buffer. A
        // buffer that cannot be read as the caps say ends here, with the error posted.
        let frame = self.map(buffer.clone(), input)?;
        let _ = stream.submit(
            InFlight {
                frame,
                generation: 0,
            },
            timing,
        );
        self.srcpad.push(buffer)
    }

    fn map(&self, buffer: gst::Buffer, input: &Input) -> Result<MappedFrame, gst::FlowError> {
        let frame = MappedFrame::map(buffer, &input.info, input.format, input.colorimetry)
            .map_err(|_| {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Format,
                    [
                        "a buffer does not hold a {}x{} {:?} frame",
                        input.info.width(),
                        input.info.height(),
                        input.info.format()
                    ]
                );
                gst::FlowError::Error
            })?;
        frame::check(&frame).map_err(|e| {
            gst::element_imp_error!(self, gst::StreamError::Format, ["unreadable frame: {e}"]);
            gst::FlowError::Error
        })?;
        Ok(frame)
    }

    fn sink_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        match event.view() {
            gst::EventView::FlushStart(_) => {
                self.flushing.store(true, Ordering::SeqCst);
                let (stream, out) = {
                    let state = lock(&self.state);
                    (state.stream.clone(), state.out.clone())
                };
                // A new generation first: a result being delivered right now is dropped
                // when it reaches the queue; the engine's flush then waits for it.
                if let Some(out) = &out {
                    out.flush_start();
                }
                if let Some(stream) = stream {
                    stream.flush();
                }
                let ok = self.srcpad.push_event(event);
                let _ = self.srcpad.pause_task();
                ok
            }
            gst::EventView::FlushStop(_) => {
                let (stream, out) = {
                    let state = lock(&self.state);
                    (state.stream.clone(), state.out.clone())
                };
                // A frame that was waiting for room in the engine when the flush started
                // may have gone in since: it belongs before the flush.
                if let Some(stream) = stream {
                    stream.flush();
                }
                if let Some(out) = &out {
                    out.flush_stop();
                }
                let ok = self.srcpad.push_event(event);
                self.failed.store(false, Ordering::SeqCst);
                self.flushing.store(false, Ordering::SeqCst);
                if out.is_some()
                    && let Err(e) = self.ensure_task()
                {
                    gst::element_imp_error!(
                        self,
                        gst::CoreError::Failed,
                        ["cannot restart the task: {e}"]
                    );
                    return false;
                }
                ok
            }
            gst::EventView::Caps(c) => {
                let caps = c.caps_owned();
                let info = match gst_video::VideoInfo::from_caps(&caps) {
                    Ok(info) => info,
                    Err(e) => {
                        gst::element_imp_error!(
                            self,
                            gst::CoreError::Negotiation,
                            ["invalid caps {caps}: {e}"]
                        );
                        return false;
                    }
                };
                let Some(format) = frame::pixel_format(info.format()) else {
                    gst::element_imp_error!(
                        self,
                        gst::CoreError::Negotiation,
                        ["unsupported format {:?}", info.format()]
                    );
                    return false;
                };
                // Frames already mapped keep their own layout: the new caps apply to
                // the frames after this event, and the event follows the frames before it.
                lock(&self.state).input = Some(Input {
                    colorimetry: frame::colorimetry(&info),
                    info,
                    format,
                });
                self.forward_serialized(pad, event)
            }
            gst::EventView::Segment(s) => {
                lock(&self.state).segment = s.segment().downcast_ref::<gst::ClockTime>().cloned();
                self.forward_serialized(pad, event)
            }
            _ if event.is_serialized() => self.forward_serialized(pad, event),
            _ => gst::Pad::event_default(pad, Some(&*self.obj()), event),
        }
    }

    /// Sync mode: the event follows the frames before it through the task's queue,
    /// without waiting for them here.
    fn forward_serialized(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        let (stream, out) = {
            let state = lock(&self.state);
            (state.stream.clone(), state.out.clone())
        };
        let (Some(stream), Some(out)) = (stream, out) else {
            return gst::Pad::event_default(pad, Some(&*self.obj()), event);
        };
        let bound = lock(&self.settings).in_flight_bound();
        let generation = match out.reserve_event(bound) {
            Ok(generation) => generation,
            Err(flow) => {
                gst::debug!(CAT, imp = self, "{} refused: {flow:?}", event.type_());
                return false;
            }
        };
        let element = self.obj().downgrade();
        let queue = out.clone();
        let forward = move || {
            if let Some(element) = element.upgrade() {
                queue.send(generation, Item::Event(event), || {
                    element.imp().resume_task()
                });
            }
        };
        if stream.after_frames(forward).is_err() {
            out.release_event(generation);
            return false;
        }
        true
    }

    // ------------------------------------------------------------------ queries

    fn sink_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        // A serialized query (DRAIN, ALLOCATION) must find every frame before it out,
        // as it would with no element in between.
        if query.is_serialized() {
            let out = lock(&self.state).out.clone();
            if let Some(out) = out
                && !out.wait_until_empty(QUERY_DRAIN_TIMEOUT)
            {
                gst::debug!(
                    CAT,
                    imp = self,
                    "{} before the frames went out",
                    query.type_()
                );
            }
        }
        gst::Pad::query_default(pad, Some(&*self.obj()), query)
    }

    fn src_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        if let gst::QueryViewMut::Latency(q) = query.view_mut() {
            if !self.sinkpad.peer_query(q.query_mut()) {
                return false;
            }
            let (live, min, max) = q.result();
            let mode = lock(&self.settings).mode;
            let ours = match mode {
                Mode::Sync => lock(&self.state).latency,
                Mode::Async => gst::ClockTime::ZERO,
            };
            q.set(live, min + ours, max.map(|m| m + ours));
            return true;
        }
        gst::Pad::query_default(pad, Some(&*self.obj()), query)
    }

    // ------------------------------------------------------------------ properties

    /// A property value not taken: logged, and posted as a warning when there is a bus.
    fn refuse(&self, name: &str, reason: &str) {
        gst::warning!(CAT, imp = self, "{name} not changed: {reason}");
        gst::element_imp_warning!(
            self,
            gst::LibraryError::Settings,
            ["property {name} not changed: {reason}"]
        );
    }

    /// Re-sends the label set after a label or scoring property changed while running.
    /// Applies a label property that was just set (`changed`) to the running stream's
    /// label set: only that property changes, whatever gRPC clients changed stays.
    fn relabel(&self, changed: &str) {
        let (engine, set) = {
            let state = lock(&self.state);
            (state.engine.clone(), state.label_set.clone())
        };
        let Some(engine) = engine else {
            return;
        };
        let live = engine.labels(&set).map(|live| live.spec().clone());
        let spec = {
            let settings = lock(&self.settings);
            match live {
                Some(live) => settings.apply_to(live, changed),
                None => settings.label_spec(),
            }
        };
        let binding = lock(&self.state).binding.clone();
        if let (Some(binding), Ok(spec)) = (binding, &spec) {
            let version = engine.labels(&set).map_or(0, |s| s.version());
            let element = self.obj().downgrade();
            self.key_writer
                .submit(binding, spec.clone(), version, move |why| {
                    if let Some(element) = element.upgrade() {
                        gst::element_warning!(
                            element,
                            gst::LibraryError::Settings,
                            ["labels not changed: {why}"]
                        );
                    }
                });
            return;
        }
        let result = spec.and_then(|spec| {
            engine
                .set_labels(&set, spec, None)
                .map_err(|e| e.to_string())
        });
        match result {
            Ok(set) => gst::info!(
                CAT,
                imp = self,
                "label set {} now at version {}",
                set.id(),
                set.version()
            ),
            Err(e) => gst::element_imp_warning!(
                self,
                gst::LibraryError::Settings,
                ["labels not changed: {e}"]
            ),
        }
    }

    /// The spec of the label set this element's stream is scored by, while it runs.
    fn live_label_spec(&self) -> Option<cliptag_engine::LabelSetSpec> {
        let (engine, set) = {
            let state = lock(&self.state);
            (state.engine.clone()?, state.label_set.clone())
        };
        engine.labels(&set).map(|live| live.spec().clone())
    }

    fn restream(&self) {
        let stream = lock(&self.state).stream.clone();
        let Some(stream) = stream else {
            return;
        };
        let settings = lock(&self.settings).clone();
        let label_set = stream.label_set_id();
        let result = stream.update(|c| {
            let fresh = settings.stream_config(&label_set);
            c.interval = fresh.interval;
            c.overload = fresh.overload;
            c.smoothing = fresh.smoothing;
            c.max_pending = fresh.max_pending;
        });
        if let Err(e) = result {
            gst::element_imp_warning!(self, gst::LibraryError::Settings, ["{e}"]);
        }
    }

    fn stats(&self) -> gst::Structure {
        let state = lock(&self.state);
        let mut b = gst::Structure::builder("cliptag-stats");
        if let Some(stream) = &state.stream {
            let s = stream.stats();
            b = b
                .field("frames-in", s.frames_in)
                .field("inferred", s.inferred)
                .field("skipped", s.skipped)
                .field("dropped", s.dropped)
                .field("failed", s.failed)
                .field("queue-depth", s.queue_depth as u64)
                .field("pending", s.pending as u64)
                .field(
                    "in-flight",
                    state.out.as_ref().map_or(0, |o| o.frames() as u64),
                )
                .field("latency-p50", s.latency_p50.as_nanos() as u64)
                .field("latency-p99", s.latency_p99.as_nanos() as u64)
                .field(
                    "batch-sizes",
                    gst::Array::new(s.batch_sizes.iter().copied()),
                );
            if let Some(e) = s.last_error {
                b = b.field("last-error", e);
            }
        }
        if let Some(publisher) = &state.publisher {
            for link in publisher.links() {
                b = b
                    .field(format!("{}-published", link.broker), link.published)
                    .field(format!("{}-dropped", link.broker), link.dropped)
                    .field(format!("{}-connected", link.broker), link.connected);
            }
        }
        if let Some(binding) = &state.binding {
            let binding = binding.to_proto();
            b = b
                .field("labels-revision", binding.revision)
                .field("labels-refused", binding.refused);
        }
        if let Some(engine) = &state.engine {
            let version = engine.labels(&state.label_set).map_or(0, |s| s.version());
            b = b
                .field("label-set-version", version)
                .field("engine-batches", engine.stats().batches)
                .field("model", state.model_name.clone())
                .field(
                    "dtype",
                    format!("{:?}", engine.model().network.dtype()).to_lowercase(),
                );
        }
        b.build()
    }
}

#[glib::object_subclass]
impl ObjectSubclass for Cliptag {
    const NAME: &'static str = "GstCliptag";
    type Type = super::Cliptag;
    type ParentType = gst::Element;

    fn with_class(klass: &Self::Class) -> Self {
        let sink_templ = klass
            .pad_template("sink")
            .unwrap_or_else(|| unreachable!("registered below"));
        let sinkpad = gst::Pad::builder_from_template(&sink_templ)
            .chain_function(|_pad, parent, buffer| {
                Cliptag::catch_panic_pad_function(
                    parent,
                    || Err(gst::FlowError::Error),
                    |imp| imp.sink_chain(buffer),
                )
            })
            .event_function(|pad, parent, event| {
                Cliptag::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.sink_event(pad, event),
                )
            })
            .query_function(|pad, parent, query| {
                Cliptag::catch_panic_pad_function(
                    parent,
                    || false,
                    |imp| imp.sink_query(pad, query),
                )
            })
            .flags(gst::PadFlags::PROXY_CAPS | gst::PadFlags::PROXY_ALLOCATION)
            .build();
        let src_templ = klass
            .pad_template("src")
            .unwrap_or_else(|| unreachable!("registered below"));
        let srcpad = gst::Pad::builder_from_template(&src_templ)
            .query_function(|pad, parent, query| {
                Cliptag::catch_panic_pad_function(parent, || false, |imp| imp.src_query(pad, query))
            })
            .flags(gst::PadFlags::PROXY_CAPS | gst::PadFlags::PROXY_ALLOCATION)
            .build();
        Self {
            sinkpad,
            srcpad,
            settings: Mutex::new(Settings::default()),
            state: Mutex::new(State::default()),
            flushing: AtomicBool::new(true),
            failed: AtomicBool::new(false),
            frames: AtomicU64::new(0),
            key_writer: Arc::default(),
        }
    }
}

impl ObjectImpl for Cliptag {
    fn properties() -> &'static [glib::ParamSpec] {
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let name = pspec.name();
        let state = self.obj().current_state();
        let until = settings::mutable_until(pspec);
        if state > until {
            self.refuse(
                name,
                &format!("it cannot change in {state:?}, only up to {until:?}"),
            );
            return;
        }
        {
            let mut s = lock(&self.settings);
            // GObject checks each value's type against the ParamSpec before this is
            // called: the `expect`s below cannot fire.
            match name {
                "model" => s.model = optional_text(value).map(Into::into),
                "device" | "dtype" => {
                    let checked = if name == "device" {
                        checked_text(value, settings::DEFAULT_DEVICE, check_device)
                    } else {
                        checked_text(value, settings::DEFAULT_DTYPE, check_dtype)
                    };
                    match checked {
                        Ok(text) if name == "device" => s.device = text,
                        Ok(text) => s.dtype = text,
                        Err(e) => {
                            drop(s);
                            self.refuse(name, &e);
                            return;
                        }
                    }
                }
                "labels" => s.labels = split_labels(&optional_text(value).unwrap_or_default()),
                "label-list" => {
                    let array = value.get::<gst::Array>().expect("type checked upstream");
                    s.labels = array
                        .iter()
                        .filter_map(|v| v.get::<String>().ok())
                        .map(|l| l.trim().to_string())
                        .filter(|l| !l.is_empty())
                        .collect();
                }
                "labels-file" => s.labels_file = optional_text(value).map(Into::into),
                "prompt-template" => {
                    s.prompt_template = optional_text(value)
                        .unwrap_or_else(|| settings::DEFAULT_PROMPT_TEMPLATE.into())
                }
                "interval" => s.interval = value.get().expect("type checked upstream"),
                "top-k" => s.top_k = value.get().expect("type checked upstream"),
                "threshold" => s.threshold = value.get().expect("type checked upstream"),
                "scoring" => s.scoring = value.get::<Scoring>().expect("type checked upstream"),
                "smoothing" => s.smoothing = value.get().expect("type checked upstream"),
                "max-batch" => s.max_batch = value.get().expect("type checked upstream"),
                "max-latency" => s.max_latency_ms = value.get().expect("type checked upstream"),
                "max-in-flight" => s.max_in_flight = value.get().expect("type checked upstream"),
                "mode" => s.mode = value.get::<Mode>().expect("type checked upstream"),
                "overload" => s.overload = value.get::<Overload>().expect("type checked upstream"),
                "stream-id" => s.stream_id = optional_text(value),
                "engine-id" => s.engine_id = optional_text(value),
                "post-messages" => s.post_messages = value.get().expect("type checked upstream"),
                "grpc-address" => s.grpc_address = optional_text(value),
                "grpc-token" => s.grpc_token = optional_text(value),
                "grpc-tls-cert" => s.grpc_tls_cert = optional_text(value).map(Into::into),
                "grpc-tls-key" => s.grpc_tls_key = optional_text(value).map(Into::into),
                "nats-url" => s.nats_url = optional_text(value),
                "nats-subject-prefix" => {
                    s.nats_subject_prefix = optional_text(value)
                        .unwrap_or_else(|| settings::DEFAULT_BROKER_PREFIX.into())
                }
                "nats-format" => {
                    s.nats_format = value.get::<NatsFormat>().expect("type checked upstream")
                }
                "nats-ca-file" => s.nats_ca_file = optional_text(value).map(Into::into),
                "labels-key" => s.labels_key = optional_text(value),
                "labels-bucket" => {
                    s.labels_bucket = optional_text(value)
                        .unwrap_or_else(|| cliptag_service::brokers::DEFAULT_BUCKET.into())
                }
                "mqtt-url" => s.mqtt_url = optional_text(value),
                "mqtt-topic-prefix" => {
                    s.mqtt_topic_prefix = optional_text(value)
                        .unwrap_or_else(|| settings::DEFAULT_BROKER_PREFIX.into())
                }
                "mqtt-username" => s.mqtt_username = optional_text(value),
                "mqtt-password" => s.mqtt_password = optional_text(value),
                "mqtt-ca-file" => s.mqtt_ca_file = optional_text(value).map(Into::into),
                "broker-outbox" => s.broker_outbox = value.get().expect("type checked upstream"),
                other => gst::warning!(CAT, imp = self, "unknown property {other}"),
            }
        }
        match name {
            "labels" | "label-list" | "labels-file" | "prompt-template" | "top-k" | "threshold"
            | "scoring" => self.relabel(name),
            "interval" | "overload" | "smoothing" => self.restream(),
            "max-in-flight" => {
                self.restream();
                // Frames waiting for room look at the new bound.
                if let Some(out) = lock(&self.state).out.clone() {
                    out.wake();
                }
            }
            _ => {}
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let name = pspec.name();
        if name == "stats" {
            return self.stats().to_value();
        }
        // While running, the label properties read the set the stream is scored by now.
        let live = match name {
            "labels" | "label-list" | "prompt-template" | "scoring" | "threshold" | "top-k" => {
                self.live_label_spec()
            }
            _ => None,
        };
        let settings = lock(&self.settings);
        let reflected;
        let s: &Settings = match &live {
            Some(spec) => {
                reflected = settings.reflecting(spec);
                &reflected
            }
            None => &settings,
        };
        let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
        match name {
            "model" => path(&s.model).to_value(),
            "device" => s.device.to_value(),
            "dtype" => s.dtype.to_value(),
            "labels" => s.labels.join(",").to_value(),
            "label-list" => gst::Array::new(s.labels.iter().cloned()).to_value(),
            "labels-file" => path(&s.labels_file).to_value(),
            "prompt-template" => s.prompt_template.to_value(),
            "interval" => s.interval.to_value(),
            "top-k" => s.top_k.to_value(),
            "threshold" => s.threshold.to_value(),
            "scoring" => s.scoring.to_value(),
            "smoothing" => s.smoothing.to_value(),
            "max-batch" => s.max_batch.to_value(),
            "max-latency" => s.max_latency_ms.to_value(),
            "max-in-flight" => s.max_in_flight.to_value(),
            "mode" => s.mode.to_value(),
            "overload" => s.overload.to_value(),
            "stream-id" => s.stream_id.to_value(),
            "engine-id" => s.engine_id.to_value(),
            "post-messages" => s.post_messages.to_value(),
            "grpc-address" => s.grpc_address.to_value(),
            "grpc-token" => s.grpc_token.to_value(),
            "grpc-tls-cert" => path(&s.grpc_tls_cert).to_value(),
            "grpc-tls-key" => path(&s.grpc_tls_key).to_value(),
            // Read back without their passwords (pipeline dumps show properties).
            "nats-url" => s.nats_url.as_deref().map(redacted_url).to_value(),
            "nats-subject-prefix" => s.nats_subject_prefix.to_value(),
            "nats-format" => s.nats_format.to_value(),
            "nats-ca-file" => path(&s.nats_ca_file).to_value(),
            "labels-key" => s.labels_key.to_value(),
            "labels-bucket" => s.labels_bucket.to_value(),
            "mqtt-url" => s.mqtt_url.as_deref().map(redacted_url).to_value(),
            "mqtt-topic-prefix" => s.mqtt_topic_prefix.to_value(),
            "mqtt-username" => s.mqtt_username.to_value(),
            "mqtt-ca-file" => path(&s.mqtt_ca_file).to_value(),
            "broker-outbox" => s.broker_outbox.to_value(),
            other => {
                gst::warning!(CAT, imp = self, "unknown property {other}");
                glib::Value::from_type(pspec.value_type())
            }
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        // Adding pads to a fresh element only fails on duplicate names.
        obj.add_pad(&self.sinkpad)
            .unwrap_or_else(|e| unreachable!("{e}"));
        obj.add_pad(&self.srcpad)
            .unwrap_or_else(|e| unreachable!("{e}"));
    }
}

impl GstObjectImpl for Cliptag {}

impl ElementImpl for Cliptag {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "CLIP open-vocabulary tagger",
                "Filter/Analyzer/Video",
                "Scores raw video frames against text labels with a CLIP model and attaches the \
                 top labels to every frame as GstCliptagMeta (and, optionally, bus messages)",
                "cliptag developers",
            )
        });
        Some(&*META)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let caps = gst_video::VideoCapsBuilder::new()
                .format_list(frame::FORMATS.iter().map(|(f, _)| *f))
                .build();
            let make = |name, direction| {
                gst::PadTemplate::new(name, direction, gst::PadPresence::Always, &caps)
                    .unwrap_or_else(|e| unreachable!("static pad template: {e}"))
            };
            vec![
                make("sink", gst::PadDirection::Sink),
                make("src", gst::PadDirection::Src),
            ]
        });
        TEMPLATES.as_ref()
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        match transition {
            gst::StateChange::NullToReady => {
                if let Err(msg) = self.start() {
                    self.post_error_message(msg);
                    return Err(gst::StateChangeError);
                }
            }
            gst::StateChange::ReadyToPaused => {
                if let Err(msg) = self.attach() {
                    self.post_error_message(msg);
                    return Err(gst::StateChangeError);
                }
            }
            gst::StateChange::PausedToReady => self.detach(),
            _ => {}
        }
        let success = self.parent_change_state(transition)?;
        if transition == gst::StateChange::ReadyToNull {
            self.stop();
        }
        Ok(success)
    }
}
