//! Value parsers for flags: a bad value fails while parsing, with one sentence.
use crate::data::whiten::Whiten;
use crate::features::patches::FirstLayer;
use crate::features::{BatchSize, BnSetting, Encode};
use crate::models::init::InitScheme;
use crate::models::WeightsSource;
use crate::probe::kernel::KernelFn;

pub fn batch(s: &str) -> Result<BatchSize, String> {
    s.parse()
}

pub fn weights(s: &str) -> Result<WeightsSource, String> {
    s.parse()
}

pub fn init(s: &str) -> Result<InitScheme, String> {
    s.parse()
}

pub fn bn(s: &str) -> Result<BnSetting, String> {
    s.parse()
}

pub fn whiten(s: &str) -> Result<Whiten, String> {
    s.parse()
}

pub fn encode(s: &str) -> Result<Encode, String> {
    s.parse()
}

pub fn kernel(s: &str) -> Result<KernelFn, String> {
    s.parse()
}

pub fn first_layer(s: &str) -> Result<FirstLayer, String> {
    s.parse()
}

pub fn positive_usize(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("'{s}' is not a positive whole number")),
    }
}

pub fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a positive finite number")),
    }
}

pub fn non_negative_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a finite number ≥ 0")),
    }
}

pub fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v < 1.0 => Ok(v),
        _ => Err(format!("'{s}' is not a fraction strictly between 0 and 1")),
    }
}

/// `--seeds`: `0,1,2`, `0..3` (exclusive end, as in Rust) or `0..=2`.
pub fn seeds(s: &str) -> Result<Vec<u64>, String> {
    let bad = || format!("'{s}': use a list (0,1,2) or a range (0..3, 0..=2)");
    let num = |v: &str| v.trim().parse::<u64>().map_err(|_| bad());
    let seeds: Vec<u64> = if let Some((a, b)) = s.split_once("..=") {
        (num(a)?..=num(b)?).collect()
    } else if let Some((a, b)) = s.split_once("..") {
        (num(a)?..num(b)?).collect()
    } else {
        s.split(',').map(num).collect::<Result<_, _>>()?
    };
    if seeds.is_empty() {
        return Err(format!("'{s}' contains no seed"));
    }
    Ok(seeds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_lists_and_ranges() {
        assert_eq!(seeds("0,1,2").unwrap(), [0, 1, 2]);
        assert_eq!(seeds("0..3").unwrap(), [0, 1, 2]);
        assert_eq!(seeds("1..=2").unwrap(), [1, 2]);
        assert!(seeds("3..3").is_err());
        assert!(seeds("a").is_err());
    }
}
