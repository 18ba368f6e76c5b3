//! The label panel: what it says for a frame ([`Content`]), where it goes
//! ([`panel_rect`]), and its pixels, drawn with cairo and pango into an ARGB rectangle
//! that GStreamer's video library blends onto the frame in the frame's own format.

use super::settings::{Position, Settings};
use crate::meta::Tags;

/// What the panel shows for one frame. Scores are rounded to what is drawn (two
/// decimals), so that frames whose panels would look the same compare equal and share
/// one rendering.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Content {
    /// `set vN`, `stale`, or both; `None` when neither is shown.
    pub header: Option<String>,
    /// Labels with their scores in hundredths, best first.
    pub labels: Vec<(String, u8)>,
    /// Recent start and end events, oldest first.
    pub events: Vec<String>,
}

impl Content {
    /// The panel for `tags`, listing `events` (already filtered by age) when shown.
    pub fn new(tags: &Tags, events: &[String], settings: &Settings) -> Self {
        let mut header = Vec::new();
        if settings.show_version {
            header.push(format!("{} v{}", tags.label_set, tags.version));
        }
        if settings.show_stale && tags.stale {
            header.push("stale".to_string());
        }
        let labels = tags
            .labels
            .iter()
            .filter(|(_, score)| *score >= settings.min_score)
            .take(settings.max_labels as usize)
            .map(|(label, score)| (label.clone(), (score.clamp(0.0, 1.0) * 100.0).round() as u8))
            .collect();
        Self {
            header: (!header.is_empty()).then(|| header.join(" · ")),
            labels,
            events: if settings.show_events {
                events.to_vec()
            } else {
                Vec::new()
            },
        }
    }

    /// Lines of text the panel holds.
    pub fn lines(&self) -> u32 {
        (usize::from(self.header.is_some()) + self.labels.len() + self.events.len()) as u32
    }
}

/// A rectangle in frame pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rect {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width (at least 1).
    pub width: u32,
    /// Height (at least 1).
    pub height: u32,
}

impl Rect {
    /// Whether the pixel (`x`, `y`) lies inside.
    pub fn contains(&self, x: u32, y: u32) -> bool {
        x >= self.x && y >= self.y && x - self.x < self.width && y - self.y < self.height
    }
}

/// Sizes in pixels derived from the frame height and `text-size`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Metrics {
    text_px: f64,
    line: u32,
    pad: u32,
    margin: u32,
}

impl Metrics {
    fn new(frame_height: u32, text_size: f64) -> Self {
        let text_px = (text_size * f64::from(frame_height)).max(1.0);
        Self {
            text_px,
            line: (text_px * 1.45).ceil() as u32,
            pad: (text_px * 0.3).ceil() as u32,
            margin: (text_px * 0.5).ceil() as u32,
        }
    }
}

/// Where a panel of `lines` lines goes on a `width` x `height` frame: in the chosen
/// corner, a margin away from the edges, 16 text heights wide (long labels are
/// shortened with an ellipsis), cut to what fits. `None` when nothing fits (frames a
/// few pixels high) or there is nothing to show.
pub fn panel_rect(
    width: u32,
    height: u32,
    lines: u32,
    text_size: f64,
    position: Position,
) -> Option<Rect> {
    if lines == 0 {
        return None;
    }
    let m = Metrics::new(height, text_size);
    let want_w = ((m.text_px * 16.0).ceil() as u32).saturating_add(2 * m.pad);
    let want_h = lines.saturating_mul(m.line).saturating_add(2 * m.pad);
    // Even sizes and positions keep the panel's edges on chroma sample boundaries in
    // subsampled formats (4:2:0, 4:2:2), so they stay crisp.
    let even = |v: u32| if v >= 2 { v & !1 } else { v };
    let w = even(want_w.min(width.saturating_sub(2 * m.margin)));
    let h = even(want_h.min(height.saturating_sub(2 * m.margin)));
    if w == 0 || h == 0 {
        return None;
    }
    let (left, top) = match position {
        Position::TopLeft => (true, true),
        Position::TopRight => (false, true),
        Position::BottomLeft => (true, false),
        Position::BottomRight => (false, false),
    };
    Some(Rect {
        x: even(if left { m.margin } else { width - m.margin - w }),
        y: even(if top { m.margin } else { height - m.margin - h }),
        width: w,
        height: h,
    })
}

