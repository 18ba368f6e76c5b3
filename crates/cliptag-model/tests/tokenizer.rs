//! Token ids against `transformers`' `CLIPTokenizerFast` on a corpus of hard strings.

mod common;

use cliptag_model::ClipTokenizer;
use common::data_dir;
use serde_json::Value;

struct Case {
    text: String,
    ids: Vec<u32>,
    truncated_ids: Vec<u32>,
}

fn corpus() -> (usize, Vec<Case>) {
    let path = data_dir().join("tokenizer/corpus.json");
    let text = std::fs::read_to_string(&path).expect("corpus.json");
    let json: Value = serde_json::from_str(&text).expect("corpus is JSON");
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .expect("id list")
            .iter()
            .map(|i| i.as_u64().expect("id") as u32)
            .collect()
    };
    let cases = json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().expect("text").to_string(),
            ids: ids(&c["ids"]),
            truncated_ids: ids(&c["truncated_ids"]),
        })
        .collect();
    let context = json["context_length"].as_u64().expect("context_length") as usize;
    (context, cases)
}

fn check(tokenizer: &ClipTokenizer, what: &str) {
    let (context, cases) = corpus();
    assert!(
        cases.len() >= 200,
        "corpus has only {} strings",
        cases.len()
    );
    let mut mismatches = Vec::new();
    let mut truncated = 0;
    for case in &cases {
        let tokens = tokenizer.encode(&case.text).expect("encode");
        if tokens.ids != case.truncated_ids || tokens.full_len != case.ids.len() {
            mismatches.push(format!(
                "{:?}: got {:?} (full length {}), transformers {:?} (full length {})",
                case.text,
                tokens.ids,
                tokens.full_len,
                case.truncated_ids,
                case.ids.len()
            ));
        }
        assert!(tokens.ids.len() <= context);
        assert_eq!(
            tokens.truncated(),
            case.ids.len() > context,
            "{:?}",
            case.text
        );
        truncated += usize::from(tokens.truncated());
    }
    assert!(truncated >= 3, "the corpus should exercise truncation");
    assert!(
        mismatches.is_empty(),
        "{what}: {} of {} strings differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}

#[test]
fn tokenizer_json_matches_transformers() {
    let tok =
        ClipTokenizer::from_tokenizer_json(&data_dir().join("tiny-quickgelu/tokenizer.json"), 77)
            .expect("load tokenizer.json");
    assert_eq!(tok.vocab_size(), 49408);
    check(&tok, "tokenizer.json");
}

#[test]
fn vocab_and_merges_match_transformers() {
    let dir = data_dir().join("tokenizer");
    let tok =
        ClipTokenizer::from_vocab_and_merges(&dir.join("vocab.json"), &dir.join("merges.txt"), 77)
            .expect("load vocab.json + merges.txt");
    assert_eq!(tok.vocab_size(), 49408);
    check(&tok, "vocab.json + merges.txt");
}

#[test]
fn known_prompt_and_special_tokens() {
    let tok =
        ClipTokenizer::from_tokenizer_json(&data_dir().join("tiny-quickgelu/tokenizer.json"), 77)
            .expect("load");
    let t = tok.encode("a photo of a cat").expect("encode");
    assert_eq!(t.ids, [49406, 320, 1125, 539, 320, 2368, 49407]);
    assert!(!t.truncated());
    let long = "cat ".repeat(200);
    let t = tok.encode(&long).expect("encode");
    assert_eq!(t.ids.len(), 77);
    assert_eq!(t.full_len, 202);
    assert_eq!(t.ids[76], 49407);
    assert!(t.truncated());
}

#[test]
fn a_shorter_context_truncates_there() {
    let tok =
        ClipTokenizer::from_tokenizer_json(&data_dir().join("tiny-quickgelu/tokenizer.json"), 8)
            .expect("load");
    let t = tok
        .encode("one two three four five six seven eight")
        .expect("encode");
    assert_eq!(t.ids.len(), 8);
    assert_eq!(t.ids[0], 49406);
    assert_eq!(t.ids[7], 49407);
    assert_eq!(t.full_len, 10);
}

#[test]
fn a_missing_tokenizer_is_an_error_naming_the_directory() {
    let empty = tempfile::tempdir().expect("temp dir");
    let err = ClipTokenizer::from_dir(empty.path(), 77).expect_err("no tokenizer files");
    let msg = err.to_string();
    assert!(msg.contains(&empty.path().display().to_string()), "{msg}");
    assert!(msg.contains("tokenizer.json"), "{msg}");
}
