//! The name a user types for a flag value, as the one serialisation of enum choices in
//! logs and summary rows (never `Debug` text).
use clap::ValueEnum;

/// `--pool avgmax` → "avgmax": clap's own name for the value.
pub fn value_name<T: ValueEnum>(v: &T) -> String {
    v.to_possible_value().map(|p| p.get_name().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, ValueEnum)]
    enum Choice {
        PlainValue,
        Other,
    }

    #[test]
    fn names_are_the_flag_spellings() {
        assert_eq!(value_name(&Choice::PlainValue), "plain-value");
        assert_eq!(value_name(&Choice::Other), "other");
    }
}
