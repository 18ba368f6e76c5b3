//! `--labels "a,b"` and `--label TEXT`: labels named on the command line.

use anyhow::{Result, bail};

/// Labels named on the command line.
#[derive(Debug, clap::Args)]
pub struct LabelArgs {
    /// Comma-separated labels.
    #[arg(long, value_name = "A,B,...")]
    labels: Option<String>,
    /// One label that may contain commas; repeat for several.
    #[arg(long = "label", value_name = "TEXT")]
    label: Vec<String>,
}

impl LabelArgs {
    /// Every label given, trimmed, in order; an error when there is none.
    pub fn names(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .labels
            .iter()
            .flat_map(|l| l.split(','))
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        names.extend(self.label.iter().map(|l| l.trim().to_string()));
        if names.is_empty() {
            bail!("no labels: give --labels \"a,b\" or --label TEXT");
        }
        Ok(names)
    }
}
