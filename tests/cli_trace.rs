//! `kvpr run --trace` and `kvpr simulate --trace` end to end: a measured
//! timeline written by a run on a paced link, and drawn under the prediction.

mod common;
use common::*;

use plans::{Trace, TraceStream};

/// Runs the tiny MHA preset on a 2 GB/s link with a trace of `steps`.
fn traced_run(dir: &std::path::Path, schedule: &str, steps: &str) -> Trace {
    let hw = profile("cpu-reference.json").display().to_string();
    let prompt = "kvpr recomputes part of the context while the rest crosses the link. ".repeat(2);
    let o = kvpr(
        &[
            "run",
            "--model",
            "preset:tiny-mha",
            "--hardware",
            &hw,
            "--link-gbps",
            "2",
            "--schedule",
            schedule,
            "--prompt",
            &prompt,
            "--max-new-tokens",
            "4",
            "--plan-out",
            "p.json",
            "--trace",
            "t.json",
            "--trace-steps",
            steps,
        ],
        dir,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("wrote t.json"), "{}", stderr(&o));
    Trace::load(&dir.join("t.json")).unwrap()
}

#[test]
fn run_trace_records_every_layer_on_both_streams_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let t = traced_run(dir.path(), "chunked", "first,last");
    assert_eq!(t.model, "tiny-mha");
    assert_eq!(t.schedule, plans::Schedule::Chunked);
    assert!(t.device.contains("paced to 2 GB/s"), "{}", t.device);
    // 4 new tokens: 3 decode steps, the first and the last traced.
    assert_eq!(t.steps.iter().map(|s| s.step).collect::<Vec<_>>(), [0, 2]);
    assert_eq!(t.steps[1].context, t.steps[0].context + 2);
    for st in &t.steps {
        for layer in 0..2 {
            for stream in [TraceStream::Copy, TraceStream::Compute] {
                assert!(
                    st.ops
                        .iter()
                        .any(|o| o.stream == stream && o.layer == Some(layer)),
                    "step {}: no {} op for layer {layer}",
                    st.step,
                    stream.name()
                );
            }
        }
        for o in &st.ops {
            assert!(o.start_us <= o.end_us, "{o:?}");
            assert!(o.end_us <= st.step_us, "{o:?} ends after the step");
        }
        // A stream runs its ops one after another.
        for stream in [
            TraceStream::Copy,
            TraceStream::Compute,
            TraceStream::Writeback,
        ] {
            let ops: Vec<_> = st.ops.iter().filter(|o| o.stream == stream).collect();
            for w in ops.windows(2) {
                assert!(
                    w[0].end_us <= w[1].start_us + 1e-3,
                    "{} ops overlap: {:?} then {:?}",
                    stream.name(),
                    w[0],
                    w[1]
                );
            }
        }
    }
}

#[test]
fn simulate_trace_draws_predicted_and_measured_lanes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let t = traced_run(d, "chunked", "last");
    let hw = profile("cpu-reference.json").display().to_string();
    let o = kvpr(
        &[
            "simulate",
            "--plan",
            "p.json",
            "--hardware",
            &hw,
            "--trace",
            "t.json",
            "--svg",
            "t.svg",
        ],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("measured (step 2)"), "{out}");
    assert!(out.contains("measured / predicted"), "{out}");
    assert!(
        out.contains(&format!("at context {}", t.steps[0].context)),
        "{out}"
    );
    let svg = std::fs::read_to_string(d.join("t.svg")).unwrap();
    for label in [
        "predicted copy",
        "predicted compute",
        "measured copy",
        "measured compute",
        "measured writeback",
    ] {
        assert!(svg.contains(label), "the SVG lacks the lane {label:?}");
    }
}

#[test]
fn a_bad_trace_names_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    traced_run(d, "transfer", "last");
    let hw = profile("cpu-reference.json").display().to_string();
    let text = std::fs::read_to_string(d.join("t.json")).unwrap();
    std::fs::write(
        d.join("bad.json"),
        text.replacen("\"start_us\"", "\"begin_us\"", 1),
    )
    .unwrap();
    let o = kvpr(
        &[
            "simulate",
            "--plan",
            "p.json",
            "--hardware",
            &hw,
            "--trace",
            "bad.json",
        ],
        d,
    );
    assert_fails(&o, &["--trace", "bad.json:", "steps[0].ops[0]", "begin_us"]);
}

#[test]
fn trace_steps_past_the_run_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hw = profile("cpu-reference.json").display().to_string();
    let o = kvpr(
        &[
            "run",
            "--model",
            "preset:tiny-mha",
            "--hardware",
            &hw,
            "--prompt",
            "hi",
            "--max-new-tokens",
            "3",
            "--trace",
            "t.json",
            "--trace-steps",
            "5",
        ],
        dir.path(),
    );
    assert_fails(&o, &["--trace-steps", "5"]);
    assert!(!dir.path().join("t.json").exists());
}
