use super::*;
use crate::ModelSpec;

/// Writes a config.json with `extra` keys merged into a small Llama config
/// and reads it.
fn spec_with(model_type: &str, extra: &str) -> Result<ModelSpec> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.json");
    let comma = if extra.trim().is_empty() { "" } else { "," };
    std::fs::write(
        &p,
        format!(
            r#"{{"model_type":"{model_type}","hidden_size":64,"num_attention_heads":4,"num_key_value_heads":2,
               "num_hidden_layers":2,"intermediate_size":128,"vocab_size":320,
               "max_position_embeddings":64,"rms_norm_eps":1e-6{comma}{extra}}}"#
        ),
    )
    .unwrap();
    ModelSpec::from_hf_config(&p)
}

fn refused(model_type: &str, extra: &str, key: &str) -> String {
    let e = spec_with(model_type, extra).unwrap_err();
    assert!(matches!(e, PlansError::Unsupported { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains(key) && msg.contains("config.json"), "{msg}");
    msg
}

#[test]
fn plain_llama_has_a_plain_arch_and_serialises_as_before() {
    let s = spec_with("llama", "").unwrap();
    assert!(s.arch.is_plain());
    assert!(!serde_json::to_string(&s).unwrap().contains("arch"));
    assert_eq!(s.rope_theta, 1e4);
}

#[test]
fn families_resolve_their_options() {
    let q2 = spec_with(
        "qwen2",
        r#""use_sliding_window":false,"sliding_window":4096,"max_window_layers":28"#,
    )
    .unwrap();
    assert_eq!(
        (
            q2.arch.kind,
            q2.arch.qkv_bias,
            q2.arch.o_bias,
            q2.arch.sliding_window
        ),
        (ArchKind::Qwen2, true, false, None)
    );
    let q3 = spec_with("qwen3", r#""head_dim":24,"attention_bias":false"#).unwrap();
    assert_eq!(
        (q3.arch.qk_norm, q3.arch.qkv_bias, q3.head_dim),
        (true, false, 24)
    );
    let m = spec_with("mistral", r#""sliding_window":6"#).unwrap();
    assert_eq!(m.arch.sliding_window, Some(6));
    let l = spec_with("llama", r#""attention_bias":true,"mlp_bias":true"#).unwrap();
    assert!(l.arch.qkv_bias && l.arch.o_bias && l.arch.mlp_bias);
    assert!(
        l.arch.describe().contains("MLP bias"),
        "{}",
        l.arch.describe()
    );
}

#[test]
fn rope_parameters_carry_the_base_and_the_type() {
    let s = spec_with(
        "llama",
        r#""rope_parameters":{"rope_type":"linear","factor":2.0,"rope_theta":500000.0}"#,
    )
    .unwrap();
    assert_eq!(s.rope_theta, 5e5);
    assert_eq!(
        s.arch.rope_scaling,
        Some(RopeScaling::Linear { factor: 2.0 })
    );
    let d = spec_with(
        "llama",
        r#""rope_parameters":{"rope_type":"default","rope_theta":1000.0}"#,
    )
    .unwrap();
    assert!(d.arch.is_plain());
    assert_eq!(d.rope_theta, 1e3);
    // `type` as older configs spell it.
    let t = spec_with("llama", r#""rope_scaling":{"type":"linear","factor":4.0}"#).unwrap();
    assert_eq!(
        t.arch.rope_scaling,
        Some(RopeScaling::Linear { factor: 4.0 })
    );
}

#[test]
fn llama3_keeps_high_frequencies_and_divides_low_ones() {
    // Llama-3.1-8B's settings.
    let s = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
    let (plain, _) = RopeScaling::inv_freq(None, 5e5, 128);
    let (scaled, af) = RopeScaling::inv_freq(Some(&s), 5e5, 128);
    assert_eq!(af, 1.0);
    assert_eq!(scaled[0], plain[0]);
    assert_eq!(scaled[63], plain[63] / 8.0);
    // Between the two wavelengths, the ramp lies strictly between.
    let mid = (0..64)
        .filter(|&i| scaled[i] < plain[i] && scaled[i] > plain[i] / 8.0)
        .count();
    assert!(mid > 0);
}

#[test]
fn yarn_follows_transformers_defaults() {
    let s = spec_with(
        "llama",
        r#""rope_scaling":{"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":16}"#,
    )
    .unwrap();
    match s.arch.rope_scaling.clone().unwrap() {
        RopeScaling::Yarn {
            factor,
            attention_factor,
            beta_fast,
            beta_slow,
            truncate,
            ..
        } => {
            // With an original context given, the factor is the ratio 64 / 16.
            assert_eq!(factor, 4.0);
            assert!((attention_factor - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
            assert_eq!((beta_fast, beta_slow, truncate), (32.0, 1.0, true));
        }
        other => panic!("{other:?}"),
    }
    let (plain, _) = RopeScaling::inv_freq(None, 1e4, 16);
    let (yarn, af) = RopeScaling::inv_freq(s.arch.rope_scaling.as_ref(), 1e4, 16);
    assert!(af > 1.0);
    // Fast frequencies extrapolate (kept), slow ones interpolate (divided).
    assert_eq!(yarn[0], plain[0]);
    assert!((yarn[7] / (plain[7] / 4.0) - 1.0).abs() < 1e-6);
}

/// Dynamic NTK: the table is the plain one (the kernel rescales per row),
/// the context is `factor` times `max_position_embeddings`, and a factor
/// below 1 (which would shrink the base) is refused by name.
#[test]
fn dynamic_ntk_resolves_and_extends_the_context() {
    for key in ["rope_scaling", "rope_parameters"] {
        let s = spec_with(
            "llama",
            &format!(r#""{key}":{{"rope_type":"dynamic","factor":2.5}}"#),
        )
        .unwrap();
        assert_eq!(
            s.arch.rope_scaling,
            Some(RopeScaling::Dynamic {
                factor: 2.5,
                original_max_position_embeddings: 64
            })
        );
        assert_eq!(s.max_context, 160);
        assert!(s.arch.describe().contains("dynamic NTK RoPE x2.5"));
        let (plain, _) = RopeScaling::inv_freq(None, 1e4, 16);
        assert_eq!(
            RopeScaling::inv_freq(s.arch.rope_scaling.as_ref(), 1e4, 16),
            (plain, 1.0)
        );
        let back: ModelSpec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
    let e = spec_with("llama", r#""rope_scaling":{"type":"dynamic","factor":0.5}"#)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rope_scaling.factor") && e.contains("below 1"),
        "{e}"
    );
    let e = spec_with("llama", r#""rope_scaling":{"type":"dynamic"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("rope_scaling.factor"), "{e}");
}

#[test]
fn every_function_changing_key_is_implemented_or_refused_by_name() {
    refused(
        "llama",
        r#""rope_scaling":{"rope_type":"longrope","factor":2.0}"#,
        "longrope",
    );
    refused("llama", r#""hidden_act":"gelu""#, "hidden_act");
    refused(
        "llama",
        r#""partial_rotary_factor":0.5"#,
        "partial_rotary_factor",
    );
    refused(
        "llama",
        r#""attn_logit_softcapping":50.0"#,
        "attn_logit_softcapping",
    );
    refused(
        "llama",
        r#""final_logit_softcapping":30.0"#,
        "final_logit_softcapping",
    );
    refused(
        "llama",
        r#""query_pre_attn_scalar":256"#,
        "query_pre_attn_scalar",
    );
    refused(
        "llama",
        r#""quantization_config":{"quant_method":"awq"}"#,
        "quantization_config",
    );
    refused("qwen2", r#""mlp_bias":true"#, "mlp_bias");
    refused(
        "qwen2",
        r#""use_sliding_window":true,"sliding_window":32,"max_window_layers":1"#,
        "sliding_window",
    );
    refused(
        "mistral",
        r#""sliding_window":8,"layer_types":["full_attention","sliding_attention"]"#,
        "sliding_window",
    );
    let m = refused("gemma2", "", "model_type");
    assert!(m.contains("qwen3"), "{m}");
    // Off values are not refusals.
    spec_with(
        "llama",
        r#""attn_logit_softcapping":null,"partial_rotary_factor":1.0,"hidden_act":"silu""#,
    )
    .unwrap();
}

#[test]
fn llama3_needs_its_original_context_and_yarn_defaults_to_the_model_s() {
    let e = spec_with(
        "llama",
        r#""rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("rope_scaling.original_max_position_embeddings") && e.contains("missing"),
        "{e}"
    );
    let y = spec_with(
        "llama",
        r#""rope_scaling":{"rope_type":"yarn","factor":2.0}"#,
    )
    .unwrap();
    match y.arch.rope_scaling {
        Some(RopeScaling::Yarn {
            original_max_position_embeddings,
            factor,
            ..
        }) => {
            assert_eq!((original_max_position_embeddings, factor), (64, 2.0));
        }
        other => panic!("{other:?}"),
    }
}
