//! `kvpr overflow` end to end: the real binary serving many requests when
//! their K/V overflow the cache, on the real SmolLM2 and on an MHA preset.

mod common;
use common::*;

fn json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every policy's runs: each request's greedy output equals the unpressured
/// run's (the CLI checks and exits 2 otherwise; the JSON says so too); with
/// `pressure`, every preempting policy really preempted.
fn assert_runs_match(doc: &serde_json::Value, policies: usize, pressure: bool) {
    let runs = doc["runs"].as_array().unwrap();
    assert_eq!(runs.len(), policies, "{doc}");
    for r in runs {
        assert_eq!(r["outputs_match_unpressured"], true, "{r}");
        assert_eq!(r["requests_differing"], 0, "{r}");
        // What crossed the link, priced at the profile's bandwidth.
        let moved = r["counters"]["bytes_in"].as_u64().unwrap()
            + r["counters"]["bytes_out"].as_u64().unwrap();
        let floor = r["link_floor_s"].as_f64().unwrap();
        assert_eq!(moved > 0, floor > 0.0, "{r}");
        // The overhead is the poster's share of the run spent preempting and
        // resuming: a share, zero exactly when nothing was preempted or
        // resumed (issue 19: the test restated the division).
        let f = |k: &str| r[k].as_f64().unwrap();
        assert!((0.0..1.0).contains(&f("overhead")), "{r}");
        assert!(f("preempt_resume_s") <= f("total_s"), "{r}");
        assert_eq!(f("overhead") > 0.0, f("preempt_resume_s") > 0.0, "{r}");
        assert!(f("vs_unpressured") > 0.0 && f("baseline_s") > 0.0, "{r}");
    }
    let preempted = runs
        .iter()
        .filter(|r| r["policy"] != "offload")
        .all(|r| r["preempted_requests"].as_u64().unwrap() > 0);
    assert!(preempted || !pressure, "no pressure: {doc}");
}

