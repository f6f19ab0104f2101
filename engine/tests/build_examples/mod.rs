//! Builds this package's examples the way the running test was built: same target directory
//! and profile (and `--target` triple, when there is one), so that the binaries a test starts
//! are current (a no-op when `cargo test` just built them). Shared by `examples.rs` and
//! `cluster.rs`; not a test target itself (cargo only takes `tests/*.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `cargo build --quiet ARGS` for this package into the test's own target directory and
/// profile; returns the directory the example binaries are in.
pub(crate) fn build_examples(args: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test>-HASH
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let profile = profile_dir.file_name().and_then(|n| n.to_str()).expect("profile name");
    let above = profile_dir.parent().expect("the target directory");
    // Cargo keeps `.rustc_info.json` (and `CACHEDIR.TAG`) at the root of every target
    // directory; without them, `above` is a target triple's directory inside it.
    let is_root = ["CACHEDIR.TAG", ".rustc_info.json"].iter().any(|f| above.join(f).exists());
    let (target_dir, triple) = if is_root {
        (above, None)
    } else {
        (above.parent().expect("target dir"), above.file_name().and_then(|n| n.to_str()))
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet"])
        .args(args)
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    if let Some(t) = triple {
        cmd.args(["--target", t]);
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build {}: {status}", args.join(" "));
    profile_dir.join("examples")
}
