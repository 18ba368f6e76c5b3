//! The element's implementation.
//!
//! Sync mode: the sink pad maps each buffer (no copy) and submits it to the engine; the
//! engine hands frames back in order with their results on its worker thread, where the
//! meta is attached and the buffer queued for the source pad's task, which pushes
//! downstream. Serialized events wait for the frames before them (`Stream::drain`) and
//! travel through the same queue, so order is kept. The streaming thread never runs the
//! model; it only waits when the stream's pending window is full.
//!
//! Async mode: the sink pad attaches the newest result available and pushes the buffer
//! at once; a reference to it goes to the engine only when there is room.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use cliptag_engine::{Completion, Engine, FrameResult, FrameTiming, Stream};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::settings::{Mode, PROPERTIES, Settings, split_labels};
use crate::frame::{self, MappedFrame};
use crate::meta;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "cliptag",
        gst::DebugColorFlags::empty(),
        Some("open-vocabulary CLIP labels on video frames"),
    )
});

/// What the source pad's task pushes, in order.
enum Item {
    Buffer(gst::Buffer),
    Event(gst::Event),
}

/// Negotiated input.
#[derive(Clone)]
struct Input {
    info: gst_video::VideoInfo,
    format: cliptag_engine::cliptag_model::PixelFormat,
    colorimetry: cliptag_engine::cliptag_model::preprocess::Colorimetry,
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
    out: Option<(Sender<Item>, Receiver<Item>)>,
    /// Keeps the engine visible to the process's gRPC servers.
    registration: Option<cliptag_service::Registration>,
    /// The server `grpc-address` names.
    server: Option<Arc<cliptag_service::Server>>,
}

pub struct Cliptag {
    sinkpad: gst::Pad,
    srcpad: gst::Pad,
    settings: Mutex<Settings>,
    state: Mutex<State>,
    /// The last flow return of the source pad's pushes, returned upstream.
    flow: Mutex<Result<gst::FlowSuccess, gst::FlowError>>,
    flushing: AtomicBool,
    /// Frames seen since the stream started (async mode numbers frames itself).
    frames: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long EOS and serialized events wait for the frames before them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

impl Cliptag {
    fn stream_id(&self) -> String {
        let id = lock(&self.settings).stream_id.clone();
        if id.is_empty() {
            self.obj().name().to_string()
        } else {
            id
        }
    }

    // ------------------------------------------------------------------ lifecycle

