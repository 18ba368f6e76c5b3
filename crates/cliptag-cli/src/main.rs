//! `cliptag`: zero-shot image tagging with CLIP models from the command line.

mod broker_args;
mod commands;
mod grpc_args;
mod label_args;
mod logging;
mod model_arg;
mod output;
mod serve_config;
mod servers;
mod tuning_args;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Tag live video and images with open-vocabulary labels using CLIP.
#[derive(Debug, Parser)]
#[command(name = "cliptag", version, about)]
struct Cli {
    /// How log lines on standard error look: plain, or one JSON object per line
    /// (which events: CLIPTAG_LOG, e.g. debug; info by default).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "plain",
        env = "CLIPTAG_LOG_FORMAT"
    )]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Tag a live pipeline and serve the gRPC API beside it (the main job).
    Run(Box<commands::run::Args>),
    /// Run the streams, engines and servers of a configuration file (many cameras, one
    /// process).
    Serve(commands::serve::Args),
    /// Print a server's detections as they happen.
    Watch(commands::watch::Args),
    /// Read or change a server's label sets.
    Labels(commands::labels::Args),
    /// List a server's streams with their counters.
    Streams(commands::streams::Args),
    /// Print projected image and text embeddings as JSON.
    Embed(commands::embed::Args),
    /// Rank labels for an image by zero-shot probability.
    Classify(commands::classify::Args),
    /// Write the pixel values the vision tower sees for an image.
    Preprocess(commands::preprocess::Args),
    /// Measure vision-tower throughput in images per second.
    Bench(commands::bench::Args),
    /// Measure detection delivery over gRPC to 1, 10 and 100 subscribers.
    BenchGrpc(commands::bench_grpc::Args),
    /// Measure detections per second and delivery latency through NATS and MQTT.
    BenchBrokers(commands::bench_brokers::Args),
    /// Zero-shot top-1 accuracy over a labelled manifest of images.
    Eval(commands::eval::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::Run(args) => commands::run::run(*args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Watch(args) => commands::watch::run(args),
        Command::Labels(args) => commands::labels::run(args),
        Command::Streams(args) => commands::streams::run(args),
        Command::Embed(args) => commands::embed::run(args),
        Command::Classify(args) => commands::classify::run(args),
        Command::Preprocess(args) => commands::preprocess::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::BenchGrpc(args) => commands::bench_grpc::run(args),
        Command::BenchBrokers(args) => commands::bench_brokers::run(args),
        Command::Eval(args) => commands::eval::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that closed the pipe (`cliptag watch | head`) is not an error.
        Err(error) if output::is_closed_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: the whole cause chain, outermost first.
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}
