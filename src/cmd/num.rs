//! Bounded numeric flags. Each count parses into its range, so a value past
//! it (or a negative one) is refused naming the flag before any work
//! (clap prints `invalid value 'X' for '--flag <FLAG>': ...`, exit 2), and
//! the arithmetic after it cannot wrap.

/// Timed or untimed steps, repetitions: a million is days of decoding.
pub const MAX_STEPS: usize = 1_000_000;
/// `overflow --repeat`: each repetition runs every configuration again.
pub const MAX_REPEAT: usize = 1_000;
/// K/V blocks in a paged cache (block ids are u32).
pub const MAX_BLOCKS: usize = u32::MAX as usize;

/// A whole number in `LO..=HI`, for clap's `value_parser`.
pub fn count<const LO: usize, const HI: usize>(s: &str) -> Result<usize, String> {
    let v: i128 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number in {LO}..={HI}"))?;
    usize::try_from(v)
        .ok()
        .filter(|v| (LO..=HI).contains(v))
        .ok_or_else(|| format!("{v} is not in {LO}..={HI}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_parse_into_their_range_only() {
        assert_eq!(count::<1, 10>("7"), Ok(7));
        assert_eq!(count::<0, 10>(" 0 "), Ok(0));
        for bad in [
            "0",
            "11",
            "-1",
            "18446744073709551615",
            "99999999999999999999999",
            "1.5",
            "x",
        ] {
            let e = count::<1, 10>(bad).unwrap_err();
            assert!(e.contains("1..=10"), "{bad}: {e}");
        }
    }
}
