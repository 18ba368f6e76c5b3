//! The process-wide registry: engines shared by id, loaded without holding up callers of
//! other ids.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cliptag_engine::{EngineConfig, EngineError};
use cliptag_service::hub;

fn bundled_dir() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/cliptag-tiny"
    ))
}

#[test]
fn one_id_is_one_engine_and_another_model_under_it_is_refused() {
    let config = EngineConfig::default();
    let a = hub()
        .shared_engine("registry-test-same", config.clone())
        .expect("first");
    let b = hub()
        .shared_engine("registry-test-same", config.clone())
        .expect("second");
    assert!(Arc::ptr_eq(&a, &b));
    assert!(
        hub()
            .named_engine("registry-test-same")
            .is_some_and(|e| Arc::ptr_eq(&e, &a))
    );
    let other = EngineConfig {
        model: Some("/elsewhere".into()),
        ..config
    };
    assert!(matches!(
        hub().shared_engine("registry-test-same", other),
        Err(EngineError::EngineMismatch { .. })
    ));
    drop((a, b));
    assert!(hub().named_engine("registry-test-same").is_none());
}

/// A model directory whose config.json is a named pipe: loading it blocks until the
/// test writes the config, like a model on a slow disk.
fn blocked_model(dir: &Path) -> std::path::PathBuf {
    let model = dir.join("slow-model");
    std::fs::create_dir(&model).expect("dir");
    for file in [
        "model.safetensors",
        "tokenizer.json",
        "preprocessor_config.json",
    ] {
        std::fs::copy(bundled_dir().join(file), model.join(file)).expect("copy");
    }
    let status = std::process::Command::new("mkfifo")
        .arg(model.join("config.json"))
        .status()
        .expect("mkfifo");
    assert!(status.success());
    model
}

#[test]
fn a_slow_load_holds_up_only_callers_of_its_own_id() {
    let tmp = tempfile::tempdir().expect("tmp");
    let model = blocked_model(tmp.path());
    let slow_config = EngineConfig {
        model: Some(model.clone()),
        ..EngineConfig::default()
    };
    let slow = std::thread::spawn(move || hub().shared_engine("registry-test-slow", slow_config));
    // The slow load is under way (blocked reading its config) ...
    std::thread::sleep(Duration::from_millis(300));
    assert!(!slow.is_finished());
    // ... and another id loads meanwhile.
    let started = Instant::now();
    let quick = hub()
        .shared_engine("registry-test-quick", EngineConfig::default())
        .expect("quick");
    assert!(
        !slow.is_finished(),
        "the slow load ended before the other id was asked for"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // Let the slow load finish.
    let config = std::fs::read(bundled_dir().join("config.json")).expect("config");
    std::fs::write(model.join("config.json"), config).expect("write the pipe");
    let slow = slow.join().expect("slow thread").expect("slow engine");
    assert_eq!(slow.model().source, model.display().to_string());
    assert!(!Arc::ptr_eq(&slow, &quick));
}
