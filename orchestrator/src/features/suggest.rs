//! "Did you mean" for mistyped feature and tier names.

/// The closest candidate by edit distance, if it is close enough to be a plausible typo
/// (at most a third of the typed name's length, at least one edit), else the first candidate
/// the typed text is a prefix of (`desktop` -> `desktop-kde`).
pub fn nearest<'a>(typed: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let candidates: Vec<&str> = candidates.into_iter().collect();
    let limit = (typed.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|candidate| (strsim::damerau_levenshtein(typed, candidate), *candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
        .or_else(|| {
            candidates
                .iter()
                .copied()
                .find(|c| !typed.is_empty() && c.starts_with(typed))
        })
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_nearest_finds_typo() {
        let names = ["monitoring", "logging", "alerting"];
        assert_eq!(nearest("monitorng", names).as_deref(), Some("monitoring"));
        assert_eq!(nearest("loging", names).as_deref(), Some("logging"));
    }

    #[test]
    fn test_nearest_refuses_unrelated_names() {
        assert_eq!(nearest("kubernetes", ["monitoring", "logging"]), None);
    }
}
