//! `cliptag labels get|set|add|remove`: read and change a running server's label sets,
//! or (with --nats) a label group kept in a NATS key-value bucket, which every process
//! bound to it follows.

use crate::output::outln;
use anyhow::{Result, bail};
use cliptag_service::v1;
use serde_json::json;

use crate::grpc_args::{ClientArgs, describe, runtime};
use crate::label_args::LabelArgs;

/// Arguments of `cliptag labels`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Print the label set of one stream, or of every stream.
    Get {
        #[command(flatten)]
        target: Target,
    },
    /// Replace the label set.
    Set {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        set: NewSet,
    },
    /// Add labels at the end of the set.
    Add {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        labels: LabelArgs,
    },
    /// Remove labels from the set.
    Remove {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        labels: LabelArgs,
    },
}

/// The set `labels set` puts in place.
#[derive(Debug, clap::Args)]
struct NewSet {
    #[command(flatten)]
    labels: LabelArgs,
    /// Prompt template; `{}` stands for the label.
    #[arg(long, default_value = "{}")]
    template: String,
    /// softmax (scores sum to 1) or sigmoid (independent scores).
    #[arg(long, default_value = "softmax", value_parser = ["softmax", "sigmoid"])]
    scoring: String,
    /// Labels per result.
    #[arg(long, default_value_t = 5)]
    top_k: u32,
    /// Score at which a label counts as present (start/end events).
    #[arg(long)]
    threshold: Option<f32>,
    /// Score the mean embedding of the last N inferred frames (actions).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pool_frames: u32,
}

impl NewSet {
    fn to_proto(&self) -> Result<v1::LabelSet> {
        Ok(v1::LabelSet {
            labels: labels(self.labels.names()?),
            template: self.template.clone(),
            scoring: if self.scoring == "sigmoid" {
                v1::Scoring::Sigmoid
            } else {
                v1::Scoring::Softmax
            }
            .into(),
            sigmoid_center: None,
            threshold: self.threshold,
            top_k: self.top_k,
            pool_frames: self.pool_frames,
        })
    }
}

/// Which server and stream (or which key of a bucket), and the version check.
#[derive(Debug, clap::Args)]
struct Target {
    #[command(flatten)]
    client: ClientArgs,
    /// The stream; without it, every stream.
    #[arg(long, value_name = "ID", conflicts_with = "nats")]
    stream: Option<String>,
    /// Change only if the set is at this version (needs --stream, or --key: the key's
    /// revision, 0 for a key with no set yet).
    #[arg(long, value_name = "N")]
    if_version: Option<u64>,
    /// Read or change a label group in the key-value bucket of this NATS server
    /// (nats://host:port, tls:// for TLS) instead of a server's streams.
    #[arg(long, value_name = "URL", requires = "key")]
    nats: Option<String>,
    /// The label group: a key of the bucket.
    #[arg(long, value_name = "KEY", requires = "nats")]
    key: Option<String>,
    /// The bucket.
    #[arg(long, value_name = "NAME", default_value = cliptag_service::brokers::DEFAULT_BUCKET)]
    bucket: String,
    /// PEM certificates to trust for a tls:// NATS server.
    #[arg(long, value_name = "FILE")]
    nats_ca: Option<std::path::PathBuf>,
    /// Print the reply as JSON.
    #[arg(long)]
    json: bool,
}

fn labels(names: Vec<String>) -> Vec<v1::Label> {
    names
        .into_iter()
        .map(|name| v1::Label {
            name,
            prompts: vec![],
        })
        .collect()
}

/// Runs the action against the server, or the bucket.
pub fn run(args: Args) -> Result<()> {
    let target = args.action.target();
    if target.if_version.is_some() && target.stream.is_none() && target.key.is_none() {
        bail!("--if-version needs --stream (or --nats with --key)");
    }
    if target.nats.is_some() {
        return runtime()?.block_on(crate::commands::labels_kv::act(args.action.into_kv()?));
    }
    runtime()?.block_on(act(args.action))
}

impl Action {
    fn target(&self) -> &Target {
        match self {
            Action::Get { target }
            | Action::Set { target, .. }
            | Action::Add { target, .. }
            | Action::Remove { target, .. } => target,
        }
    }

    /// The action on a bucket's key.
    fn into_kv(self) -> Result<crate::commands::labels_kv::KvAction> {
        use crate::commands::labels_kv::{Change, KvAction};
        let target = self.target();
        let (Some(url), Some(key)) = (target.nats.clone(), target.key.clone()) else {
            bail!("--nats needs --key");
        };
        let mut action = KvAction {
            url,
            key,
            bucket: target.bucket.clone(),
            ca_file: target.nats_ca.clone(),
            if_version: target.if_version,
            json: target.json,
            change: Change::Get,
        };
        action.change = match self {
            Action::Get { .. } => Change::Get,
            Action::Set { set, .. } => Change::Set(set.to_proto()?),
            Action::Add { labels: names, .. } => Change::Add(labels(names.names()?)),
            Action::Remove { labels: names, .. } => Change::Remove(names.names()?),
        };
        Ok(action)
    }
}

async fn act(action: Action) -> Result<()> {
    let (target, sets) = match action {
        Action::Get { target } => {
            let mut client = target.client.connect().await?;
            let reply = client
                .get_labels(v1::GetLabelsRequest {
                    stream: target.stream.clone().unwrap_or_default(),
                })
                .await
                .map_err(describe)?;
            (target, reply.into_inner().sets)
        }
        Action::Set { target, set } => {
            let set = set.to_proto()?;
            let mut client = target.client.connect().await?;
            let request = target.client.request(v1::SetLabelsRequest {
                stream: target.stream.clone().unwrap_or_default(),
                labels: Some(set),
                if_version: target.if_version,
            })?;
            let reply = client.set_labels(request).await.map_err(describe)?;
            (target, reply.into_inner().sets)
        }
        Action::Add {
            target,
            labels: names,
        } => {
            let sets = update(&target, labels(names.names()?), vec![]).await?;
            (target, sets)
        }
        Action::Remove {
            target,
            labels: names,
        } => {
            let sets = update(&target, vec![], names.names()?).await?;
            (target, sets)
        }
    };
    print_sets(&sets, target.json)?;
    Ok(())
}

async fn update(
    target: &Target,
    add: Vec<v1::Label>,
    remove: Vec<String>,
) -> Result<Vec<v1::LabelSetState>> {
    let mut client = target.client.connect().await?;
    let request = target.client.request(v1::UpdateLabelsRequest {
        stream: target.stream.clone().unwrap_or_default(),
        add,
        remove,
        if_version: target.if_version,
    })?;
    let reply = client.update_labels(request).await.map_err(describe)?;
    Ok(reply.into_inner().sets)
}

fn print_sets(sets: &[v1::LabelSetState], as_json: bool) -> std::io::Result<()> {
    for set in sets {
        let names: Vec<&str> = set
            .labels
            .iter()
            .flat_map(|l| &l.labels)
            .map(|l| l.name.as_str())
            .collect();
        if as_json {
            outln!(
                "{}",
                json!({
                    "stream": set.stream,
                    "label_set": set.label_set,
                    "version": set.version,
                    "labels": names,
                })
            )?;
        } else {
            outln!(
                "{}  version {}  {}",
                set.stream,
                set.version,
                names.join(", ")
            )?;
        }
    }
    Ok(())
}
