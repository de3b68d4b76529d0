//! What exact distributions look like, as predicates the tests assert with the counts in the
//! message.

/// Every listener got floor(M/N) or ceil(M/N) of the M connections.
pub fn is_exact_round_robin(counts: &[u64]) -> bool {
    if counts.is_empty() {
        return false;
    }
    let total: u64 = counts.iter().sum();
    let n = counts.len() as u64;
    let (floor, ceil) = (total / n, total.div_ceil(n));
    counts.iter().all(|&c| c == floor || c == ceil)
}

/// Per-listener counts of a run of answers.
pub fn tally(answers: &[usize], listeners: usize) -> Vec<u64> {
    let mut counts = vec![0; listeners];
    for &a in answers {
        counts[a] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_predicate() {
        assert!(is_exact_round_robin(&[3, 3, 2, 2]));
        assert!(is_exact_round_robin(&[5, 5]));
        assert!(!is_exact_round_robin(&[4, 3, 2, 1]));
        assert!(!is_exact_round_robin(&[4, 2]));
        assert!(!is_exact_round_robin(&[]));
        assert_eq!(tally(&[0, 2, 2], 3), vec![1, 0, 2]);
    }
}
