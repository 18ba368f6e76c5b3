//! The overlay's properties: values, defaults and the blurbs `gst-inspect-1.0` shows.
//! Every property can change in any state; the next frame draws with the new value.

use std::sync::LazyLock;

use gst::glib;
use gst::prelude::*;

/// The frame corner the label panel sits in.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstCliptagOverlayPosition")]
pub enum Position {
    /// Top left.
    #[enum_value(name = "Top left corner", nick = "top-left")]
    TopLeft = 0,
    /// Top right.
    #[enum_value(name = "Top right corner", nick = "top-right")]
    TopRight = 1,
    /// Bottom left.
    #[enum_value(name = "Bottom left corner", nick = "bottom-left")]
    BottomLeft = 2,
    /// Bottom right.
    #[enum_value(name = "Bottom right corner", nick = "bottom-right")]
    BottomRight = 3,
}

/// Default of `max-labels`.
pub const DEFAULT_MAX_LABELS: u32 = 3;
/// Default of `min-score`.
pub const DEFAULT_MIN_SCORE: f64 = 0.0;
/// Default of `position`.
pub const DEFAULT_POSITION: Position = Position::TopLeft;
/// Default of `text-size` (fraction of the frame height).
pub const DEFAULT_TEXT_SIZE: f64 = 0.045;
/// Default of `text-color` (ARGB): opaque white.
pub const DEFAULT_TEXT_COLOR: u32 = 0xffff_ffff;
/// Default of `bar-color` (ARGB): a light blue, mostly opaque.
pub const DEFAULT_BAR_COLOR: u32 = 0xd0_2f_8f_e0;
/// Default of `background-color` (ARGB): black at 60 %.
pub const DEFAULT_BACKGROUND_COLOR: u32 = 0x99_00_00_00;
/// Default of `show-version`.
pub const DEFAULT_SHOW_VERSION: bool = true;
/// Default of `show-stale`.
pub const DEFAULT_SHOW_STALE: bool = true;
/// Default of `show-events`.
pub const DEFAULT_SHOW_EVENTS: bool = true;
/// Default of `event-hold` (milliseconds).
pub const DEFAULT_EVENT_HOLD_MS: u32 = 2000;

/// Most labels the panel lists.
pub const MAX_LABELS: u32 = 20;

/// Every property's value.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub max_labels: u32,
    pub min_score: f64,
    pub position: Position,
    pub text_size: f64,
    pub text_color: u32,
    pub bar_color: u32,
    pub background_color: u32,
    pub show_version: bool,
    pub show_stale: bool,
    pub show_events: bool,
    pub event_hold_ms: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_labels: DEFAULT_MAX_LABELS,
            min_score: DEFAULT_MIN_SCORE,
            position: DEFAULT_POSITION,
            text_size: DEFAULT_TEXT_SIZE,
            text_color: DEFAULT_TEXT_COLOR,
            bar_color: DEFAULT_BAR_COLOR,
            background_color: DEFAULT_BACKGROUND_COLOR,
            show_version: DEFAULT_SHOW_VERSION,
            show_stale: DEFAULT_SHOW_STALE,
            show_events: DEFAULT_SHOW_EVENTS,
            event_hold_ms: DEFAULT_EVENT_HOLD_MS,
        }
    }
}

impl Settings {
    /// Sets one property from its (type-checked) value.
    pub fn set(&mut self, name: &str, value: &glib::Value) {
        // GObject checks each value's type and range against the ParamSpec before this
        // is called: the `unwrap_or`s keep the old value only for what cannot happen.
        match name {
            "max-labels" => self.max_labels = value.get().unwrap_or(self.max_labels),
            "min-score" => self.min_score = value.get().unwrap_or(self.min_score),
            "position" => self.position = value.get().unwrap_or(self.position),
            "text-size" => self.text_size = value.get().unwrap_or(self.text_size),
            "text-color" => self.text_color = value.get().unwrap_or(self.text_color),
            "bar-color" => self.bar_color = value.get().unwrap_or(self.bar_color),
            "background-color" => {
                self.background_color = value.get().unwrap_or(self.background_color)
            }
            "show-version" => self.show_version = value.get().unwrap_or(self.show_version),
            "show-stale" => self.show_stale = value.get().unwrap_or(self.show_stale),
            "show-events" => self.show_events = value.get().unwrap_or(self.show_events),
            "event-hold" => self.event_hold_ms = value.get().unwrap_or(self.event_hold_ms),
            _ => {}
        }
    }

