//! The overlay's implementation.
//!
//! ```text
//! gst-launch-1.0 filesrc location=clip.webm ! decodebin ! videoconvert \
//!     ! cliptag labels="a dog,a cat" ! cliptagoverlay position=bottom-left \
//!     ! videoconvert ! autovideosink
//! ```
//!
//! A buffer without cliptag meta passes untouched (no copy, not even a writability
//! check). A buffer with meta is made writable (GStreamer copies it only when someone
//! else holds it) and the panel is blended in place by GStreamer's video library, which
//! handles every raw format it can unpack, chroma subsampling included. The panel is
//! rendered again only when what it shows changes; scores are drawn to two decimals, so
//! a steady scene re-uses one rendering.

use std::collections::VecDeque;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::blend::Prepared;
use super::panel::{self, Content, Rect};
use super::settings::{PROPERTIES, Settings};
use crate::meta;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "cliptagoverlay",
        gst::DebugColorFlags::empty(),
        Some("draws cliptag labels onto video frames"),
    )
});

/// Raw formats the panel is blended onto (every one has a test).
pub const FORMATS: &[gst_video::VideoFormat] = &[
    gst_video::VideoFormat::I420,
    gst_video::VideoFormat::Yv12,
    gst_video::VideoFormat::Nv12,
    gst_video::VideoFormat::Nv21,
    gst_video::VideoFormat::Y42b,
    gst_video::VideoFormat::Y444,
    gst_video::VideoFormat::Yuy2,
    gst_video::VideoFormat::Uyvy,
    gst_video::VideoFormat::Ayuv,
    gst_video::VideoFormat::Rgbx,
    gst_video::VideoFormat::Bgrx,
    gst_video::VideoFormat::Xrgb,
    gst_video::VideoFormat::Xbgr,
    gst_video::VideoFormat::Rgba,
    gst_video::VideoFormat::Bgra,
    gst_video::VideoFormat::Argb,
    gst_video::VideoFormat::Abgr,
    gst_video::VideoFormat::Rgb,
    gst_video::VideoFormat::Bgr,
];

/// Most events listed at once (the newest).
const MAX_EVENTS: usize = 4;

/// Frames an event stays listed when frames carry no timestamps (about 2 s at 30/s).
const HOLD_FRAMES_WITHOUT_PTS: u64 = 60;

/// A start or end event and when it happened.
struct Recent {
    text: String,
    pts: Option<gst::ClockTime>,
    frame: u64,
}

/// The last panel drawn, kept while what it shows stays the same.
struct Cached {
    content: Content,
    rect: Rect,
    settings: Settings,
    panel: Panel,
}

/// A drawn panel in the form the frame's format blends fastest.
#[derive(Clone)]
enum Panel {
    /// Converted to the frame's samples once ([`Prepared`]).
    Prepared(Arc<Prepared>),
    /// GStreamer's blending, for the other formats.
    Composition(gst_video::VideoOverlayComposition),
}

impl Panel {
    fn blend(
        &self,
        frame: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
    ) -> Result<(), glib::BoolError> {
        match self {
            Self::Prepared(p) => p.blend(frame),
            Self::Composition(c) => c.blend(frame),
        }
    }
}

#[derive(Default)]
struct State {
    info: Option<gst_video::VideoInfo>,
    events: VecDeque<Recent>,
    cached: Option<Cached>,
    /// Whether a failure to draw was reported already (it is reported once).
    warned: bool,
}

