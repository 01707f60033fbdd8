//! The CUDA kernels: CUDA C under `kernels/cuda/`, embedded in the binary,
//! compiled by NVRTC on first use for the device's compute capability, and
//! cached on disk next to the other caches (`~/.cache/kvpr/kernels/`).
//!
//! [`compile_kernels`] is the one compile path: the runtime calls it for
//! `sm_XY` of its device, and the kernel compile test (and `kvpr selftest`)
//! calls it for every arch in [`KERNEL_ARCHS`] with no GPU at all, since NVRTC
//! needs none. ptxas runs inside NVRTC for a real `sm_XY` target, with spills
//! reported and every ptxas warning an error, so a kernel that spills
//! registers or asks for too much shared memory fails to compile here, not
//! on a GPU.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use cudarc::nvrtc::{CompileOptions, Ptx};

use crate::{KernelError, Result};

/// The archs every kernel must compile for (A100, H100).
pub const KERNEL_ARCHS: [&str; 2] = ["sm_80", "sm_90"];

/// The kernel sources in compile order (the contract: `kernels/cuda/README.md`).
const SOURCES: [(&str, &str); 7] = [
    ("common.cuh", include_str!("../../cuda/common.cuh")),
    ("norm.cu", include_str!("../../cuda/norm.cu")),
    ("rope.cu", include_str!("../../cuda/rope.cu")),
    ("attention.cu", include_str!("../../cuda/attention.cu")),
    ("elementwise.cu", include_str!("../../cuda/elementwise.cu")),
    ("embedding.cu", include_str!("../../cuda/embedding.cu")),
    ("sample.cu", include_str!("../../cuda/sample.cu")),
];

/// Kernel names without their dtype suffix.
pub(crate) const KERNELS: [&str; 12] = [
    "rmsnorm",
    "rope",
    "attn_split",
    "attn_combine",
    "silu_gate",
    "add",
    "add_bias",
    "scatter",
    "scatter_rows",
    "embedding",
    "argmax",
    "sample",
];

/// Dtype suffixes (`Dtype::name`): every kernel exists for each.
pub(crate) const SUFFIXES: [&str; 3] = ["f32", "f16", "bf16"];

/// The one translation unit NVRTC compiles: every source, in order, each
/// preceded by a `#line` so errors name the file.
pub fn kernel_source() -> String {
    let mut s = String::new();
    for (name, text) in SOURCES {
        s.push_str(&format!("#line 1 \"{name}\"\n"));
        s.push_str(text);
        s.push('\n');
    }
    s
}

/// Every `extern "C"` entry point the backend launches.
pub fn kernel_names() -> Vec<String> {
    KERNELS
        .iter()
        .flat_map(|k| SUFFIXES.iter().map(move |d| format!("{k}_{d}")))
        .collect()
}

/// PTX for one arch, and whether it came from the disk cache.
#[derive(Clone, Debug)]
pub struct CompiledKernels {
    pub arch: String,
    pub ptx: String,
    pub cached: bool,
}

/// NVRTC's options for `arch` (`sm_80`, `sm_90`, ...).
fn options(arch: &str) -> CompileOptions {
    CompileOptions {
        options: vec![
            format!("--gpu-architecture={arch}"),
            "--std=c++17".into(),
            "-Xptxas=--warn-on-spills".into(),
            "-Xptxas=--warning-as-error".into(),
        ],
        name: Some("kvpr_kernels.cu".into()),
        ..Default::default()
    }
}

/// The folder compiled kernels are cached in: `$KVPR_KERNEL_CACHE`, else
/// `~/.cache/kvpr/kernels` (None without a home: no cache).
pub fn default_kernel_cache() -> Option<PathBuf> {
    std::env::var_os("KVPR_KERNEL_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kvpr/kernels")))
}

fn cache_path(base: &Path, arch: &str, src: &str) -> PathBuf {
    let mut h = std::hash::DefaultHasher::new();
    (src, arch, env!("CARGO_PKG_VERSION")).hash(&mut h);
    base.join(format!("kvpr-{arch}-{:016x}.ptx", h.finish()))
}

/// Compiles every kernel for `arch` through NVRTC (or reads the PTX this
/// same source compiled to before, from [`default_kernel_cache`]). Errors
/// carry NVRTC's log.
pub fn compile_kernels(arch: &str) -> Result<CompiledKernels> {
    compile_kernels_in(arch, default_kernel_cache().as_deref())
}

/// [`compile_kernels`] with the cache folder given (None: no cache).
pub fn compile_kernels_in(arch: &str, cache_dir: Option<&Path>) -> Result<CompiledKernels> {
    let valid = arch
        .strip_prefix("sm_")
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric()));
    if !valid {
        return Err(KernelError::Compile {
            arch: arch.to_string(),
            log: "the arch must look like sm_90".into(),
        });
    }
    let src = kernel_source();
    let cache = cache_dir.map(|d| cache_path(d, arch, &src));
    if let Some(ptx) = cache.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
        if ptx.contains(".entry") {
            return Ok(CompiledKernels {
                arch: arch.to_string(),
                ptx,
                cached: true,
            });
        }
    }
    // SAFETY: the probe only tries to dlopen libnvrtc.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(KernelError::MissingLibrary {
            device: format!("NVRTC for {arch}"),
            library: "NVRTC (libnvrtc.so.13)",
        });
    }
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(&src, options(arch)).map_err(|e| {
        let log = match &e {
            cudarc::nvrtc::CompileError::CompileError { log, .. } => {
                log.to_string_lossy().into_owned()
            }
            other => format!("{other:?}"),
        };
        KernelError::Compile {
            arch: arch.to_string(),
            log,
        }
    })?;
    let ptx = ptx.to_src();
    // A cache we cannot write costs a compile next time, nothing more.
    if let Some(p) = &cache {
        if p.parent()
            .is_some_and(|d| std::fs::create_dir_all(d).is_ok())
        {
            let _ = plans::write_atomic(p, ptx.as_bytes());
        }
    }
    Ok(CompiledKernels {
        arch: arch.to_string(),
        ptx,
        cached: false,
    })
}

/// Loads compiled kernels into a context.
pub(crate) fn load(
    ctx: &std::sync::Arc<cudarc::driver::CudaContext>,
    k: &CompiledKernels,
) -> std::result::Result<std::sync::Arc<cudarc::driver::CudaModule>, cudarc::driver::DriverError> {
    ctx.load_module(Ptx::from_src(k.ptx.clone()))
}