/// Why a panel could not be drawn.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RenderError {
    /// cairo refused (out of memory, a surface too large).
    #[error("cairo: {0}")]
    Cairo(#[from] cairo::Error),
    /// The rendered pixels could not be read back.
    #[error("cannot read the rendered panel: {0}")]
    Pixels(#[from] cairo::BorrowError),
    /// GStreamer refused the rectangle.
    #[error("{0}")]
    Gst(#[from] gst::glib::BoolError),
}

/// Splits 0xAARRGGBB into cairo's red, green, blue and alpha (0..1).
fn rgba(argb: u32) -> (f64, f64, f64, f64) {
    let c = |shift: u32| f64::from((argb >> shift) & 0xff) / 255.0;
    (c(16), c(8), c(0), c(24))
}

/// A drawn panel: as GStreamer's overlay composition, and as cairo's pixels
/// (premultiplied native-endian ARGB32 rows of `stride` bytes) for the fast blend.
pub(crate) struct Rendered {
    /// The panel placed at its rectangle of the frame.
    pub composition: gst_video::VideoOverlayComposition,
    /// Its pixels.
    pub argb: Vec<u8>,
    /// Bytes per row of `argb`.
    pub stride: usize,
}

/// Draws `content` for the panel at `rect` of the frame.
pub(crate) fn render(
    content: &Content,
    rect: Rect,
    frame_height: u32,
    settings: &Settings,
) -> Result<Rendered, RenderError> {
    let m = Metrics::new(frame_height, settings.text_size);
    let (w, h) = (rect.width as i32, rect.height as i32);
    let mut surface = cairo::ImageSurface::create(cairo::Format::ARgb32, w, h)?;
    {
        let cr = cairo::Context::new(&surface)?;
        draw(&cr, content, f64::from(w), m, settings)?;
    }
    surface.flush();
    let stride = surface.stride();
    let argb = surface.data()?.to_vec();
    let mut buffer = gst::Buffer::from_slice(argb.clone());
    {
        let buffer = buffer
            .get_mut()
            .ok_or_else(|| gst::glib::bool_error!("a new buffer is not writable"))?;
        // cairo's ARGB32 is a native-endian 32-bit word: BGRA in memory on little-endian
        // machines, as GStreamer's overlay rectangles want it.
        let format = if cfg!(target_endian = "little") {
            gst_video::VideoFormat::Bgra
        } else {
            gst_video::VideoFormat::Argb
        };
        gst_video::VideoMeta::add_full(
            buffer,
            gst_video::VideoFrameFlags::empty(),
            format,
            rect.width,
            rect.height,
            &[0],
            &[stride],
        )?;
    }
    let rectangle = gst_video::VideoOverlayRectangle::new_raw(
        &buffer,
        rect.x as i32,
        rect.y as i32,
        rect.width,
        rect.height,
        gst_video::VideoOverlayFormatFlags::PREMULTIPLIED_ALPHA,
    );
    Ok(Rendered {
        composition: gst_video::VideoOverlayComposition::new(Some(&rectangle))?,
        argb,
        stride: stride as usize,
    })
}

fn set_colour(cr: &cairo::Context, argb: u32) {
    let (r, g, b, a) = rgba(argb);
    cr.set_source_rgba(r, g, b, a);
}

fn draw(
    cr: &cairo::Context,
    content: &Content,
    width: f64,
    m: Metrics,
    settings: &Settings,
) -> Result<(), cairo::Error> {
    cr.set_operator(cairo::Operator::Source);
    set_colour(cr, settings.background_color);
    cr.paint()?;
    cr.set_operator(cairo::Operator::Over);

    let pad = f64::from(m.pad);
    let line = f64::from(m.line);
    let inner = (width - 2.0 * pad).max(1.0);
    let layout = pangocairo::functions::create_layout(cr);
    let mut font = pango::FontDescription::from_string("Sans");
    font.set_absolute_size(m.text_px * f64::from(pango::SCALE));
    layout.set_font_description(Some(&font));
    layout.set_ellipsize(pango::EllipsizeMode::End);
    // A label with a line break stays on its line.
    layout.set_single_paragraph_mode(true);

    // One line of text at `y`, from `x`, at most `room` wide.
    let text = |s: &str, x: f64, y: f64, room: f64, bold: bool| {
        let mut f = font.clone();
        f.set_weight(if bold {
            pango::Weight::Bold
        } else {
            pango::Weight::Normal
        });
        layout.set_font_description(Some(&f));
        layout.set_width((room.max(1.0) * f64::from(pango::SCALE)) as i32);
        layout.set_text(s);
        let (_, logical) = layout.pixel_extents();
        // Centred vertically in the line.
        cr.move_to(x, y + (line - f64::from(logical.height())) / 2.0);
        set_colour(cr, settings.text_color);
        pangocairo::functions::show_layout(cr, &layout);
    };

    let mut y = pad;
    if let Some(header) = &content.header {
        text(header, pad, y, inner, false);
        y += line;
    }
    let score_room = m.text_px * 2.6;
    for (label, hundredths) in &content.labels {
        // The bar behind the text: its length is the score.
        let bar = inner * f64::from(*hundredths) / 100.0;
        set_colour(cr, settings.bar_color);
        cr.rectangle(pad, y + line * 0.08, bar, line * 0.84);
        cr.fill()?;
        text(label, pad + m.text_px * 0.2, y, inner - score_room, true);
        let score = format!("{:.2}", f64::from(*hundredths) / 100.0);
        text(
            &score,
            pad + inner - score_room + m.text_px * 0.3,
            y,
            score_room,
            false,
        );
        y += line;
    }
    for event in &content.events {
        text(event, pad, y, inner, false);
        y += line;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_panel_stays_inside_the_frame_in_every_corner() {
        for (w, h) in [
            (1, 1),
            (2, 3),
            (17, 9),
            (320, 240),
            (1280, 720),
            (4096, 2160),
        ] {
            for lines in 1..=25 {
                for position in [
                    Position::TopLeft,
                    Position::TopRight,
                    Position::BottomLeft,
                    Position::BottomRight,
                ] {
                    for size in [0.005, 0.045, 0.5] {
                        if let Some(r) = panel_rect(w, h, lines, size, position) {
                            assert!(r.width >= 1 && r.height >= 1);
                            assert!(
                                r.x + r.width <= w && r.y + r.height <= h,
                                "{r:?} on {w}x{h}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_panel_sits_in_its_corner_and_grows_with_lines() {
        let tl = panel_rect(1280, 720, 3, 0.045, Position::TopLeft).expect("fits");
        let br = panel_rect(1280, 720, 3, 0.045, Position::BottomRight).expect("fits");
        assert_eq!((tl.width, tl.height), (br.width, br.height));
        assert!(tl.x < 40 && tl.y < 40);
        // The same margin on the far sides, give or take the rounding to even pixels.
        assert!(
            (1280 - br.x - br.width).abs_diff(tl.x) <= 2,
            "{tl:?} {br:?}"
        );
        assert!(
            (720 - br.y - br.height).abs_diff(tl.y) <= 2,
            "{tl:?} {br:?}"
        );
        assert!(
            [tl.x, tl.y, tl.width, tl.height, br.x, br.y]
                .iter()
                .all(|v| v % 2 == 0)
        );
        let more = panel_rect(1280, 720, 4, 0.045, Position::TopLeft).expect("fits");
        assert!(more.height > tl.height);
        assert_eq!(panel_rect(1280, 720, 0, 0.045, Position::TopLeft), None);
        assert_eq!(panel_rect(1, 1, 1, 0.045, Position::TopLeft), None);
    }

    #[test]
    fn content_follows_the_settings() {
        let tags = Tags {
            labels: vec![("a".into(), 0.7), ("b".into(), 0.2), ("c".into(), 0.1)],
            version: 4,
            frame: 9,
            computed_for: Some(8),
            stale: true,
            latency_ns: 0,
            model: "m".into(),
            stream_id: "s".into(),
            label_set: "set".into(),
            events: vec![],
        };
        let events = vec!["+ a".to_string()];
        let all = Content::new(&tags, &events, &Settings::default());
        assert_eq!(all.header.as_deref(), Some("set v4 · stale"));
        assert_eq!(
            all.labels,
            vec![("a".into(), 70), ("b".into(), 20), ("c".into(), 10)]
        );
        assert_eq!(all.lines(), 5);
        let fewer = Settings {
            max_labels: 2,
            min_score: 0.15,
            show_version: false,
            show_stale: false,
            show_events: false,
            ..Settings::default()
        };
        let some = Content::new(&tags, &events, &fewer);
        assert_eq!(some.header, None);
        assert_eq!(some.labels.len(), 2);
        assert!(some.events.is_empty());
        let picky = Settings {
            min_score: 0.5,
            ..fewer
        };
        assert_eq!(Content::new(&tags, &events, &picky).lines(), 1);
    }

    #[test]
    fn colours_split_into_channels() {
        assert_eq!(rgba(0x80ff0000), (1.0, 0.0, 0.0, 128.0 / 255.0));
        assert_eq!(rgba(0xff0000ff).2, 1.0);
    }
}
