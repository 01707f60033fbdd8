//! Issue 19, findings 2, 3, 5 and 6: every number a user gives is bounded
//! and named by its flag, and the cheap checks run before planning or any
//! slow loop. Each case used to wrap, hang, abort or exit 0 with a wrong
//! result; each must now exit 2 naming the flag.

mod common;
use common::*;

/// A folder with the CPU profile as `hw.json`.
fn folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(profile("cpu-reference.json"), dir.path().join("hw.json")).unwrap();
    dir
}

const U64_MAX: &str = "18446744073709551615";

/// `kvpr overflow` on the tiny preset with the CPU profile, and `extra`.
fn overflow_tiny(dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "overflow",
        "--model",
        "preset:tiny-mha",
        "--hardware",
        "hw.json",
    ];
    args.extend_from_slice(extra);
    kvpr(&args, dir)
}

#[test]
fn numbers_past_their_range_or_negative_are_refused_naming_the_flag() {
    let dir = folder();
    let d = dir.path();
    let tiny = ["--model", "preset:tiny-mha", "--hardware", "hw.json"];
    let with = |cmd: &str, extra: &[&str]| -> Vec<String> {
        let mut a = vec![cmd.to_string()];
        a.extend(tiny.iter().chain(extra).map(|s| s.to_string()));
        a
    };
    let plan = [
        "--batch",
        "1",
        "--prompt-len",
        "4",
        "--gen-len",
        "4",
        "--json",
    ];
    let cases: Vec<(Vec<String>, &str)> = vec![
        // Wrapped to 0 timed steps and printed a table of zeros.
        (
            with("bench", &["--steps", U64_MAX, "--warmup", "1"]),
            "--steps",
        ),
        (with("bench", &["--steps", "-1"]), "--steps"),
        (with("bench", &["--warmup", "-3"]), "--warmup"),
        // Dumped a raw LP "Infeasible".
        (with("bench", &["--batch", "4294967297"]), "--batch"),
        // Wrote a plan that `simulate` then refused.
        (
            with(
                "plan",
                &["--batch", "65537", "--prompt-len", "4", "--gen-len", "4"],
            ),
            "--batch",
        ),
        (
            with("plan", &[&plan[..], &["--block-tokens", "0"]].concat()),
            "--block-tokens",
        ),
        // The product wrapped and 16 GiB were allocated.
        (with("overflow", &["--kv-blocks", U64_MAX]), "--kv-blocks"),
        // Never ended.
        (with("overflow", &["--repeat", U64_MAX]), "--repeat"),
        (
            with(
                "overflow",
                &[
                    "--requests",
                    "2000000",
                    "--input-len",
                    "8",
                    "--output-len",
                    "4",
                ],
            ),
            "--requests",
        ),
        (
            with("run", &["--prompt", "hi", "--max-new-tokens", "-1"]),
            "--max-new-tokens",
        ),
        // Reached the sampler as an infinite 1/t.
        (
            with("run", &["--prompt", "hi", "--temperature", "1e-45"]),
            "--temperature",
        ),
    ];
    for (args, flag) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = kvpr(&args, d);
        assert_fails(&o, &[flag]);
        let err = stderr(&o);
        assert!(!err.contains("unexpected argument"), "{args:?}: {err}");
        assert!(stdout(&o).is_empty(), "{args:?} printed a result");
    }
}

/// Checked before planning: a generation longer than the model's context
/// (10M tokens were planned before the 512-token model refused them), a
/// prompt too long in bytes to fit (a 50 MB line was tokenized first), and
/// a benchmark whose K/V no machine holds (planned before the memory check).
#[test]
fn cheap_checks_come_before_planning() {
    let dir = folder();
    let d = dir.path();
    let o = kvpr(
        &[
            "run",
            "--model",
            "preset:tiny-mha",
            "--hardware",
            "hw.json",
            "--prompt",
            "hi",
            "--max-new-tokens",
            "10000000",
        ],
        d,
    );
    assert_fails(&o, &["--max-new-tokens 10000000", "context of 512 tokens"]);
    assert!(!stderr(&o).contains("plan:"), "{}", stderr(&o));

    std::fs::write(d.join("big.txt"), "a".repeat(1 << 20)).unwrap();
    let o = kvpr(
        &[
            "run",
            "--model",
            "preset:tiny-mha",
            "--hardware",
            "hw.json",
            "--prompts-file",
            "big.txt",
            "--max-new-tokens",
            "2",
        ],
        d,
    );
    assert_fails(&o, &["prompt 0", "1048576 bytes", "context of 512 tokens"]);

    let o = kvpr(
        &[
            "bench",
            "--model",
            "preset:tiny-mha",
            "--hardware",
            "hw.json",
            "--context-len",
            "16000000",
            "--batch",
            "65536",
            "--steps",
            "1",
            "--warmup",
            "0",
        ],
        d,
    );
    assert_fails(&o, &["--context-len 16000000 with --batch 65536", "needs"]);
}