/// Issue 12 on the real model: a trace of text prompts (tokenized), all four
/// policies on a cache of 12 blocks of 4 tokens, with every output file; each
/// request's tokens equal the unpressured run's, and none is lost or
/// duplicated (the outputs file has each id once per run, with all its tokens).
#[test]
fn smollm2_serves_under_every_policy_with_the_unpressured_outputs() {
    let Some(model) = smollm2() else { return };
    let d = tempfile::tempdir().unwrap();
    let hw = profile("cpu-reference.json").display().to_string();
    let prompts = [
        "The capital of France is",
        "Once upon a time, in a small village by the sea,",
        "def fibonacci(n):",
        "The three primary colours are",
        "Water boils at",
    ];
    let trace: String = prompts
        .iter()
        .map(|p| format!("{{\"arrival_s\": 0, \"prompt\": {p:?}, \"output_len\": 10}}\n"))
        .collect();
    std::fs::write(d.path().join("t.jsonl"), trace).unwrap();
    let o = kvpr(
        &[
            "overflow",
            "--model",
            &model,
            "--hardware",
            &hw,
            "--trace",
            "t.jsonl",
            "--block-size",
            "4",
            "--kv-blocks",
            "12",
            "--csv",
            "t.csv",
            "--json",
            "s.json",
            "--outputs",
            "o.jsonl",
            "--plot",
            "plots",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    for p in [
        "recompute",
        "swap",
        "partial",
        "offload",
        "unpressured",
        "p99 ms/tok",
    ] {
        assert!(out.contains(p), "{p}: {out}");
    }
    // All arrive at once: the pressure does not depend on timing.
    assert_runs_match(&json(&d.path().join("s.json")), 4, true);
    let lines = std::fs::read_to_string(d.path().join("o.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // One unpressured run and four policies, 5 requests each, 10 tokens each.
    assert_eq!(rows.len(), 5 * 5);
    for run in ["unpressured", "recompute", "swap", "partial", "offload"] {
        let mut ids: Vec<u64> = rows
            .iter()
            .filter(|r| r["run"] == run)
            .map(|r| {
                assert_eq!(r["tokens"].as_array().unwrap().len(), 10, "{r}");
                r["id"].as_u64().unwrap()
            })
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..5).collect::<Vec<u64>>(), "{run}");
    }
    // The real tokenizer's text: "Paris" follows the first prompt.
    let first = rows
        .iter()
        .find(|r| r["run"] == "swap" && r["id"] == 0)
        .unwrap();
    assert!(first["text"].as_str().unwrap().contains("Paris"), "{first}");
    let csv = std::fs::read_to_string(d.path().join("t.csv")).unwrap();
    assert!(
        csv.starts_with("policy,block_size,kv_fraction,capacity_blocks,t_s,"),
        "{csv}"
    );
    assert!(csv.lines().any(|l| l.starts_with("swap,4,,12,")), "{csv}");
    for f in ["timeseries.svg", "overhead.svg"] {
        let svg = std::fs::read_to_string(d.path().join("plots").join(f)).unwrap();
        assert!(svg.contains("<svg") && svg.contains("offload"), "{f}");
    }
}

/// Issue 12 on a multi-head preset, where recomputing from activations moves
/// fewer bytes: a trace of requests of different lengths, on a paced link,
/// at two block sizes; `partial` and `offload` really recompute. They all
/// arrive at once, so the cache is under pressure whatever the machine's
/// speed (issue 19: with arrivals spread over real time the test passed
/// even when nothing was evicted).
#[test]
fn an_mha_trace_of_ragged_requests_keeps_its_outputs_at_every_block_size() {
    let d = tempfile::tempdir().unwrap();
    let hw = paced_profile(d.path(), 0.2);
    let mut trace = String::new();
    for (input, output) in [(60, 20), (12, 30), (90, 12), (33, 25), (70, 18), (5, 28)] {
        trace.push_str(&format!(
            "{{\"arrival_s\": 0, \"input_len\": {input}, \"output_len\": {output}}}\n"
        ));
    }
    std::fs::write(d.path().join("trace.jsonl"), trace).unwrap();
    let o = kvpr(
        &[
            "overflow",
            "--model",
            "preset:llama-2-7b-tiny",
            "--hardware",
            &hw,
            "--link-gbps",
            "0.2",
            "--trace",
            "trace.jsonl",
            "--block-size",
            "8,16",
            "--kv-memory-fraction",
            "0.4",
            "--partial-share",
            "0.5",
            "--offload-share",
            "0.5",
            "--json",
            "s.json",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let doc = json(&d.path().join("s.json"));
    assert_runs_match(&doc, 8, true);
    // Every run evicted, and partial and offload recomputed from activations.
    for r in doc["runs"].as_array().unwrap() {
        assert!(r["evicted_tokens"].as_u64().unwrap() > 0, "{r}");
        if r["policy"] == "partial" || r["policy"] == "offload" {
            assert!(
                r["counters"]["tokens_recomputed"].as_u64().unwrap() > 0,
                "{r}"
            );
        }
    }
}

/// Bad input is refused before any work, naming the flag or the file's line
/// and the fix; nothing is written.
#[test]
fn overflow_refuses_bad_input_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let hw = profile("cpu-reference.json").display().to_string();
    let base = [
        "overflow",
        "--model",
        "preset:tiny-mha",
        "--hardware",
        hw.as_str(),
    ];
    let with = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        a.extend_from_slice(&["--csv", "t.csv", "--json", "s.json"]);
        kvpr(&a, d.path())
    };
    std::fs::write(
        d.path().join("bad.jsonl"),
        "{\"arrival_s\": 0, \"input_len\": 8, \"output_len\": 4}\n\n{\"arrival_s\": 0, \"input_len\": \"x\"}\n",
    )
    .unwrap();
    let o = with(&["--trace", "bad.jsonl"]);
    assert_fails(&o, &["bad.jsonl:3"]);
    assert!(
        !stderr(&o).contains("loading"),
        "the trace is read before the model"
    );
    // Too small for one request: the smallest capacity that works is named.
    assert_fails(
        &with(&["--kv-memory-fraction", "0.01"]),
        &[
            "--kv-memory-fraction 0.01",
            "smallest capacity that works is 5 blocks",
        ],
    );
    assert_fails(
        &with(&["--kv-blocks", "2", "--policy", "swap"]),
        &["--kv-blocks 2", "smallest capacity that works is 5 blocks"],
    );
    assert_fails(
        &with(&["--policy", "evict"]),
        &["--policy", "recompute, swap, partial or offload"],
    );
    assert_fails(&with(&["--block-size", "0"]), &["--block-size"]);
    assert_fails(
        &with(&["--kv-memory-fraction", "1.5"]),
        &["--kv-memory-fraction"],
    );
    assert_fails(
        &with(&["--workload", "huge"]),
        &["--workload", "poster, ci"],
    );
    std::fs::write(d.path().join("afile"), "x").unwrap();
    assert_fails(&with(&["--plot", "afile"]), &["--plot", "not a folder"]);
    for f in ["t.csv", "s.json"] {
        assert!(
            !d.path().join(f).exists(),
            "{f} was written by a refused run"
        );
    }
}
