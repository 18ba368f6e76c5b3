//! The `cliptag` element's tuning as command-line options: every knob a pipeline line
//! could set, for `cliptag run`. Each is optional; left out, the element's default
//! (shown in `gst-inspect-1.0 cliptag`) applies. Values are checked here against the
//! element's ranges, so a bad one is a usage error naming the option.

use gst::prelude::*;

/// Options that tune the `cliptag` element.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(
    next_help_heading = "Tuning (the cliptag element's properties; defaults are the element's)"
)]
pub struct TuningArgs {
    /// Infer every Nth frame; the others carry the last result, marked stale [element: 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub interval: Option<u32>,
    /// sync: every inferred frame waits for its own result; async: frames never wait,
    /// each carries the newest result [element: sync].
    #[arg(long, value_parser = ["sync", "async"])]
    pub mode: Option<String>,
    /// When the inference queue is full: block (hold upstream back) or skip (pass the
    /// frame on uninferred, marked stale) [element: block].
    #[arg(long, value_parser = ["block", "skip"])]
    pub overload: Option<String>,
    /// Most frames per forward pass [element: 8].
    #[arg(long, value_name = "FRAMES", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_batch: Option<u32>,
    /// Longest a frame waits for its batch to fill, in milliseconds [element: 20].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub max_latency: Option<u32>,
    /// Precision: f32, f16, bf16, or auto (f16 on a GPU; on the CPU bf16 where it has bf16
    /// dot products, f32 elsewhere) [element: auto].
    #[arg(long, value_parser = ["auto", "f32", "f16", "bf16"])]
    pub dtype: Option<String>,
    /// Weight of the past in the moving average of scores, 0 (off) to 0.99 [element: 0].
    #[arg(long, value_name = "W", value_parser = smoothing)]
    pub smoothing: Option<f64>,
    /// Labels carried per frame, best first [element: 5].
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=cliptag_engine::MAX_LABELS as i64))]
    pub top_k: Option<u32>,
    /// Score at which a label counts as present (start/end events), 0 to 1 [element: 0.5].
    #[arg(long, value_name = "SCORE", value_parser = unit)]
    pub threshold: Option<f64>,
    /// softmax (scores sum to 1) or sigmoid (independent per label) [element: softmax].
    #[arg(long, value_parser = ["softmax", "sigmoid"])]
    pub scoring: Option<String>,
}

fn ranged(text: &str, low: f64, high: f64) -> Result<f64, String> {
    let v: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if (low..=high).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not within {low} to {high}"))
    }
}

fn unit(text: &str) -> Result<f64, String> {
    ranged(text, 0.0, 1.0)
}

fn smoothing(text: &str) -> Result<f64, String> {
    ranged(text, 0.0, 0.99)
}

impl TuningArgs {
    /// Sets the options given on a `cliptag` element (before it starts).
    pub fn apply(&self, element: &gst::Element) {
        let uint = |name: &str, v: Option<u32>| {
            if let Some(v) = v {
                element.set_property(name, v);
            }
        };
        let double = |name: &str, v: Option<f64>| {
            if let Some(v) = v {
                element.set_property(name, v);
            }
        };
        // Checked above against the element's nicks: set from their text.
        let text = |name: &str, v: &Option<String>| {
            if let Some(v) = v {
                element.set_property_from_str(name, v);
            }
        };
        uint("interval", self.interval);
        uint("max-batch", self.max_batch);
        uint("max-latency", self.max_latency);
        uint("top-k", self.top_k);
        double("smoothing", self.smoothing);
        double("threshold", self.threshold);
        text("mode", &self.mode);
        text("overload", &self.overload);
        text("scoring", &self.scoring);
        text("dtype", &self.dtype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        tuning: TuningArgs,
    }

    #[test]
    fn values_outside_the_elements_ranges_are_usage_errors() {
        for bad in [
            &["--threshold", "1.5"][..],
            &["--smoothing", "1"],
            &["--interval", "0"],
            &["--max-batch", "2000"],
            &["--mode", "fast"],
            &["--top-k", "0"],
            &["--dtype", "f64"],
        ] {
            let args = std::iter::once("cliptag").chain(bad.iter().copied());
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?} accepted");
        }
        let ok = Cli::try_parse_from(["cliptag", "--threshold", "0.3", "--mode", "async"])
            .expect("parses");
        assert_eq!(ok.tuning.threshold, Some(0.3));
        assert_eq!(ok.tuning.mode.as_deref(), Some("async"));
    }

    #[test]
    fn every_option_reaches_the_element() {
        gst::init().expect("gst init");
        gstcliptag::register_static().expect("register");
        let element = gst::ElementFactory::make("cliptag")
            .build()
            .expect("the element");
        let tuning = TuningArgs {
            interval: Some(3),
            mode: Some("async".into()),
            overload: Some("skip".into()),
            max_batch: Some(4),
            max_latency: Some(35),
            dtype: Some("f32".into()),
            smoothing: Some(0.5),
            top_k: Some(2),
            threshold: Some(0.25),
            scoring: Some("sigmoid".into()),
        };
        tuning.apply(&element);
        assert_eq!(element.property::<u32>("interval"), 3);
        assert_eq!(element.property::<u32>("max-batch"), 4);
        assert_eq!(element.property::<u32>("max-latency"), 35);
        assert_eq!(element.property::<u32>("top-k"), 2);
        assert_eq!(element.property::<f64>("smoothing"), 0.5);
        assert_eq!(element.property::<f64>("threshold"), 0.25);
        assert_eq!(element.property::<String>("dtype"), "f32");
        let nick = |name: &str| {
            let value = element.property_value(name);
            glib_nick(&value)
        };
        assert_eq!(nick("mode"), "async");
        assert_eq!(nick("overload"), "skip");
        assert_eq!(nick("scoring"), "sigmoid");
    }

    /// The defaults the help names (`[element: X]`) are the element's own.
    #[test]
    fn the_defaults_named_in_the_help_are_the_elements() {
        use clap::CommandFactory;
        gst::init().expect("gst init");
        gstcliptag::register_static().expect("register");
        let element = gst::ElementFactory::make("cliptag")
            .build()
            .expect("the element");
        let command = Cli::command();
        let mut checked = 0;
        for arg in command.get_arguments() {
            let Some(help) = arg.get_help().map(|h| h.to_string()) else {
                continue;
            };
            let Some(named) = help
                .split("[element: ")
                .nth(1)
                .and_then(|rest| rest.split(']').next())
            else {
                continue;
            };
            let property = arg.get_id().as_str().replace('_', "-");
            let pspec = element
                .find_property(&property)
                .expect("a property of that name");
            let default = pspec.default_value();
            let actual = if let Ok(v) = default.get::<u32>() {
                v.to_string()
            } else if let Ok(v) = default.get::<f64>() {
                v.to_string()
            } else if let Ok(Some(v)) = default.get::<Option<String>>() {
                v
            } else {
                glib_nick(default)
            };
            assert_eq!(named, actual, "--{property}");
            checked += 1;
        }
        assert_eq!(checked, 10);
    }

    fn glib_nick(value: &gst::glib::Value) -> String {
        gst::glib::EnumValue::from_value(value)
            .map(|(_, v)| v.nick().to_string())
            .unwrap_or_default()
    }
}
