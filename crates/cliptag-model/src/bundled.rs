//! `cliptag-tiny`, the small CLIP that ships with cliptag, compiled into the binary so
//! that every command and the element work with no model on disk.
//!
//! The files are `models/cliptag-tiny/` of the repository, written by
//! `tools/train_tiny.py` (`./x train-tiny`); its `README.md` says what the model knows.

/// The bundled model's name.
pub const NAME: &str = "cliptag-tiny";
/// The directory the files were compiled from, relative to the repository; error
/// messages about the bundled model name files under it.
pub const DIR: &str = "models/cliptag-tiny";

macro_rules! model_file {
    ($name:literal) => {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/cliptag-tiny/",
            $name
        )
    };
}

/// `config.json`.
pub const CONFIG: &str = include_str!(model_file!("config.json"));
/// `model.safetensors` (float16).
pub const WEIGHTS: &[u8] = include_bytes!(model_file!("model.safetensors"));
/// `tokenizer.json`.
pub const TOKENIZER: &[u8] = include_bytes!(model_file!("tokenizer.json"));
/// `preprocessor_config.json`.
pub const PREPROCESSOR: &str = include_str!(model_file!("preprocessor_config.json"));
