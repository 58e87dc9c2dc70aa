//! Each stack's p99 in each latency slice, compared slice by slice.
//!
//! The table's p99 pools every sample of a stack, so the VM's worst moments decide it: a
//! stall of a few milliseconds in one slice of one stack moves that stack's p99, and which
//! stack meets such a stall is chance. The stacks of one slice run back to back, a few
//! hundred milliseconds apart, so comparing their p99s slice by slice (a paired
//! comparison) shows which stack's tail is lower while the machine is in the same state,
//! and how often. It adds to the table; it does not replace it.

use std::time::Duration;

use crate::stats::Latencies;

/// p99 per stack, per rate, per slice.
pub struct SliceP99s {
    /// `[stack][rate]`: one p99 per slice, in slice order.
    p99s: Vec<Vec<Vec<Duration>>>,
}

impl SliceP99s {
    pub fn new(stacks: usize, rates: usize) -> Self {
        Self {
            p99s: vec![vec![Vec::new(); rates]; stacks],
        }
    }

    /// Records one slice's samples of `stack` at rate index `rate`.
    pub fn record(&mut self, stack: usize, rate: usize, samples: &[Duration]) {
        let p99 = Latencies::new(samples.to_vec()).percentile(99.0);
        self.p99s[stack][rate].push(p99);
    }

    /// For each rate, one line: the median per-slice p99 of every stack, then how many
    /// slices the `first` stack's p99 was below (and equal to) each other stack's, direct
    /// (`direct`) left out of the comparison.
    pub fn notes(
        &self,
        names: &[String],
        rates: &[u32],
        direct: usize,
        first: usize,
    ) -> Vec<String> {
        let mut lines = vec![format!(
            "per-slice p99s (each stack's p99 within each slice, stacks of a slice run back to \
             back): median µs over the slices; slices where {}'s p99 was below each other \
             stack's (ties apart):",
            names[first]
        )];
        for (r, rate) in rates.iter().enumerate() {
            let medians: Vec<String> = names
                .iter()
                .zip(&self.p99s)
                .map(|(name, by_rate)| {
                    let median = Latencies::new(by_rate[r].clone()).percentile(50.0);
                    format!("{name} {}", median.as_micros())
                })
                .collect();
            let mine = &self.p99s[first][r];
            let wins: Vec<String> = (0..names.len())
                .filter(|&t| t != first && t != direct)
                .map(|t| {
                    let (below, ties) = below_and_ties(mine, &self.p99s[t][r]);
                    format!("{} {below} of {} ({ties} tied)", names[t], mine.len())
                })
                .collect();
            lines.push(format!(
                "  @{rate}/s: medians {}; {} below {}",
                medians.join(", "),
                names[first],
                wins.join(", ")
            ));
        }
        lines
    }
}

/// Slices where `a` was below `b`, and where they were equal (slice by slice).
fn below_and_ties(a: &[Duration], b: &[Duration]) -> (usize, usize) {
    a.iter().zip(b).fold((0, 0), |(below, ties), (x, y)| {
        (below + usize::from(x < y), ties + usize::from(x == y))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(v: &[u64]) -> Vec<Duration> {
        v.iter().copied().map(Duration::from_micros).collect()
    }

    #[test]
    fn compares_slice_by_slice_not_pooled() {
        let mut s = SliceP99s::new(3, 1);
        // Stack 1 is lower in two slices of three; one stall in its third slice would
        // make its pooled p99 the worst.
        for (stack, slices) in [
            (0, [[100u64; 100], [100; 100], [100; 100]]),
            (1, [[200; 100], [200; 100], [9000; 100]]),
            (2, [[300; 100], [300; 100], [300; 100]]),
        ] {
            for slice in slices {
                s.record(stack, 0, &us(&slice));
            }
        }
        let names = ["direct", "a", "b"].map(String::from);
        let notes = s.notes(&names, &[1000], 0, 1);
        assert_eq!(notes.len(), 2);
        assert_eq!(
            notes[1],
            "  @1000/s: medians direct 100, a 200, b 300; a below b 2 of 3 (0 tied)"
        );
    }

    #[test]
    fn p99_of_a_slice_is_its_nearest_rank() {
        let mut s = SliceP99s::new(1, 1);
        s.record(0, 0, &us(&(1..=100).rev().collect::<Vec<_>>()));
        assert_eq!(s.p99s[0][0], us(&[99]));
        assert_eq!(below_and_ties(&us(&[1, 2, 3]), &us(&[2, 2, 1])), (1, 1));
    }
}
