//! The Debian package (`./x package`): built by cargo-deb from the binaries this test
//! run built, unpacked into a temporary directory, and used from there: GStreamer loads
//! the packaged plugin (and only it), the packaged CLI checks the packaged configuration,
//! and the control files, the systemd unit and the user it runs as hold together.

use std::path::{Path, PathBuf};
use std::process::Command;

use cliptag_end_to_end::repo_root;

fn cargo_deb() -> PathBuf {
    match std::env::var_os("CLIPTAG_TEST_CARGO_DEB") {
        Some(p) => PathBuf::from(p),
        None => {
            panic!("CLIPTAG_TEST_CARGO_DEB is not set: `./x test` installs cargo-deb and sets it")
        }
    }
}

fn run(command: &mut Command) -> String {
    let out = command.output().expect("start the command");
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_package_unpacked_runs_its_plugin_its_cli_and_its_configuration() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    // The dev-profile binaries `./x test` builds before the tests (`cargo build -p
    // cliptag-cli -p gst-cliptag`; `./x package` builds release): packaging them checks
    // the layout without another build.
    run(Command::new(cargo_deb())
        .current_dir(repo_root())
        .args(["-q", "-p", "cliptag-cli", "--no-build", "--profile", "dev"])
        .args(["--multiarch", "foreign", "--strip", "--fast", "-o"])
        .arg(dir.path()));
    let deb = std::fs::read_dir(dir.path())
        .expect("the output directory")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb in the output directory");

    let field = |name: &str| run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name));
    assert_eq!(field("Package").trim(), "cliptag");
    let depends = field("Depends");
    for needed in ["libgstreamer1.0-0", "gstreamer1.0-plugins-good", "adduser"] {
        assert!(
            depends.contains(needed),
            "Depends lacks {needed}: {depends}"
        );
    }

    let root = dir.path().join("root");
    let control = dir.path().join("control");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));

    // GStreamer finds the plugin where the package puts it, with nothing else on its
    // path: what it inspects is the packaged file.
    let plugin = std::fs::read_dir(root.join("usr/lib"))
        .expect("usr/lib in the package")
        .filter_map(Result::ok)
        .map(|e| e.path().join("gstreamer-1.0"))
        .find(|p| p.join("libgstcliptag.so").is_file())
        .expect("usr/lib/<triplet>/gstreamer-1.0/libgstcliptag.so in the package");
    for element in ["cliptag", "cliptagoverlay"] {
        let inspect = run(Command::new("gst-inspect-1.0")
            .arg(element)
            .env("GST_PLUGIN_SYSTEM_PATH", &plugin)
            .env_remove("GST_PLUGIN_PATH")
            .env("GST_REGISTRY", dir.path().join("registry.bin")));
        assert!(
            inspect.contains(&plugin.join("libgstcliptag.so").display().to_string()),
            "{inspect}"
        );
    }

    // The packaged CLI checks the packaged configuration.
    let cli = root.join("usr/bin/cliptag");
    let config = root.join("etc/cliptag/cliptag.toml");
    let check = run(Command::new(&cli)
        .args(["serve", "--check", "--config"])
        .arg(&config));
    assert!(check.starts_with("config ok: 1 stream(s)"), "{check}");
    assert!(
        read(&control.join("conffiles")).contains("/etc/cliptag/cliptag.toml"),
        "the configuration is not a conffile"
    );

    // The unit runs that CLI on that configuration as the user the postinst creates.
    let unit = read(&root.join("usr/lib/systemd/system/cliptag.service"));
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in the unit"))
            .to_string()
    };
    assert_eq!(
        value("ExecStart"),
        "/usr/bin/cliptag serve --config /etc/cliptag/cliptag.toml"
    );
    assert_eq!(value("User"), "cliptag");
    assert_eq!(value("NoNewPrivileges"), "yes");
    assert!(value("ExecReload").contains("-HUP"));
    let postinst = read(&control.join("postinst"));
    assert!(
        postinst.contains("adduser --system --group") && postinst.contains(" cliptag"),
        "{postinst}"
    );
    // cargo-deb's systemd snippets replaced the placeholder.
    assert!(!postinst.contains("#DEBHELPER#"), "{postinst}");
    assert!(postinst.contains("deb-systemd-helper"), "{postinst}");

    // The model card travels with the model built into the binaries.
    assert_eq!(
        read(&root.join("usr/share/doc/cliptag/model-card.md")),
        read(&repo_root().join("models/cliptag-tiny/README.md"))
    );
}
