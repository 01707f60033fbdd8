//! Values as a checkpoint stores them (little-endian F32, F16 or BF16
//! bytes, e.g. a memory-mapped safetensors tensor), converted to what a
//! backend keeps: f32 on the CPU, the compute dtype on CUDA. One pass from
//! the stored bytes, and on CUDA no host copy at all when the checkpoint is
//! already in the device's dtype ([`staged`]).

use rayon::prelude::*;

use crate::Dtype;

/// Values per rayon task (and per staging chunk): big enough that a task's
/// overhead is nothing next to its work.
const TASK: usize = 1 << 20;

/// One stored value as f32.
fn value(dtype: Dtype, b: &[u8]) -> f32 {
    match dtype {
        Dtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        Dtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
        Dtype::Bf16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
    }
}

/// `bytes` (whole values of `dtype`) as f32, converted on every core into a
/// vector whose pages may be huge pages: the first write to each page of a
/// model's worth of fresh memory costs a fault and a zeroing, which is most
/// of what loading costs on a CPU. A trailing partial value is ignored
/// (callers check the length).
pub fn to_f32(bytes: &[u8], dtype: Dtype) -> Vec<f32> {
    let esz = dtype.bytes();
    let n = bytes.len() / esz;
    let mut values = huge_vec(n);
    values.spare_capacity_mut()[..n]
        .par_chunks_mut(TASK)
        .zip(bytes[..n * esz].par_chunks(TASK * esz))
        .for_each(|(o, b)| {
            for (slot, v) in o.iter_mut().zip(b.chunks_exact(esz)) {
                slot.write(value(dtype, v));
            }
        });
    // SAFETY: the chunks above paired every one of the first `n` slots with
    // a whole value of `bytes` and wrote it.
    unsafe { values.set_len(n) };
    values
}

/// `values` as little-endian bytes of `dtype` (rounding to nearest even).
pub(crate) fn encode(dtype: Dtype, values: &[f32]) -> Vec<u8> {
    let esz = dtype.bytes();
    let mut out = vec![0u8; values.len() * esz];
    out.par_chunks_mut(TASK * esz)
        .zip(values.par_chunks(TASK))
        .for_each(|(o, d)| {
            for (o, &v) in o.chunks_exact_mut(esz).zip(d) {
                match dtype {
                    Dtype::F32 => o.copy_from_slice(&v.to_le_bytes()),
                    Dtype::F16 => o.copy_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                    Dtype::Bf16 => o.copy_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
                }
            }
        });
    out
}

/// Hands `bytes` (values of `src`) to `copy` as bytes of `dst`, each piece
/// with its byte offset in the destination: the stored bytes themselves, in
/// one piece, when `dst == src` (no host copy: a CUDA upload reads the
/// checkpoint's pages directly); else converted `chunk` values at a time,
/// so the host holds at most one chunk however large the tensor.
pub(crate) fn staged(
    dst: Dtype,
    src: Dtype,
    bytes: &[u8],
    chunk: usize,
    mut copy: impl FnMut(usize, &[u8]) -> crate::Result<()>,
) -> crate::Result<()> {
    if dst == src {
        return copy(0, bytes);
    }
    let (chunk, se, de) = (chunk.max(1), src.bytes(), dst.bytes());
    for (i, piece) in bytes.chunks(chunk * se).enumerate() {
        copy(i * chunk * de, &encode(dst, &to_f32(piece, src)))?;
    }
    Ok(())
}

/// The values per staging chunk of a conversion upload (24 MiB of f32).
pub(crate) const STAGE_CHUNK: usize = 6 * TASK;