/// A trace arrival a replay would sleep until forever is refused by name.
#[test]
fn a_far_future_arrival_is_refused() {
    let dir = folder();
    let d = dir.path();
    std::fs::write(
        d.join("t.jsonl"),
        "{\"arrival_s\": 1e308, \"input_len\": 8, \"output_len\": 4}\n",
    )
    .unwrap();
    let o = overflow_tiny(d, &["--trace", "t.jsonl"]);
    assert_fails(&o, &["t.jsonl:1:", "arrival_s", "86400"]);
}

/// Finding 6: where no share of the device would do, overflow names the
/// flags that can help instead of "a fraction of at least 1.333", which
/// --kv-memory-fraction itself rejects.
#[test]
fn overflow_never_suggests_a_share_above_one() {
    let dir = folder();
    let o = overflow_tiny(
        dir.path(),
        &[
            "--policy",
            "recompute",
            // The weights (515 KiB), the engine's buffers (899 KiB) and one
            // block of pool (the longest request needs 5).
            "--device-memory",
            "1440KiB",
            "--kv-memory-fraction",
            "1",
        ],
    );
    assert_fails(&o, &["--device-memory or --kv-blocks 5"]);
    assert!(
        !stderr(&o).contains("a fraction of at least"),
        "{}",
        stderr(&o)
    );
}

/// Finding 9: `--device-memory` takes off what the weights really take on
/// the device (a tied embedding once, the norms too), not a formula that
/// counted the embedding twice for a tied model.
#[test]
fn device_memory_counts_the_weights_as_allocated() {
    let dir = folder();
    let model =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/llama-gqa-tied");
    let s = plans::ModelSpec::from_hf_config(&model.join("config.json")).unwrap();
    assert!(s.tie_embeddings && s.arch.is_plain());
    let (l, h, v) = (s.n_layers as u64, s.hidden_size as u64, s.vocab_size as u64);
    let params = l * (s.layer_params() + 2 * h) + v * h + h;
    let old = l * s.layer_params() + 2 * v * h;
    assert_ne!(params, old);
    let o = kvpr(
        &[
            "overflow",
            "--model",
            model.to_str().unwrap(),
            "--hardware",
            "hw.json",
            "--device-memory",
            "1KiB",
        ],
        dir.path(),
    );
    let want = format!("the weights alone take {}", plans::human_bytes(4 * params));
    assert_fails(&o, &["--device-memory", &want]);
}

/// Finding 9: `--kv-memory-fraction` is a share of the device memory left
/// after the weights and the engine's buffers besides its pool (gathered
/// K/V, staged `X`, a prefill's own buffers), so at a share of 1 the weights
/// and the whole engine fit `--device-memory`. Before, the pool alone took
/// all of it, and the buffers came on top. Too little memory for the
/// buffers is refused, naming them.
#[test]
fn the_whole_serving_engine_fits_device_memory() {
    let dir = folder();
    let m: u64 = 3 << 20;
    for policy in ["swap", "offload"] {
        let o = overflow_tiny(
            dir.path(),
            &[
                "--policy",
                policy,
                "--device-memory",
                "3MiB",
                "--kv-memory-fraction",
                "1",
                "--json",
                "s.json",
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("s.json")).unwrap())
                .unwrap();
        let weights = v["weights_bytes"].as_u64().unwrap();
        let run = &v["runs"][0];
        let engine = run["engine_bytes"].as_u64().unwrap();
        let blocks = run["capacity_blocks"].as_u64().unwrap();
        assert!(weights > 0 && engine > 0 && blocks > 0, "{v}");
        assert!(
            weights + engine <= m,
            "{policy}: {weights} + {engine} > {m}"
        );
    }
    let o = overflow_tiny(dir.path(), &["--device-memory", "1MiB"]);
    assert_fails(
        &o,
        &["--device-memory 1.00 MiB", "the serving engine's buffers"],
    );
}
