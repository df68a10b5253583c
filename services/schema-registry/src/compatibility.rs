//! Compatibility levels and the Avro compatibility check, as Confluent Schema Registry defines
//! them. The rules live in `saga_contracts::compatibility` (apache-avro's own checker, a partial
//! match counted as incompatible) so the registry and the contract tests apply the same ones.

use apache_avro::Schema;

pub use saga_contracts::compatibility::CompatibilityLevel;

/// Checks `new` against `previous` (oldest first, live versions only) under `level`.
///
/// Returns the reasons it is incompatible; an empty list means compatible. Non-transitive levels
/// look only at the last element of `previous`.
pub fn check(level: CompatibilityLevel, new: &Schema, previous: &[&Schema]) -> Vec<String> {
    let previous: Vec<Schema> = previous.iter().map(|schema| (*schema).clone()).collect();
    saga_contracts::compatibility::check(level, new, &previous)
        .err()
        .unwrap_or_default()
}
