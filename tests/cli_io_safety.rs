//! Issue 19, findings 1, 3 and 4: outputs never clobber inputs or each
//! other, every output is checked before any work, and a FIFO as an input
//! is refused instead of blocking. The real binary in temporary folders;
//! every case must exit 2 and leave every file as it was.

mod common;
use common::*;

use std::path::Path;

/// The files of `dir` and their bytes, to compare before and after a run.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect();
    v.sort();
    v
}

fn strs(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Runs `args` in `dir`, which must fail with exit 2 naming `needles` and
/// change no file there.
fn refused(dir: &Path, args: &[&str], needles: &[&str]) {
    let before = snapshot(dir);
    let o = kvpr(args, dir);
    assert_fails(&o, needles);
    assert_eq!(snapshot(dir), before, "{args:?} changed a file");
}

/// A folder holding what the commands read: a model file (any bytes: the
/// check comes before it is read), a hardware profile, a plan, a prompts
/// file and a trace.
fn inputs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("m.gguf"), b"GGUF weights").unwrap();
    std::fs::copy(profile("cpu-reference.json"), d.join("hw.json")).unwrap();
    std::fs::write(d.join("prompts.txt"), b"hello\n").unwrap();
    std::fs::write(
        d.join("trace.jsonl"),
        b"{\"arrival_s\": 0, \"input_len\": 8, \"output_len\": 4}\n",
    )
    .unwrap();
    let o = tiny_plan(d, "hw.json", "plan.json");
    assert!(o.status.success(), "{}", stderr(&o));
    dir
}

/// Finding 1: each output that names an input, or another output, is
/// refused before any work (27/27 runs destroyed a file before).
#[test]
fn an_output_naming_an_input_or_another_output_is_refused() {
    let dir = inputs();
    let d = dir.path();
    let run = |extra: &[&str]| -> Vec<String> {
        let mut a = strs(&["run", "--model", "m.gguf", "--hardware", "hw.json"]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            run(&["--prompt", "hi", "--summary-json", "m.gguf"]),
            vec!["--summary-json", "--model"],
        ),
        (
            run(&["--prompt", "hi", "--summary-json", "./sub/../m.gguf"]),
            vec!["--summary-json", "--model"],
        ),
        (
            run(&["--prompt", "hi", "--plan-out", "hw.json"]),
            vec!["--plan-out", "--hardware"],
        ),
        (
            run(&["--prompts-file", "prompts.txt", "--trace", "prompts.txt"]),
            vec!["--trace", "--prompts-file"],
        ),
        (
            run(&[
                "--prompt",
                "hi",
                "--trace",
                "t.json",
                "--summary-json",
                "t.json",
            ]),
            vec!["--summary-json", "--trace writes too"],
        ),
        (
            strs(&[
                "plan",
                "--model",
                "preset:tiny-mha",
                "--hardware",
                "hw.json",
                "--batch",
                "1",
                "--prompt-len",
                "4",
                "--gen-len",
                "4",
                "--out",
                "hw.json",
            ]),
            vec!["--out", "--hardware"],
        ),
        (
            strs(&[
                "overflow",
                "--model",
                "preset:tiny-mha",
                "--hardware",
                "hw.json",
                "--csv",
                "x",
                "--json",
                "x",
            ]),
            vec!["--json", "--csv writes too"],
        ),
        (
            strs(&[
                "overflow",
                "--model",
                "preset:tiny-mha",
                "--hardware",
                "hw.json",
                "--trace",
                "trace.jsonl",
                "--outputs",
                "trace.jsonl",
            ]),
            vec!["--outputs", "--trace"],
        ),
        (
            strs(&[
                "simulate",
                "--plan",
                "plan.json",
                "--hardware",
                "hw.json",
                "--context-len",
                "4",
                "--svg",
                "plan.json",
            ]),
            vec!["--svg", "--plan"],
        ),
        (
            strs(&[
                "bench",
                "--model",
                "preset:tiny-mha",
                "--hardware",
                "hw.json",
                "--csv",
                "hw.json",
            ]),
            vec!["--csv", "--hardware"],
        ),
    ];
    std::fs::create_dir(d.join("sub")).unwrap();
    for (args, mut needles) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        needles.push("kvpr never writes over");
        refused(d, &args, &needles);
    }
    // Inside a model folder: the summary would land among its files.
    let model_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/llama-mha");
    let inside = model_dir.join("summary.json");
    let o = kvpr(
        &[
            "run",
            "--model",
            model_dir.to_str().unwrap(),
            "--hardware",
            "hw.json",
            "--prompt",
            "hi",
            "--summary-json",
            inside.to_str().unwrap(),
        ],
        d,
    );
    assert_fails(&o, &["--summary-json", "inside the folder --model reads"]);
    assert!(!inside.exists());
}

