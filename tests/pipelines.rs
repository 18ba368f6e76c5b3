//! The pipelines page (`examples/pipelines.md`) runs as written: every block marked
//! `<!-- run -->` is run with bash in a directory holding a short `clip.webm` (with
//! `autovideosink` swapped for `fakesink`: no display here), with the plugin and the
//! `cliptag` binary this build made; it must succeed, and each file a block says it
//! makes (`<!-- run; makes FILE -->`) must be there and not empty.

use std::process::Command;

use cliptag_end_to_end::{cliptag_bin, make_clip, plugin_dir, repo_root};

/// A runnable block of the page: its command and the files it makes.
struct Block {
    script: String,
    makes: Vec<String>,
}

fn runnable_blocks(page: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = page.lines();
    while let Some(line) = lines.next() {
        let Some(marker) = line.trim().strip_prefix("<!-- run") else {
            continue;
        };
        let makes = marker
            .trim_end_matches("-->")
            .split("makes")
            .nth(1)
            .map(|files| files.split_whitespace().map(String::from).collect())
            .unwrap_or_default();
        let fence = lines.next().unwrap_or_default();
        assert_eq!(
            fence.trim(),
            "```sh",
            "a run marker must precede a sh block"
        );
        let script: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        blocks.push(Block {
            script: script.join("\n"),
            makes,
        });
    }
    blocks
}

#[test]
fn every_runnable_pipeline_on_the_page_runs() {
    let page = std::fs::read_to_string(repo_root().join("examples/pipelines.md"))
        .expect("examples/pipelines.md");
    let blocks = runnable_blocks(&page);
    assert!(blocks.len() >= 6, "{} runnable blocks", blocks.len());
    let bin_dir = cliptag_bin()
        .parent()
        .expect("the binary's directory")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for block in blocks {
        let dir = tempfile::tempdir().expect("a temporary directory");
        make_clip(dir.path(), 45);
        let script = block.script.replace("autovideosink", "fakesink");
        let out = Command::new("bash")
            .current_dir(dir.path())
            .args(["-euo", "pipefail", "-c", &script])
            .env("PATH", &path)
            .env("GST_PLUGIN_PATH", plugin_dir())
            .env("GST_REGISTRY", plugin_dir().join("registry.bin"))
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "{script}\nfailed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for file in &block.makes {
            let size = std::fs::metadata(dir.path().join(file)).map_or(0, |m| m.len());
            assert!(size > 0, "{script}\ndid not make {file}");
        }
        if block.makes.iter().any(|f| f == "tags.jsonl") {
            let tags = std::fs::read_to_string(dir.path().join("tags.jsonl")).unwrap_or_default();
            let first: serde_json::Value =
                serde_json::from_str(tags.lines().next().unwrap_or_default()).expect("JSON lines");
            assert!(first["labels"].is_array(), "{first}");
        }
        if script.contains("gst-launch-1.0 -m") {
            let printed = String::from_utf8_lossy(&out.stdout);
            assert!(
                printed.contains("cliptag, labels=") && printed.contains("a\\ moving\\ ball"),
                "no cliptag messages printed:\n{printed}"
            );
        }
    }
}
