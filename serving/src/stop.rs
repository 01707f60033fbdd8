//! Stop strings: a request's text ends where it first contains one of them,
//! the stop string itself left out (as the OpenAI API does). Text that
//! might be the start of a stop string is held back until the next token
//! shows whether it is, so a streaming client never sees text that a stop
//! string later takes back.

/// The text sent so far of one request, against its stop strings.
#[derive(Clone, Debug, Default)]
pub struct StopText {
    stops: Vec<String>,
    /// Bytes of the decoded text already released.
    sent: usize,
    stopped: bool,
}

impl StopText {
    /// Watches for `stops` (empty strings are ignored: they would end every
    /// request at once).
    pub fn new(stops: Vec<String>) -> Self {
        StopText {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            sent: 0,
            stopped: false,
        }
    }

    /// Whether a stop string has been reached.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Given the request's whole decoded text so far (each call's text
    /// extends the last), returns the new text that may be released, and
    /// whether a stop string ended it there.
    pub fn update<'t>(&mut self, text: &'t str) -> (&'t str, bool) {
        if self.stopped || self.sent > text.len() {
            return ("", self.stopped);
        }
        // A stop string may have begun in text already released only where
        // that text was a prefix of it; those bytes were held back, so the
        // search starts at the release point.
        let first = self
            .stops
            .iter()
            .filter_map(|s| text[self.sent..].find(s.as_str()))
            .min();
        if let Some(at) = first {
            let from = self.sent;
            self.sent += at;
            self.stopped = true;
            return (&text[from..self.sent], true);
        }
        // Hold back the longest tail that is the start of a stop string.
        let held = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len().min(text.len() - self.sent + 1))
                    .rev()
                    .filter(|&k| s.is_char_boundary(k))
                    .find(|&k| text.ends_with(&s[..k]))
            })
            .max()
            .unwrap_or(0);
        let end = text.len() - held;
        let from = self.sent;
        self.sent = end.max(from);
        (&text[from..self.sent], false)
    }

    /// At the request's end: what is still held back (nothing after a stop).
    pub fn finish<'t>(&mut self, text: &'t str) -> &'t str {
        if self.stopped || self.sent >= text.len() || !text.is_char_boundary(self.sent) {
            return "";
        }
        let from = self.sent;
        self.sent = text.len();
        &text[from..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `pieces` one at a time; returns the released text and whether it stopped.
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut st = StopText::new(stops.iter().map(|s| s.to_string()).collect());
        let (mut text, mut out) = (String::new(), String::new());
        for p in pieces {
            text.push_str(p);
            let (delta, stop) = st.update(&text);
            out.push_str(delta);
            if stop {
                return (out, true);
            }
        }
        out.push_str(st.finish(&text));
        (out, false)
    }

    #[test]
    fn text_ends_before_the_first_stop_string_even_across_pieces() {
        assert_eq!(run(&["\n\n"], &["a", "b\n", "\nc"]), ("ab".into(), true));
        assert_eq!(run(&["END", "x"], &["abEN", "D"]), ("ab".into(), true));
        // The earliest of several wins.
        assert_eq!(run(&["cd", "b"], &["abcd"]), ("a".into(), true));
        // A held tail that turns out not to stop is released.
        assert_eq!(run(&["END"], &["aE", "Nb"]), ("aENb".into(), false));
        assert_eq!(run(&["END"], &["aEN"]), ("aEN".into(), false));
        // No stops, or only empty ones: everything.
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&[""], &["a", "b"]), ("ab".into(), false));
        // The first stop completed wins, not the one that starts first
        // (found by the property below): generation ended at "\n".
        assert_eq!(run(&["é\né", "\n"], &["é\n", "é"]), ("é".into(), true));
        assert_eq!(run(&["é\né", "\n"], &["é\né"]), ("".into(), true));
        // Multi-byte text and stops.
        assert_eq!(run(&["é!"], &["caf", "é", "!x"]), ("caf".into(), true));
        assert_eq!(run(&["éa"], &["caf", "é", "b"]), ("caféb".into(), false));
    }

    #[test]
    fn held_text_is_never_released_before_it_is_known_not_to_stop() {
        let mut st = StopText::new(vec!["STOP".into()]);
        assert_eq!(st.update("aS"), ("a", false));
        assert_eq!(st.update("aST"), ("", false));
        assert_eq!(st.update("aSTx"), ("STx", false));
        assert_eq!(st.update("aSTxSTOPyy"), ("", true));
        assert!(st.stopped());
        assert_eq!(st.update("aSTxSTOPyyz"), ("", true));
        assert_eq!(st.finish("aSTxSTOPyyz"), "");
    }

    proptest! {
        /// However the text is cut into pieces (tokens), what is released is
        /// the text up to the first stop string complete after a piece (or
        /// all of it): generation ends at the token that completes one, so
        /// a longer stop string starting earlier but completing later
        /// never completes.
        #[test]
        fn released_text_is_the_prefix_before_the_first_stop(
            text in "[ab\n é]{0,24}",
            stops in proptest::collection::vec("[ab\né]{1,3}", 0..3),
            cuts in proptest::collection::vec(0usize..30, 0..8),
        ) {
            let mut bounds: Vec<usize> = cuts
                .into_iter()
                .map(|c| c.min(text.len()))
                .filter(|&c| text.is_char_boundary(c))
                .collect();
            bounds.push(text.len());
            bounds.sort_unstable();
            let mut pieces = Vec::new();
            let mut last = 0;
            for b in bounds {
                pieces.push(&text[last..b]);
                last = b;
            }
            let stops_ref: Vec<&str> = stops.iter().map(String::as_str).collect();
            // Generation stops at the first piece after which the text
            // holds a stop string, cut at the leftmost one it holds then.
            let mut seen = String::new();
            let mut want = (text.clone(), false);
            for p in &pieces {
                seen.push_str(p);
                if let Some(at) = stops.iter().filter_map(|s| seen.find(s.as_str())).min() {
                    want = (seen[..at].to_string(), true);
                    break;
                }
            }
            prop_assert_eq!(run(&stops_ref, &pieces), want);
        }
    }
}
