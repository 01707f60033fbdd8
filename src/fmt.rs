//! Small formatting helpers for the CLI's tables.

/// Microseconds as a readable duration: `850 us`, `12.3 ms`, `1.20 s`.
pub fn us(t: f64) -> String {
    if t < 1e3 {
        format!("{t:.0} us")
    } else if t < 1e6 {
        format!("{:.2} ms", t / 1e3)
    } else {
        format!("{:.2} s", t / 1e6)
    }
}

/// A progress bar on stderr for `len` steps (0: set the length later).
pub fn progress_bar(len: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// At most `k` indices of `0..n` for a summary table: the first, the last and
/// evenly spaced ones between.
pub fn sample_indices(n: usize, k: usize) -> Vec<usize> {
    if n <= k {
        return (0..n).collect();
    }
    if k < 2 {
        return (0..k).collect();
    }
    let mut v: Vec<usize> = (0..k).map(|i| i * (n - 1) / (k - 1)).collect();
    v.dedup();
    v
}

/// A markdown table with right-aligned numeric columns (llama-bench style).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::from("|");
        for (i, c) in cells.iter().enumerate() {
            s.push_str(&format!(" {:>w$} |", c, w = width[i]));
        }
        s.push('\n');
        s
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out.push('|');
    for w in &width {
        out.push_str(&format!("{}:|", "-".repeat(w + 1)));
    }
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(us(850.0), "850 us");
        assert_eq!(us(12_300.0), "12.30 ms");
        let t = table(&["a", "bb"], &[vec!["1".into(), "22".into()]]);
        assert_eq!(t, "| a | bb |\n|--:|---:|\n| 1 | 22 |\n");
        assert_eq!(sample_indices(3, 8), vec![0, 1, 2]);
        assert_eq!(sample_indices(16, 8), vec![0, 2, 4, 6, 8, 10, 12, 15]);
        assert_eq!(sample_indices(0, 8), Vec::<usize>::new());
    }
}
