//! `cliptag labels ... --nats URL --key K`: a label group in a NATS key-value bucket,
//! changed with the bucket's compare-and-set on the revision. Every process bound to
//! the key (`--labels-key`, the element's `labels-key`) takes the change.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use cliptag_service::brokers::{LabelsBucket, LabelsEntry, LabelsWriteError, spec_from_proto};
use cliptag_service::v1;
use serde_json::json;

use crate::output::outln;

/// How long reaching the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Read-modify-write rounds of `add`/`remove` without --if-version before giving up on
/// a key that keeps changing.
const EDIT_ROUNDS: usize = 5;

/// What to do to the key.
#[derive(Debug)]
pub enum Change {
    /// Print it.
    Get,
    /// Replace the set.
    Set(v1::LabelSet),
    /// Append labels.
    Add(Vec<v1::Label>),
    /// Remove labels by name.
    Remove(Vec<String>),
}

/// One action on one key.
#[derive(Debug)]
pub struct KvAction {
    pub url: String,
    pub key: String,
    pub bucket: String,
    pub ca_file: Option<PathBuf>,
    pub if_version: Option<u64>,
    pub json: bool,
    pub change: Change,
}

/// Runs the action and prints the key's set afterwards.
pub async fn act(action: KvAction) -> Result<()> {
    // Only a new set may create the bucket: a mistyped bucket name is not made here.
    let create = matches!(action.change, Change::Set(_));
    let bucket = LabelsBucket::open(
        &action.url,
        &action.bucket,
        action.ca_file.clone(),
        CONNECT_TIMEOUT,
        create,
    )
    .await
    .map_err(|e| anyhow!(e))?;
    let key = action.key.as_str();
    let entry = match &action.change {
        Change::Get => bucket
            .get(key)
            .await
            .map_err(|e| anyhow!(e))?
            .ok_or_else(|| anyhow!("key {key:?} of bucket {:?} has no label set", action.bucket))?,
        Change::Set(set) => {
            let spec =
                spec_from_proto(set.clone()).map_err(|e| anyhow!("invalid label set: {e}"))?;
            let revision = bucket
                .set(key, &spec, action.if_version)
                .await
                .map_err(write_error)?;
            LabelsEntry { spec, revision }
        }
        Change::Add(_) | Change::Remove(_) => edit(&bucket, &action).await?,
    };
    print(&action, &entry)
}

/// Adds or removes labels: read, change, write on condition of the revision read (or of
/// --if-version, which must be the revision read).
async fn edit(bucket: &LabelsBucket, action: &KvAction) -> Result<LabelsEntry> {
    let key = action.key.as_str();
    for _ in 0..EDIT_ROUNDS {
        let current = bucket
            .get(key)
            .await
            .map_err(|e| anyhow!(e))?
            .ok_or_else(|| {
                anyhow!(
                    "key {key:?} of bucket {:?} has no label set to change",
                    action.bucket
                )
            })?;
        if let Some(expected) = action.if_version
            && expected != current.revision
        {
            bail!(
                "key {key:?} is at revision {}, not {expected}: not changed",
                current.revision
            );
        }
        let mut spec = current.spec.clone();
        match &action.change {
            Change::Add(add) => spec.labels.extend(
                add.iter()
                    .map(|l| cliptag_service::brokers::label_from_proto(l.clone())),
            ),
            Change::Remove(names) => {
                for name in names {
                    if !spec.labels.iter().any(|l| &l.name == name) {
                        bail!("no label {name:?} in key {key:?}");
                    }
                }
                spec.labels.retain(|l| !names.contains(&l.name));
            }
            Change::Get | Change::Set(_) => {}
        }
        spec.validate()
            .map_err(|e| anyhow!("the changed set is invalid: {e}"))?;
        match bucket.set(key, &spec, Some(current.revision)).await {
            Ok(revision) => return Ok(LabelsEntry { spec, revision }),
            // Changed in between: read again, unless the caller named the revision.
            Err(LabelsWriteError::Conflict { .. }) if action.if_version.is_none() => continue,
            Err(e) => return Err(write_error(e)),
        }
    }
    bail!("key {key:?} kept changing; tried {EDIT_ROUNDS} times")
}

fn write_error(e: LabelsWriteError) -> anyhow::Error {
    match e {
        LabelsWriteError::Conflict { .. } => anyhow!("{e}: not changed"),
        other => anyhow!(other),
    }
}

fn print(action: &KvAction, entry: &LabelsEntry) -> Result<()> {
    let names: Vec<&str> = entry.spec.labels.iter().map(|l| l.name.as_str()).collect();
    if action.json {
        outln!(
            "{}",
            json!({
                "key": action.key,
                "bucket": action.bucket,
                "version": entry.revision,
                "labels": names,
            })
        )?;
    } else {
        outln!(
            "{}  version {}  {}",
            action.key,
            entry.revision,
            names.join(", ")
        )?;
    }
    Ok(())
}
