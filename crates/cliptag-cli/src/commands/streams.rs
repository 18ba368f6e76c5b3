//! `cliptag streams`: the streams a server serves, with their counters.

use crate::output::outln;
use anyhow::Result;
use cliptag_service::v1;
use serde_json::json;

use crate::grpc_args::{ClientArgs, describe, runtime};

/// Arguments of `cliptag streams`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    client: ClientArgs,
    /// One JSON object per stream.
    #[arg(long)]
    json: bool,
}

/// Lists the streams.
pub fn run(args: Args) -> Result<()> {
    runtime()?.block_on(async {
        let mut client = args.client.connect().await?;
        let reply = client
            .list_streams(v1::ListStreamsRequest {})
            .await
            .map_err(describe)?
            .into_inner();
        for s in reply.streams {
            let stats = s.stats.unwrap_or_default();
            if args.json {
                outln!(
                    "{}",
                    json!({
                        "id": s.id,
                        "model": s.model,
                        "label_set": s.label_set,
                        "label_set_version": s.label_set_version,
                        "frames_in": stats.frames_in,
                        "inferred": stats.inferred,
                        "skipped": stats.skipped,
                        "dropped": stats.dropped,
                        "failed": stats.failed,
                        "latency_p50_us": stats.latency_p50_us,
                        "latency_p99_us": stats.latency_p99_us,
                        "batch_sizes": stats.batch_sizes,
                    })
                )?;
            } else {
                outln!(
                    "{}  model {}  labels v{}  frames {} inferred {} skipped {} dropped {}  latency p50 {:.1} ms p99 {:.1} ms",
                    s.id,
                    s.model,
                    s.label_set_version,
                    stats.frames_in,
                    stats.inferred,
                    stats.skipped,
                    stats.dropped,
                    stats.latency_p50_us as f64 / 1e3,
                    stats.latency_p99_us as f64 / 1e3
                )?;
            }
        }
        Ok(())
    })
}
