//! `kvpr selftest`: every backend op against its scalar twin, the kernels'
//! NVRTC compile, and whole synthetic models under every schedule against the
//! CPU backend. One table; exit 1 on any mismatch (2 on a usage error or a
//! device that cannot be opened).

use std::path::PathBuf;

use anyhow::Context;

use crate::fmt;

#[derive(clap::Args)]
pub struct SelftestArgs {
    /// cpu, or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype: f32, f16 or bf16 (default: the backend's own: f32 on
    /// the CPU, f16 on CUDA).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Seed of the random inputs and weights.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Only the ops (skip the whole-model checks).
    #[arg(long)]
    pub ops_only: bool,
    /// Also write the table here (markdown).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The synthetic models checked whole: MHA, GQA, a Llama-2-7B-shaped model
/// at small width, and one with every architecture option (biases, q/k
/// norms, explicit head_dim, sliding window, llama3 RoPE).
const MODELS: [&str; 4] = ["tiny-mha", "tiny-gqa", "llama-2-7b-tiny", "tiny-variants"];

/// Runs the checks; `Ok(false)` when any failed.
pub fn run(args: &SelftestArgs) -> anyhow::Result<bool> {
    super::check_io(&[("--out", args.out.as_deref())], &[])?;
    let be = super::backend_from_flags(&args.device, args.dtype.as_deref(), None)?;
    eprintln!("selftest on {}", be.name());
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut ok = true;
    let mut row = |what: &str, shape: String, err: String, tol: String, pass: bool| {
        ok &= pass;
        let verdict = if pass { "ok" } else { "FAIL" };
        rows.push(vec![what.into(), shape, err, tol, verdict.into()]);
    };

    // The kernels compile (on CUDA the backend has just compiled them for its
    // own arch; here every arch CI checks, when NVRTC is at hand).
    if !be.is_cuda() {
        for arch in kernels::KERNEL_ARCHS {
            match kernels::compile_kernels(arch) {
                Ok(k) => {
                    let missing = kernels::kernel_names()
                        .into_iter()
                        .filter(|n| !k.ptx.contains(&format!(".entry {n}(")))
                        .count();
                    let how = if k.cached { "cached PTX" } else { "NVRTC" };
                    row(
                        "compile",
                        format!("{arch} ({how})"),
                        format!("{missing} missing"),
                        "0".into(),
                        missing == 0,
                    );
                }
                Err(kernels::KernelError::MissingLibrary { library, .. }) => {
                    eprintln!("note: {library} not found; the kernel compile check is skipped");
                    break;
                }
                Err(e) => row("compile", arch.into(), e.to_string(), "-".into(), false),
            }
        }
    }

    eprintln!("ops against their twins...");
    for r in kernels::selftest::check_ops(&be, args.seed).context("running the ops")? {
        row(
            r.op,
            r.shape,
            format!("{:.2e}", r.error),
            format!("{:.0e}", r.tolerance),
            r.pass,
        );
    }
    if !args.ops_only {
        for preset in MODELS {
            eprintln!("model {preset} under every schedule...");
            let checks = runtime::selftest::check_model(&be, preset, 24, 8)
                .with_context(|| format!("checking the synthetic model {preset}"))?;
            for c in checks {
                let tokens = match c.near_ties {
                    0 => format!("{}/{} tokens", c.tokens_matched, c.steps),
                    t => format!("{}/{} tokens, {t} near-ties", c.tokens_matched, c.steps),
                };
                row(
                    "model",
                    format!("{} {}: {tokens}", c.model, c.schedule),
                    format!("{:.2e}", c.logit_error),
                    format!("{:.0e}", c.tolerance),
                    c.pass,
                );
            }
        }
    }
    let table = fmt::table(&["check", "shape", "error", "tolerance", "result"], &rows);
    let failed = rows.iter().filter(|r| r[4] != "ok").count();
    let summary = format!(
        "{} checks on {}: {} passed, {failed} failed\n",
        rows.len(),
        be.name(),
        rows.len() - failed
    );
    print!("{table}\n{summary}");
    if let Some(path) = &args.out {
        plans::write_atomic(path, format!("{table}\n{summary}").as_bytes())
            .with_context(|| format!("writing --out {}", path.display()))?;
    }
    Ok(ok)
}