/// An empty vector with room for `n` values whose pages the kernel may back
/// with huge pages (Linux, where transparent huge pages are on "madvise"):
/// a model's worth of fresh memory faults in 2 MiB at a time, not 4 KiB,
/// which in a VM is most of what loading costs.
fn huge_vec(n: usize) -> Vec<f32> {
    let v: Vec<f32> = Vec::with_capacity(n);
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let (start, len) = (v.as_ptr() as usize, n * std::mem::size_of::<f32>());
        let first = start.next_multiple_of(HUGE);
        let end = (start + len) & !(HUGE - 1);
        if end > first {
            // SAFETY: a hint on whole huge pages inside the vector's own
            // allocation; it changes how the pages are backed, never their
            // contents (the vector has written nothing yet).
            unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE) };
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(dtype: Dtype, values: &[f32]) -> Vec<u8> {
        encode(dtype, values)
    }

    /// Every dtype converts as `half` converts, over more than one task.
    #[test]
    fn stored_values_convert_to_f32_on_any_number_of_tasks() {
        let n = 2 * TASK + 7;
        let values: Vec<f32> = (0..n)
            .map(|i| ((i % 1000) as f32 - 500.0) * 0.013)
            .collect();
        for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
            let bytes = stored(dtype, &values);
            let got = to_f32(&bytes, dtype);
            let want: Vec<f32> = values
                .iter()
                .map(|&v| match dtype {
                    Dtype::F32 => v,
                    Dtype::F16 => half::f16::from_f32(v).to_f32(),
                    Dtype::Bf16 => half::bf16::from_f32(v).to_f32(),
                })
                .collect();
            assert_eq!(got, want, "{dtype:?}");
        }
        assert!(to_f32(&[], Dtype::Bf16).is_empty());
    }

    /// Same dtype: the stored bytes themselves, in one piece (no copy).
    /// Another: converted chunk by chunk, at the right offsets, and the
    /// pieces put together are the conversion of the whole.
    #[test]
    fn staging_hands_over_the_stored_bytes_or_bounded_converted_chunks() {
        let values: Vec<f32> = (0..1003).map(|i| i as f32 * 0.37 - 100.0).collect();
        for src in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
            let bytes = stored(src, &values);
            for dst in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
                let mut device = vec![0u8; values.len() * dst.bytes()];
                let mut pieces = Vec::new();
                staged(dst, src, &bytes, 100, |off, piece| {
                    pieces.push((off, piece.len(), piece.as_ptr()));
                    device[off..off + piece.len()].copy_from_slice(piece);
                    Ok(())
                })
                .unwrap();
                let want = encode(dst, &to_f32(&bytes, src));
                assert_eq!(device, want, "{src:?} -> {dst:?}");
                if src == dst {
                    assert_eq!(pieces, vec![(0, bytes.len(), bytes.as_ptr())]);
                } else {
                    assert_eq!(pieces.len(), 11, "{src:?} -> {dst:?}");
                    assert!(pieces.iter().all(|p| p.1 <= 100 * dst.bytes()));
                }
            }
        }
        // A failed copy stops the staging and is returned.
        let bytes = stored(Dtype::F32, &values);
        let mut calls = 0;
        let e = staged(Dtype::Bf16, Dtype::F32, &bytes, 100, |_, _| {
            calls += 1;
            Err(crate::KernelError::Shape {
                op: "upload",
                device: "test".into(),
                shape: String::new(),
                reason: "full".into(),
            })
        });
        assert!(e.is_err());
        assert_eq!(calls, 1);
    }

    /// The CPU backend keeps stored values as f32; a length that is not
    /// whole values is a typed error naming the op.
    #[test]
    fn the_cpu_backend_uploads_stored_values_as_f32() {
        let be = crate::Backend::new(crate::DeviceSpec::Cpu, Default::default()).unwrap();
        let values = [1.5f32, -2.25, 3.0e-3, 7.0];
        for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
            let bytes = stored(dtype, &values);
            let b = be.upload_stored(&bytes, dtype).unwrap();
            assert_eq!(b.len(), 4);
            assert_eq!(be.download(&b, 0, 4).unwrap(), to_f32(&bytes, dtype));
            let e = be.upload_stored(&bytes[..bytes.len() - 1], dtype);
            let e = e.err().unwrap().to_string();
            assert!(e.contains("upload_stored") && e.contains("whole"), "{e}");
        }
    }
}
