//! Label sets as users write them, and the checks they must pass before they replace a
//! running set.

use std::collections::HashSet;

/// Most labels one set may hold.
pub const MAX_LABELS: usize = 4096;
/// Most prompts one label may carry.
pub const MAX_PROMPTS_PER_LABEL: usize = 64;
/// Most frames temporal pooling may average.
pub const MAX_POOLED_FRAMES: usize = 256;

/// One label: its name, and the prompts whose text embeddings stand for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// What results call it.
    pub name: String,
    /// Prompts averaged into the label's embedding (CLIP's prompt ensembling). Empty:
    /// the set's template applied to the name.
    pub prompts: Vec<String>,
}

impl Label {
    /// A label whose only prompt is the set's template applied to its name.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            prompts: Vec::new(),
        }
    }

    /// A label with its own prompts.
    pub fn with_prompts(name: impl Into<String>, prompts: Vec<String>) -> Self {
        Self {
            name: name.into(),
            prompts,
        }
    }
}

/// How cosine similarities become scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scoring {
    /// Softmax over the set of `logit_scale * cosine` (CLIP's zero-shot classification):
    /// scores sum to one, exactly one label describes the frame best.
    Softmax,
    /// Independent per-label `sigmoid(logit_scale * (cosine - center))`, for sets whose
    /// labels may all or none apply. `center` is the cosine that scores 0.5.
    Sigmoid {
        /// Cosine similarity that maps to a score of 0.5.
        center: f32,
    },
}

impl Scoring {
    /// The default center of sigmoid scoring.
    pub const DEFAULT_SIGMOID_CENTER: f32 = 0.25;
}

/// Which image embedding a frame is scored with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The frame's own embedding.
    Frame,
    /// The mean of the unit image embeddings of the stream's last `frames` inferred
    /// frames, renormalized: for actions no single frame shows.
    Mean {
        /// How many inferred frames to average (1 to [`MAX_POOLED_FRAMES`]).
        frames: usize,
    },
}

/// A label set as written: labels, template and how to score them.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelSetSpec {
    /// The labels, in the order results index them.
    pub labels: Vec<Label>,
    /// Prompt template; `{}` stands for the label name.
    pub template: String,
    /// Softmax or sigmoid scoring.
    pub scoring: Scoring,
    /// Score at or above which a label counts as present (label start/end events).
    pub threshold: f32,
    /// How many labels each result carries, best first.
    pub top_k: usize,
    /// Per-frame or temporally pooled image embeddings.
    pub pooling: Pooling,
}

impl Default for LabelSetSpec {
    fn default() -> Self {
        Self {
            labels: Vec::new(),
            template: "{}".into(),
            scoring: Scoring::Softmax,
            threshold: 0.5,
            top_k: 5,
            pooling: Pooling::Frame,
        }
    }
}

impl LabelSetSpec {
    /// A set of labels named by their text, other settings at their defaults.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Self {
        Self {
            labels: names
                .iter()
                .map(|n| Label::new(n.as_ref().trim()))
                .collect(),
            ..Self::default()
        }
    }

    /// The prompts of every label, in label order.
    pub fn prompts(&self) -> Vec<Vec<String>> {
        self.labels
            .iter()
            .map(|l| {
                if l.prompts.is_empty() {
                    vec![self.template.replacen("{}", &l.name, 1)]
                } else {
                    l.prompts.clone()
                }
            })
            .collect()
    }

    /// Checks everything that does not need the tokenizer.
    pub fn validate(&self) -> Result<(), LabelError> {
        if self.labels.is_empty() {
            return Err(LabelError::Empty);
        }
        if self.labels.len() > MAX_LABELS {
            return Err(LabelError::TooMany {
                count: self.labels.len(),
                max: MAX_LABELS,
            });
        }
        if self.template.matches("{}").count() != 1 {
            return Err(LabelError::Template(self.template.clone()));
        }
        let mut seen = HashSet::with_capacity(self.labels.len());
        for label in &self.labels {
            if label.name.trim().is_empty() {
                return Err(LabelError::EmptyName);
            }
            if label.name.trim() != label.name {
                return Err(LabelError::Whitespace(label.name.clone()));
            }
            if !seen.insert(label.name.as_str()) {
                return Err(LabelError::Duplicate(label.name.clone()));
            }
            if label.prompts.len() > MAX_PROMPTS_PER_LABEL {
                return Err(LabelError::TooManyPrompts {
                    label: label.name.clone(),
                    count: label.prompts.len(),
                    max: MAX_PROMPTS_PER_LABEL,
                });
            }
            if label.prompts.iter().any(|p| p.trim().is_empty()) {
                return Err(LabelError::EmptyPrompt(label.name.clone()));
            }
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(LabelError::Setting(format!(
                "threshold {} is outside 0..1",
                self.threshold
            )));
        }
        if self.top_k == 0 {
            return Err(LabelError::Setting("top-k must be at least 1".into()));
        }
        if let Scoring::Sigmoid { center } = self.scoring
            && !(-1.0..=1.0).contains(&center)
        {
            return Err(LabelError::Setting(format!(
                "sigmoid center {center} is not a cosine (-1..1)"
            )));
        }
        if let Pooling::Mean { frames } = self.pooling
            && !(1..=MAX_POOLED_FRAMES).contains(&frames)
        {
            return Err(LabelError::Setting(format!(
                "pooling over {frames} frames: must be 1 to {MAX_POOLED_FRAMES}"
            )));
        }
        Ok(())
    }
}

