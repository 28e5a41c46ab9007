//! The name a user types for a flag value, as the one serialisation of enum choices in
//! logs and summary rows (never `Debug` text).
use clap::ValueEnum;

/// `--pool avgmax` → "avgmax": clap's own name for the value.
pub fn value_name<T: ValueEnum>(v: &T) -> String {
    v.to_possible_value().map(|p| p.get_name().to_string()).unwrap_or_default()
}

/// Serialises a type as its `Display` text and reads it back through `FromStr` (flag values
/// such as `calibrate:5000` or `normal:0.01` keep the spelling a user types).
#[macro_export]
macro_rules! serde_as_str {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <String as serde::Deserialize>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
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
