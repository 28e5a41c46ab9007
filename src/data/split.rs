//! Seeded, stratified train/validation split.
use tch::Tensor;

/// Indices of a split into (fit, validation) parts, both sorted ascending.
pub struct SplitIndices {
    pub fit: Vec<i64>,
    pub val: Vec<i64>,
}

/// Holds out `fraction` of each class (rounded, at least one item when the class has two
/// or more), chosen by a permutation seeded with `seed`. The same labels, fraction and seed
/// always give the same split, on any device.
pub fn stratified(labels: &Tensor, num_classes: usize, fraction: f64, seed: u64) -> SplitIndices {
    let labels: Vec<i64> = Vec::<i64>::try_from(labels.to_device(tch::Device::Cpu)).unwrap_or_default();
    let mut by_class: Vec<Vec<i64>> = vec![Vec::new(); num_classes];
    for (i, &y) in labels.iter().enumerate() {
        by_class[y as usize].push(i as i64);
    }
    let (mut fit, mut val) = (Vec::new(), Vec::new());
    for (c, members) in by_class.iter().enumerate() {
        if members.is_empty() {
            continue;
        }
        let n = members.len();
        let mut k = (n as f64 * fraction).round() as usize;
        if fraction > 0.0 && k == 0 && n >= 2 {
            k = 1;
        }
        k = k.min(n.saturating_sub(1));
        let order = permutation(n, seed.wrapping_mul(1_000_003).wrapping_add(c as u64));
        for (rank, &j) in order.iter().enumerate() {
            if rank < k {
                val.push(members[j]);
            } else {
                fit.push(members[j]);
            }
        }
    }
    fit.sort_unstable();
    val.sort_unstable();
    SplitIndices { fit, val }
}

/// SplitMix64: a small seeded stream independent of libtorch's global generator, so data
/// choices (splits, sampled patches) never disturb the seeded weight draws.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in 0..n (n > 0); the modulo bias is below 2⁻⁴⁰ for the sizes used here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A seeded Fisher–Yates permutation of 0..n (a SplitMix64 stream).
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix64::new(seed);
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stratified_is_seeded_disjoint_and_proportional() {
        let labels = Tensor::from_slice(&(0..1000).map(|i| i % 10).collect::<Vec<i64>>());
        let a = stratified(&labels, 10, 0.1, 7);
        let b = stratified(&labels, 10, 0.1, 7);
        let c = stratified(&labels, 10, 0.1, 8);
        assert_eq!(a.val, b.val);
        assert_ne!(a.val, c.val);
        assert_eq!(a.val.len(), 100);
        assert_eq!(a.fit.len(), 900);
        for k in 0..10 {
            assert_eq!(a.val.iter().filter(|&&i| i % 10 == k).count(), 10);
        }
        assert!(a.val.iter().all(|i| !a.fit.contains(i)));
    }
}