/// Text from a user in a message, quoted, and cut short when long: an error about a 20 KB
/// prompt names it by its start and length, so that the message itself stays readable
/// (and fits in a gRPC status).
#[derive(Debug, Clone, Copy)]
pub struct Quoted<'a>(pub &'a str);

impl Quoted<'_> {
    /// Characters quoted in full; longer text shows its first [`Quoted::HEAD`].
    pub const LIMIT: usize = 80;
    /// Characters shown of longer text.
    pub const HEAD: usize = 60;
}

impl std::fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.chars().count() <= Self::LIMIT {
            return write!(f, "{:?}", self.0);
        }
        let head: String = self.0.chars().take(Self::HEAD).collect();
        write!(f, "{:?}... ({} bytes)", head, self.0.len())
    }
}

/// Why a label set was refused. The running set is left as it was.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LabelError {
    /// No labels.
    #[error("the label set is empty")]
    Empty,
    /// More than [`MAX_LABELS`].
    #[error("{count} labels: at most {max} are allowed")]
    TooMany {
        /// Labels given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A label's name is empty.
    #[error("a label name is empty")]
    EmptyName,
    /// A label's name starts or ends with whitespace.
    #[error("label {} starts or ends with whitespace", Quoted(.0))]
    Whitespace(String),
    /// Two labels share a name.
    #[error("label {} appears more than once", Quoted(.0))]
    Duplicate(String),
    /// A label carries too many prompts.
    #[error(
        "label {} has {count} prompts: at most {max} are allowed",
        Quoted(label)
    )]
    TooManyPrompts {
        /// The label.
        label: String,
        /// Prompts given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A label has an empty prompt.
    #[error("label {} has an empty prompt", Quoted(.0))]
    EmptyPrompt(String),
    /// The template does not contain `{}` exactly once.
    #[error("template {} must contain {{}} exactly once", Quoted(.0))]
    Template(String),
    /// A prompt is longer than the text tower's context.
    #[error(
        "the prompt {} of label {} is {tokens} tokens, the model reads at most {max}",
        Quoted(prompt),
        Quoted(label)
    )]
    TooLong {
        /// The label.
        label: String,
        /// The prompt.
        prompt: String,
        /// Its length in tokens, with start and end tokens.
        tokens: usize,
        /// The context length.
        max: usize,
    },
    /// A removal names a label the set does not have.
    #[error("the set has no label {}", Quoted(.0))]
    NoSuchLabel(String),
    /// A scoring setting is out of range.
    #[error("{0}")]
    Setting(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_quoted_by_its_start_and_length() {
        assert_eq!(Quoted("a cat").to_string(), "\"a cat\"");
        let exact = "x".repeat(Quoted::LIMIT);
        assert_eq!(Quoted(&exact).to_string(), format!("{exact:?}"));
        // Multi-byte characters are cut whole.
        let long = "é".repeat(10_000);
        let shown = Quoted(&long).to_string();
        assert!(shown.starts_with(&format!("\"{}", "é".repeat(Quoted::HEAD))));
        assert!(shown.ends_with("... (20000 bytes)"), "{shown}");
        let error = LabelError::Duplicate(long).to_string();
        assert!(error.len() < 200, "{error}");
    }

    fn spec(names: &[&str]) -> LabelSetSpec {
        LabelSetSpec::from_names(names)
    }

    #[test]
    fn valid_sets_pass() {
        assert_eq!(spec(&["a cat", "a dog"]).validate(), Ok(()));
    }

    #[test]
    fn every_invalid_set_names_its_fault() {
        assert_eq!(spec(&[]).validate(), Err(LabelError::Empty));
        assert_eq!(
            spec(&["cat", "cat"]).validate(),
            Err(LabelError::Duplicate("cat".into()))
        );
        assert_eq!(spec(&["cat", ""]).validate(), Err(LabelError::EmptyName));
        let many: Vec<String> = (0..=MAX_LABELS).map(|i| format!("l{i}")).collect();
        assert!(matches!(
            LabelSetSpec::from_names(&many).validate(),
            Err(LabelError::TooMany { .. })
        ));
        let mut s = spec(&["cat"]);
        s.template = "a photo".into();
        assert!(matches!(s.validate(), Err(LabelError::Template(_))));
        let mut s = spec(&["cat"]);
        s.threshold = 1.5;
        assert!(matches!(s.validate(), Err(LabelError::Setting(_))));
        let mut s = spec(&["cat"]);
        s.pooling = Pooling::Mean { frames: 0 };
        assert!(matches!(s.validate(), Err(LabelError::Setting(_))));
        let mut s = spec(&["cat"]);
        s.labels[0].prompts = vec![" ".into()];
        assert!(matches!(s.validate(), Err(LabelError::EmptyPrompt(_))));
    }

    #[test]
    fn prompts_apply_the_template_only_without_own_prompts() {
        let mut s = spec(&["cat", "dog"]);
        s.template = "a photo of a {}".into();
        s.labels[1].prompts = vec!["a puppy".into(), "a hound".into()];
        assert_eq!(
            s.prompts(),
            vec![
                vec!["a photo of a cat".to_string()],
                vec!["a puppy".to_string(), "a hound".to_string()]
            ]
        );
    }
}
