//! Zipf-distributed ranks: which key a `hot` cycle touches.
//!
//! Rank `k` of `1..=n` is drawn with probability `k^-s / H(n, s)`, where `H` is the
//! generalised harmonic number. Sampling is Hörmann and Derflinger's rejection-inversion
//! ("Rejection-inversion to generate variates from monotone discrete distributions", 1996),
//! as in Apache Commons RNG: exact for every `s >= 0` (not an approximation such as YCSB's
//! generator), O(1) memory whatever `n` is, and on average close to one uniform draw per
//! sample. `s = 0` is uniform; `s = 0.99` over 1000 keys sends ~13% of draws to rank 1.

use crate::rng::Rng;

/// A Zipf distribution over ranks `1..=element_count` with exponent `exponent`.
#[derive(Debug, Clone)]
pub struct Zipf {
    element_count: u64,
    exponent: f64,
    /// `h_integral(1.5) - 1`: the upper end of the inversion's range (it runs downwards).
    h_integral_x1: f64,
    /// `h_integral(element_count + 0.5)`: the lower end.
    h_integral_element_count: f64,
    /// Below this distance from its rounded rank, an inverted point is accepted at once.
    squeeze: f64,
}

impl Zipf {
    /// # Panics
    ///
    /// If `element_count` is 0 or `exponent` is negative or not finite: the flags are
    /// validated before a sampler is made, so that is a bug in the caller.
    #[must_use]
    pub fn new(element_count: u64, exponent: f64) -> Zipf {
        assert!(element_count > 0, "Zipf over no elements");
        assert!(
            exponent.is_finite() && exponent >= 0.0,
            "Zipf exponent {exponent} is not finite and >= 0"
        );
        let mut zipf = Zipf {
            element_count,
            exponent,
            h_integral_x1: 0.0,
            h_integral_element_count: 0.0,
            squeeze: 0.0,
        };
        zipf.h_integral_x1 = zipf.h_integral(1.5) - 1.0;
        zipf.h_integral_element_count = zipf.h_integral(element_count as f64 + 0.5);
        zipf.squeeze = 2.0 - zipf.h_integral_inverse(zipf.h_integral(2.5) - zipf.h(2.0));
        zipf
    }

    /// How many ranks there are.
    #[must_use]
    pub fn element_count(&self) -> u64 {
        self.element_count
    }

    /// A rank in `1..=element_count`; rank 1 is the most likely.
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        loop {
            // Uniform over (h_integral_x1, h_integral_element_count]: next_f64 is in [0, 1).
            let u = self.h_integral_element_count
                + rng.next_f64() * (self.h_integral_x1 - self.h_integral_element_count);
            let x = self.h_integral_inverse(u);
            // Round to the nearest rank, kept in range (x can stray by rounding error).
            let k = (x + 0.5).floor().clamp(1.0, self.element_count as f64);
            if k - x <= self.squeeze || u >= self.h_integral(k + 0.5) - self.h(k) {
                return k as u64;
            }
        }
    }

    /// The unnormalised probability of rank `x`: `x^-s`.
    fn h(&self, x: f64) -> f64 {
        (-self.exponent * x.ln()).exp()
    }

    /// An antiderivative of `h`: `(x^(1-s) - 1) / (1-s)`, or `ln x` when `s = 1`, computed
    /// without cancellation near `s = 1`.
    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        exp_m1_over_x((1.0 - self.exponent) * log_x) * log_x
    }

    /// The inverse of `h_integral`.
    fn h_integral_inverse(&self, x: f64) -> f64 {
        // Rounding can push t just below -1, where ln(1 + t) is undefined.
        let t = (x * (1.0 - self.exponent)).max(-1.0);
        (ln_1p_over_x(t) * x).exp()
    }
}