/// The element.
pub struct CliptagOverlay {
    sinkpad: gst::Pad,
    srcpad: gst::Pad,
    settings: Mutex<Settings>,
    state: Mutex<State>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CliptagOverlay {
    fn sink_event(&self, pad: &gst::Pad, event: gst::Event) -> bool {
        match event.view() {
            gst::EventView::Caps(c) => match gst_video::VideoInfo::from_caps(c.caps()) {
                Ok(info) => {
                    let mut state = lock(&self.state);
                    state.info = Some(info);
                    state.cached = None;
                }
                Err(_) => {
                    gst::element_imp_error!(
                        self,
                        gst::CoreError::Negotiation,
                        ["caps {} are not raw video", c.caps()]
                    );
                    return false;
                }
            },
            gst::EventView::FlushStop(_) | gst::EventView::StreamStart(_) => {
                lock(&self.state).events.clear();
            }
            _ => {}
        }
        gst::Pad::event_default(pad, Some(&*self.obj()), event)
    }

    /// Allocation queries go downstream (pools and metas the sink offers stay usable
    /// upstream), except that crop metas are refused: the panel is placed on the whole
    /// buffer, so upstream must crop before it.
    fn sink_query(&self, pad: &gst::Pad, query: &mut gst::QueryRef) -> bool {
        if let gst::QueryViewMut::Allocation(_) = query.view_mut() {
            let answered = self.srcpad.peer_query(query);
            if let gst::QueryViewMut::Allocation(q) = query.view_mut() {
                while let Some(i) = q.find_allocation_meta::<gst_video::VideoCropMeta>() {
                    q.remove_nth_allocation_meta(i);
                }
            }
            return answered;
        }
        gst::Pad::query_default(pad, Some(&*self.obj()), query)
    }

    fn chain(
        &self,
        _pad: &gst::Pad,
        mut buffer: gst::Buffer,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let Some(tags) = meta::read(&buffer) else {
            return self.srcpad.push(buffer);
        };
        let settings = lock(&self.settings).clone();
        let pts = buffer.pts();
        // Decided under the state lock, acted on after it: nothing is posted or pushed
        // while holding it.
        let (panel, info) = match self.decide(&tags, pts, &settings) {
            Decision::Draw(panel, info) => (panel, info),
            Decision::Pass => return self.srcpad.push(buffer),
            Decision::PassWarning(e) => {
                // The video matters more than its labels: pass the frame on, say why once.
                gst::element_imp_warning!(
                    self,
                    gst::StreamError::Failed,
                    ["cannot draw the label panel: {e}"]
                );
                return self.srcpad.push(buffer);
            }
            Decision::NotNegotiated => {
                gst::element_imp_error!(
                    self,
                    gst::CoreError::Negotiation,
                    ["a buffer arrived before its caps"]
                );
                return Err(gst::FlowError::NotNegotiated);
            }
        };
        {
            let buffer = buffer.make_mut();
            let mut frame = gst_video::VideoFrameRef::from_buffer_ref_writable(buffer, &info)
                .map_err(|_| {
                    gst::element_imp_error!(
                        self,
                        gst::StreamError::Format,
                        [
                            "cannot map a {}x{} {} frame for writing",
                            info.width(),
                            info.height(),
                            info.format()
                        ]
                    );
                    gst::FlowError::Error
                })?;
            if let Err(e) = panel.blend(&mut frame) {
                gst::warning!(CAT, imp = self, "blending failed: {e}");
            }
        }
        self.srcpad.push(buffer)
    }
}

/// What to do with a frame that carries labels.
enum Decision {
    /// Blend this panel onto the frame.
    Draw(Panel, gst_video::VideoInfo),
    /// Pass it on as it is (nothing to show, or no room for it).
    Pass,
    /// Pass it on, and warn once that the panel could not be drawn.
    PassWarning(panel::RenderError),
    /// No caps yet.
    NotNegotiated,
}

impl CliptagOverlay {
    fn decide(
        &self,
        tags: &meta::Tags,
        pts: Option<gst::ClockTime>,
        settings: &Settings,
    ) -> Decision {
        let mut state = lock(&self.state);
        let Some(info) = state.info.clone() else {
            return Decision::NotNegotiated;
        };
        let events = state.recent_events(tags, pts, settings);
        let content = Content::new(tags, &events, settings);
        let Some(rect) = panel::panel_rect(
            info.width(),
            info.height(),
            content.lines(),
            settings.text_size,
            settings.position,
        ) else {
            return Decision::Pass;
        };
        match state.panel(content, rect, &info, settings) {
            Ok(panel) => Decision::Draw(panel, info),
            Err(e) if !std::mem::replace(&mut state.warned, true) => Decision::PassWarning(e),
            Err(_) => Decision::Pass,
        }
    }
}

impl State {
    /// Records the events `tags` carries and returns those still to be listed.
    fn recent_events(
        &mut self,
        tags: &meta::Tags,
        pts: Option<gst::ClockTime>,
        settings: &Settings,
    ) -> Vec<String> {
        for e in &tags.events {
            let text = match e.split_once(':') {
                Some(("start", label)) => format!("+ {label}"),
                Some(("end", label)) => format!("\u{2212} {label}"),
                _ => e.clone(),
            };
            self.events.push_back(Recent {
                text,
                pts,
                frame: tags.frame,
            });
        }
        let hold = gst::ClockTime::from_mseconds(u64::from(settings.event_hold_ms));
        let hold_frames = HOLD_FRAMES_WITHOUT_PTS * u64::from(settings.event_hold_ms) / 2000;
        self.events.retain(|r| match (r.pts, pts) {
            (Some(then), Some(now)) => now >= then && now - then < hold,
            _ => tags.frame >= r.frame && tags.frame - r.frame < hold_frames,
        });
        while self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.iter().map(|r| r.text.clone()).collect()
    }

