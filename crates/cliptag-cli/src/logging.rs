//! One logging setup for every command: the CLI and the service it runs emit `tracing`
//! events; they go to standard error, as plain lines (`cliptag: message`, with
//! `warning:` or `error:` before warnings and errors) or as JSON objects, one per line
//! (`--log-format json`). Which events: `CLIPTAG_LOG` (a `tracing` filter such as
//! `debug` or `cliptag_service=debug`), info and above by default. Standard output is
//! left to what a command prints as its result (tags, JSON lines).

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `cliptag: message key=value`, for people.
    #[default]
    Plain,
    /// One JSON object per line (timestamp, level, target, fields), for log collectors.
    Json,
}

/// Installs the process's subscriber (once, before anything logs).
pub fn init(format: LogFormat) {
    // The broker clients log every connection step at info; cliptag says what matters.
    let filter = EnvFilter::try_from_env("CLIPTAG_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn,rumqttc=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Another subscriber already set (a test harness) keeps its own.
    let _ = match format {
        LogFormat::Plain => builder.event_format(Plain).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// The plain format: the program's name, the level when it is not plain news, the
/// message and any other fields.
struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "error: ",
            Level::WARN => "warning: ",
            _ => "",
        };
        write!(writer, "cliptag: {level}")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