/// Finding 4: every output is checked before any is written: a summary in a
/// missing folder no longer leaves `--trace` and `--plan-out` behind, a
/// `--plot` under a file no longer leaves the CSV, and a trailing slash is
/// refused.
#[test]
fn every_output_is_checked_before_any_is_written() {
    let dir = inputs();
    let d = dir.path();
    refused(
        d,
        &[
            "run",
            "--model",
            "m.gguf",
            "--hardware",
            "hw.json",
            "--prompt",
            "hi",
            "--trace",
            "t.json",
            "--plan-out",
            "p.json",
            "--summary-json",
            "nodir/s.json",
        ],
        &["--summary-json", "does not exist"],
    );
    refused(
        d,
        &[
            "overflow",
            "--model",
            "preset:tiny-mha",
            "--hardware",
            "hw.json",
            "--csv",
            "o.csv",
            "--plot",
            "prompts.txt/plots",
        ],
        &["--plot", "prompts.txt is not a folder"],
    );
    refused(
        d,
        &[
            "run",
            "--model",
            "m.gguf",
            "--hardware",
            "hw.json",
            "--prompt",
            "hi",
            "--summary-json",
            "new.out/",
        ],
        &["--summary-json", "ends with /"],
    );
}

/// Finding 3: a FIFO as any input is refused at once (each blocked forever,
/// waiting for a writer): `--hardware`, `--plan`, `--prompts-file`, a
/// `--trace`, and `config.json`, `tokenizer.json` or a safetensors file of a
/// model folder.
#[cfg(unix)]
#[test]
fn a_fifo_as_an_input_is_refused_not_waited_on() {
    let mkfifo = |p: &Path| {
        let _ = std::fs::remove_file(p);
        let status = std::process::Command::new("mkfifo")
            .arg(p)
            .status()
            .expect("mkfifo runs");
        assert!(status.success());
    };
    let dir = inputs();
    let d = dir.path();
    for f in ["fifo.json", "fifo.txt"] {
        mkfifo(&d.join(f));
    }
    let plan = [
        "plan",
        "--model",
        "preset:tiny-mha",
        "--batch",
        "1",
        "--prompt-len",
        "4",
        "--gen-len",
        "4",
        "--json",
    ];
    let cases: Vec<Vec<&str>> = vec![
        [&plan[..], &["--hardware", "fifo.json"]].concat(),
        vec![
            "simulate",
            "--plan",
            "fifo.json",
            "--hardware",
            "hw.json",
            "--context-len",
            "4",
        ],
        // A run's trace (was read with no size cap).
        vec![
            "simulate",
            "--plan",
            "plan.json",
            "--hardware",
            "hw.json",
            "--context-len",
            "4",
            "--trace",
            "fifo.json",
        ],
        vec![
            "run",
            "--model",
            "preset:tiny-mha",
            "--hardware",
            "hw.json",
            "--prompts-file",
            "fifo.txt",
        ],
        vec![
            "overflow",
            "--model",
            "preset:tiny-mha",
            "--hardware",
            "hw.json",
            "--trace",
            "fifo.txt",
        ],
    ];
    for args in cases {
        let o = kvpr(&args, d);
        assert_fails(&o, &["fifo", "not a regular file"]);
    }
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/llama-mha");
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        let model = d.join(format!("model-{file}"));
        std::fs::create_dir(&model).unwrap();
        for f in std::fs::read_dir(&fixture).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, model.join(f.file_name().unwrap())).unwrap();
        }
        mkfifo(&model.join(file));
        let o = kvpr(
            &[
                "run",
                "--model",
                model.to_str().unwrap(),
                "--hardware",
                "hw.json",
                "--prompt",
                "hi",
            ],
            d,
        );
        assert_fails(&o, &[file, "not a regular file"]);
    }
}