/// `ln(1 + x) / x`, continuous at 0 (where it is 1).
fn ln_1p_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// `(e^x - 1) / x`, continuous at 0 (where it is 1).
fn exp_m1_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The analytic probability of each rank `1..=element_count`.
    fn pmf(element_count: u64, exponent: f64) -> Vec<f64> {
        let weights: Vec<f64> = (1..=element_count)
            .map(|k| (k as f64).powf(-exponent))
            .collect();
        let total: f64 = weights.iter().sum();
        weights.iter().map(|weight| weight / total).collect()
    }

    /// Draws `sample_count` ranks and returns Pearson's chi-square statistic against the
    /// analytic pmf, with its degrees of freedom. Ranks are binned so that every bin expects
    /// at least 50 draws: the top ranks alone, the long tail in merged runs.
    fn chi_square(element_count: u64, exponent: f64, sample_count: u64, seed: u64) -> (f64, f64) {
        let zipf = Zipf::new(element_count, exponent);
        let mut rng = Rng::new(seed);
        let mut observed = vec![0u64; usize::try_from(element_count).unwrap()];
        for _ in 0..sample_count {
            let rank = zipf.sample(&mut rng);
            assert!((1..=element_count).contains(&rank), "rank {rank}");
            observed[usize::try_from(rank - 1).unwrap()] += 1;
        }
        let expected_share = pmf(element_count, exponent);
        let mut bins: Vec<(f64, f64)> = Vec::new();
        let (mut bin_expected, mut bin_observed) = (0.0, 0.0);
        for (share, count) in expected_share.iter().zip(&observed) {
            bin_expected += share * sample_count as f64;
            bin_observed += *count as f64;
            if bin_expected >= 50.0 {
                bins.push((bin_expected, bin_observed));
                (bin_expected, bin_observed) = (0.0, 0.0);
            }
        }
        if let Some(last) = bins.last_mut() {
            last.0 += bin_expected;
            last.1 += bin_observed;
        }
        let statistic = bins
            .iter()
            .map(|(expected, observed)| (observed - expected).powi(2) / expected)
            .sum();
        (statistic, bins.len() as f64 - 1.0)
    }

    /// Fails when the statistic is more than 5 standard deviations (of a chi-square with
    /// `dof` degrees of freedom: sqrt(2 dof)) above its mean: a correct sampler passes with
    /// any seed, while a wrong exponent or an off-by-one rank is thousands of units out.
    fn assert_fits(element_count: u64, exponent: f64, sample_count: u64) {
        let (statistic, dof) = chi_square(element_count, exponent, sample_count, 0x5EED);
        let limit = dof + 5.0 * (2.0 * dof).sqrt();
        assert!(
            statistic <= limit,
            "n={element_count} s={exponent}: chi-square {statistic:.1} over {dof} dof > {limit:.1}"
        );
    }

    #[test]
    fn default_hot_distribution_matches_pmf() {
        assert_fits(1000, 0.99, 400_000);
    }

    #[test]
    fn other_exponents_match_pmf() {
        // 1.0 exercises the series expansions around s = 1; 0 is uniform; 1.5 is steep.
        for exponent in [0.0, 0.5, 1.0, 1.5] {
            assert_fits(100, exponent, 100_000);
        }
    }

    #[test]
    fn top_rank_share_is_as_analytic() {
        let zipf = Zipf::new(1000, 0.99);
        let mut rng = Rng::new(1);
        let sample_count = 200_000;
        let top = (0..sample_count)
            .filter(|_| zipf.sample(&mut rng) == 1)
            .count();
        let expected = pmf(1000, 0.99)[0];
        let actual = top as f64 / f64::from(sample_count);
        // Binomial standard deviation ~0.00075 here; allow 5 of them.
        assert!((actual - expected).abs() < 0.004, "{actual} vs {expected}");
    }

    #[test]
    fn a_single_element_is_always_drawn() {
        let zipf = Zipf::new(1, 0.99);
        let mut rng = Rng::new(3);
        assert!((0..1000).all(|_| zipf.sample(&mut rng) == 1));
    }

    #[test]
    fn a_wrong_exponent_is_detected() {
        // The test's own power: samples of s=0.99 judged against the pmf of s=0.9 fail.
        let zipf = Zipf::new(1000, 0.99);
        let mut rng = Rng::new(0x5EED);
        let sample_count = 400_000u64;
        let mut top_ten = 0u64;
        for _ in 0..sample_count {
            if zipf.sample(&mut rng) <= 10 {
                top_ten += 1;
            }
        }
        let wrong: f64 = pmf(1000, 0.9)[..10].iter().sum();
        let right: f64 = pmf(1000, 0.99)[..10].iter().sum();
        let actual = top_ten as f64 / sample_count as f64;
        assert!((actual - right).abs() < 0.005, "{actual} vs {right}");
        assert!((actual - wrong).abs() > 0.02, "{actual} vs {wrong}");
    }
}
