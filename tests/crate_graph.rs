//! The crate graph keeps the pipeline's direction: `plans` is the contract
//! every stage shares, `kernels` moves and computes numbers, `scheduler` and
//! `profiler` build on those, `runtime` does what a plan decided, `serving`
//! runs many requests on the runtime's paged engine. No stage
//! crate depends (normally or in its tests) on a later stage; only the root
//! package `kvpr` sees them all.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Each stage crate and the workspace crates it may depend on.
const ALLOWED: &[(&str, &[&str])] = &[
    ("plans", &[]),
    ("kernels", &["plans"]),
    ("scheduler", &["plans"]),
    ("profiler", &["plans", "kernels"]),
    ("runtime", &["plans", "kernels", "scheduler"]),
    ("serving", &["plans", "kernels", "scheduler", "runtime"]),
];

fn workspace_deps() -> BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    let packages = meta["packages"].as_array().expect("packages");
    let names: BTreeSet<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect();
    let mut graph = BTreeMap::new();
    for p in packages {
        let name = p["name"].as_str().unwrap_or_default().to_string();
        let (mut normal, mut dev) = (BTreeSet::new(), BTreeSet::new());
        for d in p["dependencies"].as_array().into_iter().flatten() {
            let dep = d["name"].as_str().unwrap_or_default().to_string();
            if !names.contains(&dep) {
                continue;
            }
            if d["kind"].as_str() == Some("dev") {
                dev.insert(dep);
            } else {
                normal.insert(dep);
            }
        }
        graph.insert(name, (normal, dev));
    }
    graph
}

#[test]
fn stage_crates_depend_only_on_earlier_stages() {
    let graph = workspace_deps();
    for (krate, allowed) in ALLOWED {
        let (normal, dev) = graph
            .get(*krate)
            .unwrap_or_else(|| panic!("{krate} is a workspace member"));
        for dep in normal.iter().chain(dev) {
            assert!(
                allowed.contains(&dep.as_str()),
                "{krate} depends on {dep}, a later stage (allowed: {allowed:?})"
            );
        }
    }
    // The runtime's library does what a plan decided: it does not plan.
    assert!(!graph["runtime"].0.contains("scheduler"));
}

#[test]
fn stage_crates_sit_at_the_top_level() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (krate, _) in ALLOWED {
        assert!(root.join(krate).join("Cargo.toml").is_file(), "{krate}/");
    }
    assert!(!root.join("crates").exists(), "crates/ is gone");
    assert!(root.join("plans/hardware/a100-pcie4.json").is_file());
}

/// `plans` is light: neither it (default features) nor the pure scheduler
/// compiles a tensor library. The GGUF reader sits behind `plans`' `gguf` feature.
#[test]
fn the_scheduler_compiles_no_tensor_library() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for krate in ["plans", "scheduler"] {
        let out = Command::new(&cargo)
            .args(["tree", "--offline", "-e", "normal", "-p", krate])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo tree runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tree = String::from_utf8_lossy(&out.stdout);
        for lib in ["candle", "tokenizers", "gemm "] {
            assert!(!tree.contains(lib), "{krate} depends on {lib}:\n{tree}");
        }
    }
}
