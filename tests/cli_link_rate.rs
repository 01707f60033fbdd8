//! Reliability finding 1: a link rate the CPU backend cannot pace panicked a
//! worker thread and left the main thread waiting forever. Now it is refused
//! up front, naming the flag.

mod common;
use common::*;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Runs kvpr in `dir`; kills it and fails the test if it has not exited
/// after two minutes (a hang detector, not a timing assertion).
fn kvpr_or_hang(args: &[&str], dir: &std::path::Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvpr"))
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the kvpr binary runs");
    for _ in 0..1200 {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("kvpr {args:?} hung");
}

#[test]
fn run_refuses_a_link_rate_it_cannot_pace_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let hw = profile("cpu-reference.json").display().to_string();
    for rate in ["1e-30", "1e-20", "0", "-1", "NaN", "inf"] {
        let o = kvpr_or_hang(
            &[
                "run",
                "--model",
                "preset:tiny-mha",
                "--hardware",
                &hw,
                "--prompt",
                "hi",
                "--max-new-tokens",
                "2",
                &format!("--link-gbps={rate}"),
            ],
            dir.path(),
        );
        assert_fails(&o, &["--link-gbps", "GB/s"]);
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
}

#[test]
fn calibrate_refuses_a_link_rate_it_cannot_pace_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let o = kvpr_or_hang(
        &["calibrate", "--quick", "--link-gbps", "1e-30"],
        dir.path(),
    );
    assert_fails(&o, &["--link-gbps", "1e-30"]);
}