    /// One property's value (`None` for a name not declared below).
    pub fn get(&self, name: &str) -> Option<glib::Value> {
        Some(match name {
            "max-labels" => self.max_labels.to_value(),
            "min-score" => self.min_score.to_value(),
            "position" => self.position.to_value(),
            "text-size" => self.text_size.to_value(),
            "text-color" => self.text_color.to_value(),
            "bar-color" => self.bar_color.to_value(),
            "background-color" => self.background_color.to_value(),
            "show-version" => self.show_version.to_value(),
            "show-stale" => self.show_stale.to_value(),
            "show-events" => self.show_events.to_value(),
            "event-hold" => self.event_hold_ms.to_value(),
            _ => return None,
        })
    }
}

/// The properties, declared once.
pub static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
    vec![
        glib::ParamSpecUInt::builder("max-labels")
            .nick("Labels")
            .blurb("Most labels listed, best first (the cliptag element's top-k may give fewer)")
            .minimum(1)
            .maximum(MAX_LABELS)
            .default_value(DEFAULT_MAX_LABELS)
            .mutable_playing()
            .build(),
        glib::ParamSpecDouble::builder("min-score")
            .nick("Minimum score")
            .blurb("Labels scoring below this (0 to 1) are not listed")
            .minimum(0.0)
            .maximum(1.0)
            .default_value(DEFAULT_MIN_SCORE)
            .mutable_playing()
            .build(),
        glib::ParamSpecEnum::builder_with_default("position", DEFAULT_POSITION)
            .nick("Position")
            .blurb("The frame corner the label panel sits in")
            .mutable_playing()
            .build(),
        glib::ParamSpecDouble::builder("text-size")
            .nick("Text size")
            .blurb("Text height as a fraction of the frame height (0.045: 32 pixels on 720p)")
            .minimum(0.005)
            .maximum(0.5)
            .default_value(DEFAULT_TEXT_SIZE)
            .mutable_playing()
            .build(),
        glib::ParamSpecUInt::builder("text-color")
            .nick("Text colour")
            .blurb("Colour of the text as 0xAARRGGBB (default opaque white)")
            .default_value(DEFAULT_TEXT_COLOR)
            .mutable_playing()
            .build(),
        glib::ParamSpecUInt::builder("bar-color")
            .nick("Bar colour")
            .blurb("Colour of the score bars as 0xAARRGGBB (default 0xd02f8fe0, light blue)")
            .default_value(DEFAULT_BAR_COLOR)
            .mutable_playing()
            .build(),
        glib::ParamSpecUInt::builder("background-color")
            .nick("Background colour")
            .blurb("Colour behind the panel as 0xAARRGGBB (default 0x99000000, black at 60 %)")
            .default_value(DEFAULT_BACKGROUND_COLOR)
            .mutable_playing()
            .build(),
        glib::ParamSpecBoolean::builder("show-version")
            .nick("Show version")
            .blurb("Head the panel with the label set and its version")
            .default_value(DEFAULT_SHOW_VERSION)
            .mutable_playing()
            .build(),
        glib::ParamSpecBoolean::builder("show-stale")
            .nick("Show stale")
            .blurb("Mark results carried from an earlier frame (not inferred) as stale")
            .default_value(DEFAULT_SHOW_STALE)
            .mutable_playing()
            .build(),
        glib::ParamSpecBoolean::builder("show-events")
            .nick("Show events")
            .blurb("List labels that started or ended, for event-hold after each event")
            .default_value(DEFAULT_SHOW_EVENTS)
            .mutable_playing()
            .build(),
        glib::ParamSpecUInt::builder("event-hold")
            .nick("Event hold")
            .blurb("How long a start or end event stays listed, in milliseconds of buffer timestamps (frames without timestamps: counted at 30 a second)")
            .maximum(600_000)
            .default_value(DEFAULT_EVENT_HOLD_MS)
            .mutable_playing()
            .build(),
    ]
});