    /// The panel for `content`, drawn again only when it changed (new caps clear it).
    fn panel(
        &mut self,
        content: Content,
        rect: Rect,
        info: &gst_video::VideoInfo,
        settings: &Settings,
    ) -> Result<Panel, panel::RenderError> {
        if let Some(c) = &self.cached
            && c.content == content
            && c.rect == rect
            && &c.settings == settings
        {
            return Ok(c.panel.clone());
        }
        let rendered = panel::render(&content, rect, info.height(), settings)?;
        let panel = match Prepared::new(&rendered.argb, rendered.stride, rect, info) {
            Some(prepared) => Panel::Prepared(Arc::new(prepared)),
            None => Panel::Composition(rendered.composition),
        };
        self.cached = Some(Cached {
            content,
            rect,
            settings: settings.clone(),
            panel: panel.clone(),
        });
        Ok(panel)
    }
}

#[glib::object_subclass]
impl ObjectSubclass for CliptagOverlay {
    const NAME: &'static str = "GstCliptagOverlay";
    type Type = super::CliptagOverlay;
    type ParentType = gst::Element;

    fn with_class(klass: &Self::Class) -> Self {
        let sinkpad =
            gst::Pad::builder_from_template(&klass.pad_template("sink").expect("declared below"))
                .chain_function(|pad, parent, buffer| {
                    CliptagOverlay::catch_panic_pad_function(
                        parent,
                        || Err(gst::FlowError::Error),
                        |imp| imp.chain(pad, buffer),
                    )
                })
                .query_function(|pad, parent, query| {
                    CliptagOverlay::catch_panic_pad_function(
                        parent,
                        || false,
                        |imp| imp.sink_query(pad, query),
                    )
                })
                .event_function(|pad, parent, event| {
                    CliptagOverlay::catch_panic_pad_function(
                        parent,
                        || false,
                        |imp| imp.sink_event(pad, event),
                    )
                })
                .flags(gst::PadFlags::PROXY_CAPS)
                .build();
        let srcpad =
            gst::Pad::builder_from_template(&klass.pad_template("src").expect("declared below"))
                .flags(gst::PadFlags::PROXY_CAPS)
                .build();
        Self {
            sinkpad,
            srcpad,
            settings: Mutex::new(Settings::default()),
            state: Mutex::new(State::default()),
        }
    }
}

impl ObjectImpl for CliptagOverlay {
    fn properties() -> &'static [glib::ParamSpec] {
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        lock(&self.settings).set(pspec.name(), value);
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        lock(&self.settings)
            .get(pspec.name())
            .unwrap_or_else(|| pspec.default_value().clone())
    }

    fn constructed(&self) {
        self.parent_constructed();
        let obj = self.obj();
        // The pads exist since `with_class`; adding them cannot fail on a new element.
        let _ = obj.add_pad(&self.sinkpad);
        let _ = obj.add_pad(&self.srcpad);
    }
}

impl GstObjectImpl for CliptagOverlay {}

impl ElementImpl for CliptagOverlay {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "cliptag overlay",
                "Filter/Effect/Video",
                "Draws the labels the cliptag element attached to each frame: the top labels \
                 with score bars, the label-set version, stale results and start/end events. \
                 Frames without cliptag meta pass untouched.",
                "cliptag developers",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let caps = gst_video::VideoCapsBuilder::new()
                .format_list(FORMATS.iter().copied())
                .build();
            [gst::PadDirection::Sink, gst::PadDirection::Src]
                .into_iter()
                .filter_map(|direction| {
                    let name = if direction == gst::PadDirection::Sink {
                        "sink"
                    } else {
                        "src"
                    };
                    gst::PadTemplate::new(name, direction, gst::PadPresence::Always, &caps).ok()
                })
                .collect()
        });
        TEMPLATES.as_ref()
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        let result = self.parent_change_state(transition)?;
        if transition == gst::StateChange::PausedToReady {
            *lock(&self.state) = State::default();
        }
        Ok(result)
    }
}
