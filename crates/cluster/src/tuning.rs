//! Measurement switches: environment variables that override a tuning constant, so that an A/B
//! run compares two settings with one build (`docs/operations.md` lists them).

use std::ops::RangeInclusive;
use std::str::FromStr;

/// The number in variable `name` when it is set, parses and lies in `range`; else `default`.
pub(crate) fn number<T: FromStr + PartialOrd>(
    name: &str,
    range: RangeInclusive<T>,
    default: T,
) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse::<T>().ok())
        .filter(|n| range.contains(n))
        .unwrap_or(default)
}

/// Whether the switch in variable `name` is on: unset, or anything but `0`.
pub(crate) fn switch(name: &str) -> bool {
    std::env::var(name).map_or(true, |v| v != "0")
}
