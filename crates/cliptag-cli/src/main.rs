//! `cliptag`: zero-shot image tagging with CLIP models from the command line.

mod commands;
mod model_arg;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Tag images and video with open-vocabulary labels using CLIP.
#[derive(Debug, Parser)]
#[command(name = "cliptag", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print projected image and text embeddings as JSON.
    Embed(commands::embed::Args),
    /// Rank labels for an image by zero-shot probability.
    Classify(commands::classify::Args),
    /// Write the pixel values the vision tower sees for an image.
    Preprocess(commands::preprocess::Args),
    /// Measure vision-tower throughput in images per second.
    Bench(commands::bench::Args),
    /// Zero-shot top-1 accuracy over a labelled manifest of images.
    Eval(commands::eval::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Embed(args) => commands::embed::run(args),
        Command::Classify(args) => commands::classify::run(args),
        Command::Preprocess(args) => commands::preprocess::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Eval(args) => commands::eval::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: the whole cause chain, outermost first.
            eprintln!("cliptag: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