    /// NULL -> READY: load (or join) the engine and set the labels.
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = lock(&self.settings).clone();
        let config = settings
            .engine_config()
            .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ["{e}"]))?;
        let engine = if settings.engine_id.is_empty() {
            Engine::new(config)
        } else {
            Engine::shared(&settings.engine_id, config)
        }
        .map_err(|e| {
            gst::error_msg!(gst::ResourceError::OpenRead, ["cannot load the model: {e}"])
        })?;
        let label_set = self.stream_id();
        let spec = settings
            .label_spec()
            .map_err(|e| gst::error_msg!(gst::ResourceError::OpenRead, ["{e}"]))?;
        engine
            .set_labels(&label_set, spec, None)
            .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ["{e}"]))?;
        let inference = engine
            .warm_up(settings.max_batch as usize)
            .map_err(|e| gst::error_msg!(gst::LibraryError::Failed, ["{e}"]))?;
        let latency = gst::ClockTime::from_nseconds(
            (inference + Duration::from_millis(u64::from(settings.max_latency_ms))).as_nanos()
                as u64,
        );
        gst::info!(
            CAT,
            imp = self,
            "model {} ready; adds {latency} in sync mode",
            engine.model().source
        );
        let server = settings
            .server_config()
            .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ["{e}"]))?
            .map(|config| {
                let server = cliptag_service::Server::shared(config).map_err(|e| {
                    gst::error_msg!(
                        gst::ResourceError::OpenReadWrite,
                        ["cannot serve gRPC on {}: {e}", settings.grpc_address]
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
        state.engine = Some(engine);
        state.label_set = label_set;
        state.latency = latency;
        Ok(())
    }

    /// READY -> PAUSED: attach the stream and start the source pad's task.
    fn attach(&self) -> Result<(), gst::ErrorMessage> {
        let settings = lock(&self.settings).clone();
        let mut state = lock(&self.state);
        let engine = state
            .engine
            .clone()
            .ok_or_else(|| gst::error_msg!(gst::CoreError::StateChange, ["no engine"]))?;
        let (tx, rx) = crossbeam_channel::unbounded::<Item>();
        let config = settings.stream_config(&state.label_set);
        let element = self.obj().downgrade();
        let sender = tx.clone();
        let model = state.model_name.clone();
        let stream = engine
            .attach(&self.stream_id(), config, move |done: Completion| {
                if let Some(element) = element.upgrade() {
                    element.imp().deliver(done, &sender, &model);
                }
            })
            .map_err(|e| gst::error_msg!(gst::CoreError::StateChange, ["{e}"]))?;
        state.stream = Some(Arc::new(stream));
        state.out = Some((tx, rx.clone()));
        drop(state);
        self.flushing.store(false, Ordering::SeqCst);
        self.frames.store(0, Ordering::SeqCst);
        *lock(&self.flow) = Ok(gst::FlowSuccess::Ok);
        if settings.mode == Mode::Sync {
            self.start_task(rx)
                .map_err(|e| gst::error_msg!(gst::CoreError::StateChange, ["{e}"]))?;
        }
        Ok(())
    }

    /// PAUSED -> READY: stop the task and detach (pending frames are dropped).
    fn detach(&self) {
        self.flushing.store(true, Ordering::SeqCst);
        let stream = lock(&self.state).stream.take();
        if let Some(stream) = &stream {
            stream.flush();
        }
        let _ = self.srcpad.stop_task();
        drop(stream);
        let mut state = lock(&self.state);
        state.out = None;
        state.input = None;
        state.segment = None;
    }

    fn stop(&self) {
        let (server, registration, engine) = {
            let mut state = lock(&self.state);
            (
                state.server.take(),
                state.registration.take(),
                state.engine.take(),
            )
        };
        // Detection streams end first, then the stream leaves the service, then the
        // engine goes (stopping a server waits for its clients: not under the lock).
        drop(server);
        drop(registration);
        drop(engine);
    }

    fn start_task(&self, rx: Receiver<Item>) -> Result<(), glib::BoolError> {
        let element = self.obj().downgrade();
        self.srcpad.start_task(move || {
            let Some(element) = element.upgrade() else {
                return;
            };
            element.imp().push_next(&rx);
        })
    }

    // ------------------------------------------------------------------ results

    /// On the engine's worker: attach the result and queue the buffer for the task.
    fn deliver(&self, done: Completion, out: &Sender<Item>, model: &str) {
        let result = done.result.clone();
        let Some(frame) = done.into_frame::<MappedFrame>() else {
            return;
        };
        if self.flushing.load(Ordering::SeqCst) {
            return;
        }
        let mut buffer = frame.into_buffer();
        meta::attach(buffer.make_mut(), &result, model);
        self.post(&result, model);
        let _ = out.send(Item::Buffer(buffer));
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
    fn push_next(&self, rx: &Receiver<Item>) {
        let item = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) => return,
            Err(RecvTimeoutError::Disconnected) => {
                let _ = self.srcpad.pause_task();
                return;
            }
        };
        match item {
            Item::Buffer(buffer) => {
                let res = self.srcpad.push(buffer);
                *lock(&self.flow) = res;
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
            Item::Event(event) => {
                let eos = matches!(event.view(), gst::EventView::Eos(_));
                self.srcpad.push_event(event);
                if eos {
                    let _ = self.srcpad.pause_task();
                }
            }
        }
    }

    // ------------------------------------------------------------------ sink pad

    fn sink_chain(&self, buffer: gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        if self.flushing.load(Ordering::SeqCst) {
            return Err(gst::FlowError::Flushing);
        }
        let flow = *lock(&self.flow);
        flow?;
        let (stream, input, segment, model) = {
            let state = lock(&self.state);
            (
                state.stream.clone(),
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
        let mode = lock(&self.settings).mode;
        match mode {
            Mode::Sync => {
                let frame = self.map(buffer, &input)?;
                stream.submit(frame, timing).map_err(|e| {
                    gst::debug!(CAT, imp = self, "submit: {e}");
                    gst::FlowError::Flushing
                })?;
                *lock(&self.flow)
            }
            Mode::Async => {
                let frame_no = self.frames.fetch_add(1, Ordering::SeqCst);
                let mut buffer = buffer;
                if let Some(latest) = stream.latest() {
                    let mut result = (*latest).clone();
                    result.stale = latest.computed_for != Some(frame_no);
                    result.frame = frame_no;
                    result.timing = timing;
                    result.events.clear();
                    meta::attach(buffer.make_mut(), &result, &model);
                    self.post(&result, &model);
                }
                // The engine reads a second reference; the meta is already on the buffer.
                if let Ok(frame) = self.map(buffer.clone(), &input) {
                    let _ = stream.submit(frame, timing);
                }
                self.srcpad.push(buffer)
            }
        }
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
                let stream = lock(&self.state).stream.clone();
                if let Some(stream) = stream {
                    stream.flush();
                }
                let ok = self.srcpad.push_event(event);
                let _ = self.srcpad.pause_task();
                // Buffers queued before the flush are dropped with the task paused.
                if let Some((_, rx)) = &lock(&self.state).out {
                    while rx.try_recv().is_ok() {}
                }
                ok
            }
            gst::EventView::FlushStop(_) => {
                // A frame that was waiting for room when the flush started may have gone
                // in since: it belongs before the flush.
                let stream = lock(&self.state).stream.clone();
                if let Some(stream) = stream {
                    stream.flush();
                }
                if let Some((_, rx)) = &lock(&self.state).out {
                    while rx.try_recv().is_ok() {}
                }
                let ok = self.srcpad.push_event(event);
                // One lock at a time: state and settings are never held together.
                let mode = lock(&self.settings).mode;
                let rx = lock(&self.state).out.as_ref().map(|(_, rx)| rx.clone());
                self.flushing.store(false, Ordering::SeqCst);
                *lock(&self.flow) = Ok(gst::FlowSuccess::Ok);
                if let (Some(rx), Mode::Sync) = (rx, mode)
                    && let Err(e) = self.start_task(rx)
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
                // Frames of the old caps go out first.
                self.wait_for_frames();
                lock(&self.state).input = Some(Input {
                    colorimetry: frame::colorimetry(&info),
                    info,
                    format,
                });
                self.forward_serialized(pad, event)
            }
            gst::EventView::Segment(s) => {
                self.wait_for_frames();
                lock(&self.state).segment = s.segment().downcast_ref::<gst::ClockTime>().cloned();
                self.forward_serialized(pad, event)
            }
            gst::EventView::Eos(_) => {
                self.wait_for_frames();
                self.forward_serialized(pad, event)
            }
            _ if event.is_serialized() => {
                self.wait_for_frames();
                self.forward_serialized(pad, event)
            }
            _ => gst::Pad::event_default(pad, Some(&*self.obj()), event),
        }
    }

    /// Sync mode: every frame submitted so far has gone to the source pad's queue.
    fn wait_for_frames(&self) {
        if lock(&self.settings).mode != Mode::Sync {
            return;
        }
        let stream = lock(&self.state).stream.clone();
        if let Some(stream) = stream
            && !stream.drain(DRAIN_TIMEOUT)
        {
            gst::warning!(
                CAT,
                imp = self,
                "frames still in flight after {DRAIN_TIMEOUT:?}"
            );
        }
    }

    /// Sync mode: the event follows the frames before it through the task's queue.
    fn forward_serialized(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        let mode = lock(&self.settings).mode;
        let sender = match mode {
            Mode::Sync => lock(&self.state).out.as_ref().map(|(tx, _)| tx.clone()),
            Mode::Async => None,
        };
        match sender {
            Some(tx) => tx.send(Item::Event(event)).is_ok(),
            None => gst::Pad::event_default(pad, Some(&*self.obj()), event),
        }
    }

    // ------------------------------------------------------------------ queries

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
        if let Some(engine) = &state.engine {
            let version = engine.labels(&state.label_set).map_or(0, |s| s.version());
            b = b
                .field("label-set-version", version)
                .field("engine-batches", engine.stats().batches)
                .field("model", state.model_name.clone());
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
            flow: Mutex::new(Ok(gst::FlowSuccess::Ok)),
            flushing: AtomicBool::new(true),
            frames: AtomicU64::new(0),
        }
    }
}

impl ObjectImpl for Cliptag {
    fn properties() -> &'static [glib::ParamSpec] {
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let name = pspec.name();
        {
            let mut s = lock(&self.settings);
            match name {
                "model" => {
                    s.model = value
                        .get::<Option<String>>()
                        .ok()
                        .flatten()
                        .unwrap_or_default()
                }
                "device" => {
                    s.device = value
                        .get::<Option<String>>()
                        .ok()
                        .flatten()
                        .unwrap_or_else(|| "cpu".into())
                }
                "dtype" => {
                    s.dtype = value
                        .get::<Option<String>>()
                        .ok()
                        .flatten()
                        .unwrap_or_else(|| "auto".into())
                }
                "labels" => {
                    s.labels = split_labels(
                        &value
                            .get::<Option<String>>()
                            .ok()
                            .flatten()
                            .unwrap_or_default(),
                    )
                }
                "label-list" => {
                    if let Ok(array) = value.get::<gst::Array>() {
                        s.labels = array
                            .iter()
                            .filter_map(|v| v.get::<String>().ok())
                            .map(|l| l.trim().to_string())
                            .filter(|l| !l.is_empty())
                            .collect();
                    }
                }
                "labels-file" => {
                    s.labels_file = value
                        .get::<Option<String>>()
                        .ok()
                        .flatten()
                        .unwrap_or_default()
                }
                "prompt-template" => {
                    s.prompt_template = value
                        .get::<Option<String>>()
                        .ok()
                        .flatten()
                        .unwrap_or_else(|| "{}".into())
                }
                "interval" => s.interval = value.get().unwrap_or(1),
                "top-k" => s.top_k = value.get().unwrap_or(5),
                "threshold" => s.threshold = value.get().unwrap_or(0.5),
                "scoring" => s.scoring = value.get().unwrap_or(super::settings::Scoring::Softmax),
                "smoothing" => s.smoothing = value.get().unwrap_or(0.0),
                "max-batch" => s.max_batch = value.get().unwrap_or(8),
                "max-latency" => s.max_latency_ms = value.get().unwrap_or(20),
                "mode" => s.mode = value.get().unwrap_or(Mode::Sync),
                "overload" => s.overload = value.get().unwrap_or(super::settings::Overload::Block),
                "stream-id" => {
                    s.stream_id = value
                        .get::<Option<String>>()
                        .ok()
                        .flatten()
                        .unwrap_or_default()
                }
                "engine-id" => {
                    s.engine_id = value
                        .get::<Option<String>>()
                        .ok()
                        .flatten()
                        .unwrap_or_default()
                }
                "post-messages" => s.post_messages = value.get().unwrap_or(false),
                "grpc-address" | "grpc-token" | "grpc-tls-cert" | "grpc-tls-key" => {
                    let text = value
                        .get::<Option<String>>()
                        .ok()
                        .flatten()
                        .unwrap_or_default();
                    match name {
                        "grpc-address" => s.grpc_address = text,
                        "grpc-token" => s.grpc_token = text,
                        "grpc-tls-cert" => s.grpc_tls_cert = text,
                        _ => s.grpc_tls_key = text,
                    }
                }
                other => gst::warning!(CAT, imp = self, "unknown property {other}"),
            }
        }
        match name {
            "labels" | "label-list" | "labels-file" | "prompt-template" | "top-k" | "threshold"
            | "scoring" => self.relabel(name),
            "interval" | "overload" | "smoothing" => self.restream(),
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
        match name {
            "model" => s.model.to_value(),
            "device" => s.device.to_value(),
            "dtype" => s.dtype.to_value(),
            "labels" => s.labels.join(",").to_value(),
            "label-list" => gst::Array::new(s.labels.iter().cloned()).to_value(),
            "labels-file" => s.labels_file.to_value(),
            "prompt-template" => s.prompt_template.to_value(),
            "interval" => s.interval.to_value(),
            "top-k" => s.top_k.to_value(),
            "threshold" => s.threshold.to_value(),
            "scoring" => s.scoring.to_value(),
            "smoothing" => s.smoothing.to_value(),
            "max-batch" => s.max_batch.to_value(),
            "max-latency" => s.max_latency_ms.to_value(),
            "mode" => s.mode.to_value(),
            "overload" => s.overload.to_value(),
            "stream-id" => s.stream_id.to_value(),
            "engine-id" => s.engine_id.to_value(),
            "post-messages" => s.post_messages.to_value(),
            "grpc-address" => s.grpc_address.to_value(),
            "grpc-token" => s.grpc_token.to_value(),
            "grpc-tls-cert" => s.grpc_tls_cert.to_value(),
            "grpc-tls-key" => s.grpc_tls_key.to_value(),
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
