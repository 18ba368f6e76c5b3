//! CLIP's byte-level BPE tokenizer, as `CLIPTokenizerFast` runs it.
//!
//! Loaded from `tokenizer.json`, or built from `vocab.json` + `merges.txt` with the same
//! pipeline `transformers` writes into `tokenizer.json`: NFC, whitespace runs collapsed to
//! one space, lower case; split into letter runs, single digits, punctuation runs and the
//! English contractions; byte-level BPE with `</w>` marking word ends; the text wrapped in
//! `<|startoftext|>` ... `<|endoftext|>`.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tokenizers::Tokenizer;

use crate::error::{ModelError, Result};

/// The start-of-text token.
pub const START_OF_TEXT: &str = "<|startoftext|>";
/// The end-of-text token.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// A prompt as token ids, with what truncation did to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// Ids including the start and end tokens, at most the context length.
    pub ids: Vec<u32>,
    /// Length before truncation, start and end tokens included.
    pub full_len: usize,
}

impl Tokens {
    /// Whether the prompt was longer than the context and lost its tail.
    pub fn truncated(&self) -> bool {
        self.full_len > self.ids.len()
    }
}

/// The tokenizer of a CLIP model directory.
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    context_length: usize,
    end_of_text: u32,
    source: PathBuf,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("source", &self.source)
            .field("context_length", &self.context_length)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl ClipTokenizer {
    /// Loads the tokenizer of a model directory: `tokenizer.json` when present, otherwise
    /// `vocab.json` + `merges.txt`. `context_length` is the text tower's
    /// `max_position_embeddings`.
    pub fn from_dir(dir: &Path, context_length: usize) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_tokenizer_json(&json, context_length);
        }
        let vocab = dir.join("vocab.json");
        let merges = dir.join("merges.txt");
        if vocab.is_file() && merges.is_file() {
            return Self::from_vocab_and_merges(&vocab, &merges, context_length);
        }
        Err(ModelError::Tokenizer {
            path: dir.to_path_buf(),
            reason: "no tokenizer.json, nor vocab.json with merges.txt".into(),
        })
    }

    /// Loads a `tokenizer.json` written by `transformers` or `tokenizers`.
    pub fn from_tokenizer_json(path: &Path, context_length: usize) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_tokenizer_json_bytes(&bytes, context_length, path)
    }

    /// Parses the contents of a `tokenizer.json`; `path` names it in error messages.
    pub fn from_tokenizer_json_bytes(
        bytes: &[u8],
        context_length: usize,
        path: &Path,
    ) -> Result<Self> {
        let inner = Tokenizer::from_bytes(bytes).map_err(|e| ModelError::Tokenizer {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::new(inner, context_length, path)
    }

    /// Builds the tokenizer from the original vocabulary and merge list.
    pub fn from_vocab_and_merges(
        vocab: &Path,
        merges: &Path,
        context_length: usize,
    ) -> Result<Self> {
        let vocab_text = std::fs::read_to_string(vocab).map_err(|e| ModelError::io(vocab, e))?;
        let vocab_json: Value =
            serde_json::from_str(&vocab_text).map_err(|e| ModelError::Tokenizer {
                path: vocab.to_path_buf(),
                reason: e.to_string(),
            })?;
        let vocab_map = vocab_json
            .as_object()
            .ok_or_else(|| ModelError::Tokenizer {
                path: vocab.to_path_buf(),
                reason: "not a JSON object of token -> id".into(),
            })?;
        let id_of = |token: &str| -> Result<u64> {
            vocab_map
                .get(token)
                .and_then(Value::as_u64)
                .ok_or_else(|| ModelError::Tokenizer {
                    path: vocab.to_path_buf(),
                    reason: format!("no id for {token}"),
                })
        };
        let start = id_of(START_OF_TEXT)?;
        let end = id_of(END_OF_TEXT)?;
        let merges_text = std::fs::read_to_string(merges).map_err(|e| ModelError::io(merges, e))?;
        let merge_list: Vec<Value> = merges_text
            .lines()
            .filter(|line| !line.starts_with("#version") && !line.trim().is_empty())
            .map(|line| Value::String(line.to_string()))
            .collect();
        let special = |id: u64, content: &str| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": true, "special": true})
        };
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [special(start, START_OF_TEXT), special(end, END_OF_TEXT)],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
                {"type": "Lowercase"}
            ]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split",
                 "pattern": {"Regex": "'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
                 "behavior": "Removed", "invert": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                 "use_regex": false}
            ]},
            "post_processor": {"type": "RobertaProcessing",
                "sep": [END_OF_TEXT, end], "cls": [START_OF_TEXT, start],
                "trim_offsets": false, "add_prefix_space": false},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                        "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": END_OF_TEXT,
                      "continuing_subword_prefix": "", "end_of_word_suffix": "</w>",
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab_json, "merges": merge_list}
        });
        let inner: Tokenizer = serde_json::from_value(spec).map_err(|e| ModelError::Tokenizer {
            path: merges.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::new(inner, context_length, merges)
    }

    fn new(mut inner: Tokenizer, context_length: usize, source: &Path) -> Result<Self> {
        // Truncation and padding are done here, so that the caller learns what was cut.
        inner
            .with_truncation(None)
            .map_err(|e| ModelError::Tokenizer {
                path: source.to_path_buf(),
                reason: e.to_string(),
            })?;
        inner.with_padding(None);
        let end_of_text = inner
            .token_to_id(END_OF_TEXT)
            .ok_or_else(|| ModelError::Tokenizer {
                path: source.to_path_buf(),
                reason: format!("the vocabulary has no {END_OF_TEXT}"),
            })?;
        if context_length < 2 {
            return Err(ModelError::Tokenizer {
                path: source.to_path_buf(),
                reason: format!("context length {context_length} leaves no room for text"),
            });
        }
        Ok(Self {
            inner,
            context_length,
            end_of_text,
            source: source.to_path_buf(),
        })
    }

    /// Number of tokens in the vocabulary, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The most tokens a prompt may have, start and end tokens included.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Tokenizes one prompt. A prompt longer than the context keeps its first tokens and
    /// still ends with the end-of-text token, as `transformers` truncates.
    pub fn encode(&self, text: &str) -> Result<Tokens> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| ModelError::Tokenizer {
                path: self.source.clone(),
                reason: format!("cannot tokenize {text:?}: {e}"),
            })?;
        let mut ids = encoding.get_ids().to_vec();
        let full_len = ids.len();
        if full_len > self.context_length {
            ids.truncate(self.context_length - 1);
            ids.push(self.end_of_text);
        }
        Ok(Tokens { ids, full_len })
    }

    /// Tokenizes many prompts.
    pub fn encode_all<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Tokens>> {
        texts.iter().map(|t| self.encode(t.as_ref())).collect()
    }
}
