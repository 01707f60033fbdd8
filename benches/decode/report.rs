//! Reporting helpers of the decode benchmark: markdown tables and mean ± sd.

/// A markdown table: text columns left-aligned, numeric ones right-aligned,
/// padded so it also reads as plain text.
pub(crate) struct Table {
    head: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(cols: &[(&'static str, bool)]) -> Table {
        Table {
            head: cols.iter().map(|c| c.0).collect(),
            right: cols.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn print(&self) {
        let n = self.head.len();
        let width: Vec<usize> = (0..n)
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([self.head[i].chars().count(), 3])
                    .max()
                    .unwrap_or(3)
            })
            .collect();
        let cell = |s: &str, i: usize| {
            let pad = width[i].saturating_sub(s.chars().count());
            if self.right[i] {
                format!(" {}{s} ", " ".repeat(pad))
            } else {
                format!(" {s}{} ", " ".repeat(pad))
            }
        };
        let line = |cells: &[String]| {
            let parts: Vec<String> = cells.iter().enumerate().map(|(i, s)| cell(s, i)).collect();
            println!("|{}|", parts.join("|"));
        };
        line(&self.head.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let rule: Vec<String> = (0..n)
            .map(|i| {
                if self.right[i] {
                    format!(" {}: ", "-".repeat(width[i] - 1))
                } else {
                    format!(" {} ", "-".repeat(width[i]))
                }
            })
            .collect();
        println!("|{}|", rule.join("|"));
        for r in &self.rows {
            line(r);
        }
    }
}

/// Mean and sample standard deviation.
pub(crate) fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (m, 0.0);
    }
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, var.sqrt())
}

pub(crate) fn pm(v: &[f64], digits: usize) -> String {
    let (m, s) = mean_sd(v);
    format!("{m:.digits$} ± {s:.digits$}")
}

pub(crate) fn mean(v: &[f64]) -> f64 {
    mean_sd(v).0
}
