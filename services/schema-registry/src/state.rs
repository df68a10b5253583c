//! The registry's in-memory state machine: subjects, versions, global ids and compatibility levels.
//!
//! Pure and synchronous, no I/O. Changes happen in two steps so that the log stays the source of
//! truth: a `plan_*` method validates a request against the current state and returns the
//! [`Record`] that would carry it out (or why it is refused); the caller makes that record durable
//! and then hands it to [`State::apply`], which is total: it never fails, so replaying the log
//! from the beginning always rebuilds the same state.
//!
//! Semantics follow Confluent Schema Registry:
//! - ids are global: the same schema (by [normalized JSON](crate::schema::normalize)) gets the
//!   same id in every subject; new schemas get the largest id ever seen plus one, so ids are
//!   never reused, not even after deletes;
//! - versions count from 1 per subject; registering a schema a subject already has (live) returns
//!   the existing id and adds no version;
//! - soft-deleted versions leave listings (unless `deleted=true` is asked for) and compatibility
//!   checks, but their ids still resolve; a permanent delete needs a soft delete first.

use std::collections::{BTreeMap, HashMap};

use crate::compatibility::{self, CompatibilityLevel};
use crate::record::Record;
use crate::schema::ValidSchema;

/// The only schema type this registry serves.
pub const AVRO: &str = "AVRO";

/// Why a request was refused. Every variant is the client's to fix; none is worth retrying as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The subject has no (live) versions. Confluent error code 40401.
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    /// The subject exists but not this version. Confluent error code 40402.
    #[error("Version {0} not found.")]
    VersionNotFound(u32),
    /// No schema has this id. Confluent error code 40403.
    #[error("Schema {0} not found")]
    SchemaIdNotFound(u32),
    /// The subject does not hold this schema. Confluent error code 40403.
    #[error("Schema not found")]
    SchemaNotFound,
    /// Soft-deleting a subject that is already soft-deleted. Confluent error code 40404.
    #[error("Subject '{0}' was soft deleted.Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    /// Permanently deleting a subject that was not soft-deleted first. Confluent error code 40405.
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    /// Soft-deleting a version that is already soft-deleted. Confluent error code 40406.
    #[error("Subject '{0}' Version {1} was soft deleted.Set permanent=true to delete permanently")]
    VersionSoftDeleted(String, u32),
    /// Permanently deleting a version that was not soft-deleted first. Confluent error code 40407.
    #[error("Subject '{0}' Version {1} was not deleted first before being permanently deleted")]
    VersionNotSoftDeleted(String, u32),
    /// The subject has no compatibility level of its own. Confluent error code 40408.
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectLevelNotConfigured(String),
    /// The schema breaks the subject's compatibility level. Confluent error code 409.
    #[error("Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]", .messages.join(", "))]
    Incompatible {
        /// The subject.
        subject: String,
        /// What is incompatible, one message per failed check.
        messages: Vec<String>,
    },
    /// The schema is not valid Avro, or uses something this registry does not support.
    /// Confluent error code 42201.
    #[error("{0}")]
    InvalidSchema(String),
    /// A version that is neither a positive 32-bit integer nor `latest`. Confluent error 42202.
    #[error("The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\"")]
    InvalidVersion(String),
    /// A compatibility level name that does not exist. Confluent error code 42203.
    #[error("Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive")]
    InvalidCompatibilityLevel,
}

/// A version as named in a request path: a number, or `latest` (also spelled `-1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSpec {
    /// The highest version (among live ones unless deleted versions are asked for).
    Latest,
    /// A specific version number, at least 1.
    Number(u32),
}

impl VersionSpec {
    /// Parses a path segment: `latest`, `-1`, or an integer in `1..=2^31-1`.
    pub fn parse(text: &str) -> Result<VersionSpec, RegistryError> {
        if text.eq_ignore_ascii_case("latest") || text == "-1" {
            return Ok(VersionSpec::Latest);
        }
        match text.parse::<i32>() {
            Ok(n) if n >= 1 => Ok(VersionSpec::Number(n.unsigned_abs())),
            _ => Err(RegistryError::InvalidVersion(text.to_owned())),
        }
    }
}

/// One version of a subject, as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectVersion {
    /// The subject.
    pub subject: String,
    /// The version within the subject.
    pub version: u32,
    /// The schema's global id.
    pub id: u32,
    /// The schema text.
    pub schema: String,
}

/// Which subjects a listing includes.
#[derive(Debug, Clone, Default)]
pub struct SubjectFilter {
    /// Only subjects whose name starts with this.
    pub prefix: Option<String>,
    /// Also subjects whose versions are all soft-deleted.
    pub deleted: bool,
    /// Only subjects whose versions are all soft-deleted.
    pub deleted_only: bool,
}

/// What registering a schema under a subject comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// The subject already holds this schema as a live version: nothing to write.
    Existing {
        /// The schema's id.
        id: u32,
        /// The version that holds it.
        version: u32,
    },
    /// A new version; append this record (a [`Record::SchemaRegistered`]) to register it.
    New {
        /// The id the schema gets (an existing one if another subject has the same schema).
        id: u32,
        /// The new version number.
        version: u32,
        /// The record to append.
        record: Record,
    },
}

/// A schema known by id.
#[derive(Debug, Clone)]
struct StoredSchema {
    schema: ValidSchema,
}

#[derive(Debug, Clone, Copy)]
struct VersionEntry {
    id: u32,
    deleted: bool,
}

/// The whole registry state. See the module docs.
#[derive(Debug, Clone)]
pub struct State {
    default_level: CompatibilityLevel,
    global_level: Option<CompatibilityLevel>,
    subject_levels: BTreeMap<String, CompatibilityLevel>,
    schemas: BTreeMap<u32, StoredSchema>,
    ids_by_normalized: HashMap<String, u32>,
    subjects: BTreeMap<String, BTreeMap<u32, VersionEntry>>,
    max_id: u32,
}

impl State {
    /// An empty registry whose global level, until set, is `default_level`.
    pub fn new(default_level: CompatibilityLevel) -> State {
        State {
            default_level,
            global_level: None,
            subject_levels: BTreeMap::new(),
            schemas: BTreeMap::new(),
            ids_by_normalized: HashMap::new(),
            subjects: BTreeMap::new(),
            max_id: 0,
        }
    }

    // ----- applying records --------------------------------------------------------------------

    /// Applies one record of the log. Total: a record that does not fit the state (which the
    /// writer never produces) is ignored with a warning rather than failing the replay.
    pub fn apply(&mut self, record: &Record) {
        match record {
            Record::SchemaRegistered {
                subject,
                version,
                id,
                schema,
                ..
            } => {
                self.max_id = self.max_id.max(*id);
                let valid = match ValidSchema::parse(schema) {
                    Ok(valid) => valid,
                    Err(error) => {
                        tracing::warn!(%subject, version, id, %error, "skipping a stored schema that does not parse");
                        return;
                    }
                };
                self.ids_by_normalized.entry(valid.normalized.clone()).or_insert(*id);
                self.schemas.entry(*id).or_insert(StoredSchema { schema: valid });
                self.subjects.entry(subject.clone()).or_default().insert(
                    *version,
                    VersionEntry {
                        id: *id,
                        deleted: false,
                    },
                );
            }
            Record::VersionDeleted {
                subject,
                version,
                permanent,
            } => {
                if let Some(versions) = self.subjects.get_mut(subject) {
                    if *permanent {
                        versions.remove(version);
                    } else if let Some(entry) = versions.get_mut(version) {
                        entry.deleted = true;
                    }
                    if versions.is_empty() {
                        self.subjects.remove(subject);
                    }
                }
            }
            Record::SubjectDeleted { subject, permanent } => {
                if *permanent {
                    self.subjects.remove(subject);
                    self.subject_levels.remove(subject);
                } else if let Some(versions) = self.subjects.get_mut(subject) {
                    versions.values_mut().for_each(|entry| entry.deleted = true);
                }
            }
            Record::CompatibilitySet { subject, compatibility } => match compatibility.parse::<CompatibilityLevel>() {
                Ok(level) => match subject {
                    Some(subject) => {
                        self.subject_levels.insert(subject.clone(), level);
                    }
                    None => self.global_level = Some(level),
                },
                Err(error) => {
                    tracing::warn!(%error, "skipping a stored unknown compatibility level")
                }
            },
            Record::CompatibilityDeleted { subject } => match subject {
                Some(subject) => {
                    self.subject_levels.remove(subject);
                }
                None => self.global_level = None,
            },
            Record::Unknown => tracing::warn!("skipping a stored record of an unknown type"),
        }
    }

    // ----- queries -----------------------------------------------------------------------------

    /// The largest id ever assigned (0 when none was).
    pub fn max_id(&self) -> u32 {
        self.max_id
    }

    /// Subject names, sorted.
    pub fn subjects(&self, filter: &SubjectFilter) -> Vec<String> {
        self.subjects
            .iter()
            .filter(|(name, _)| filter.prefix.as_deref().is_none_or(|prefix| name.starts_with(prefix)))
            .filter(|(_, versions)| {
                let live = versions.values().any(|v| !v.deleted);
                if filter.deleted_only {
                    !live
                } else {
                    live || filter.deleted
                }
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The version numbers of a subject, ascending; soft-deleted ones only if `deleted`.
    pub fn versions(&self, subject: &str, deleted: bool) -> Result<Vec<u32>, RegistryError> {
        let versions = self.visible_versions(subject, deleted)?;
        Ok(versions
            .iter()
            .filter(|(_, entry)| deleted || !entry.deleted)
            .map(|(version, _)| *version)
            .collect())
    }

    /// One version of a subject; soft-deleted ones only if `deleted`.
    pub fn version(&self, subject: &str, spec: VersionSpec, deleted: bool) -> Result<SubjectVersion, RegistryError> {
        let versions = self.visible_versions(subject, deleted)?;
        let found = match spec {
            VersionSpec::Latest => versions.iter().rev().find(|(_, entry)| deleted || !entry.deleted),
            VersionSpec::Number(n) => versions
                .get_key_value(&n)
                .filter(|(_, entry)| deleted || !entry.deleted),
        };
        let (version, entry) = found.ok_or(match spec {
            VersionSpec::Number(n) => RegistryError::VersionNotFound(n),
            VersionSpec::Latest => RegistryError::SubjectNotFound(subject.to_owned()),
        })?;
        self.subject_version(subject, *version, entry.id)
    }

    /// The schema text of an id, if any version (live or soft-deleted) still holds it.
    pub fn schema_by_id(&self, id: u32) -> Result<&str, RegistryError> {
        if !self.id_in_use(id) {
            return Err(RegistryError::SchemaIdNotFound(id));
        }
        self.schemas
            .get(&id)
            .map(|stored| stored.schema.text.as_str())
            .ok_or(RegistryError::SchemaIdNotFound(id))
    }

    /// The subject-version pairs that hold an id; soft-deleted ones only if `deleted`.
    pub fn versions_of_id(&self, id: u32, deleted: bool) -> Result<Vec<(String, u32)>, RegistryError> {
        if !self.id_in_use(id) {
            return Err(RegistryError::SchemaIdNotFound(id));
        }
        Ok(self
            .subjects
            .iter()
            .flat_map(|(subject, versions)| {
                versions
                    .iter()
                    .filter(move |(_, entry)| entry.id == id && (deleted || !entry.deleted))
                    .map(move |(version, _)| (subject.clone(), *version))
            })
            .collect())
    }

    /// The version of `subject` that holds `schema`; soft-deleted ones only if `deleted`.
    pub fn lookup(&self, subject: &str, schema: &ValidSchema, deleted: bool) -> Result<SubjectVersion, RegistryError> {
        let versions = self.visible_versions(subject, deleted)?;
        let id = self
            .ids_by_normalized
            .get(&schema.normalized)
            .ok_or(RegistryError::SchemaNotFound)?;
        let (version, entry) = versions
            .iter()
            .rev()
            .find(|(_, entry)| entry.id == *id && (deleted || !entry.deleted))
            .ok_or(RegistryError::SchemaNotFound)?;
        self.subject_version(subject, *version, entry.id)
    }

    /// The global compatibility level.
    pub fn global_level(&self) -> CompatibilityLevel {
        self.global_level.unwrap_or(self.default_level)
    }

    /// The subject's own compatibility level, if it has one.
    pub fn subject_level(&self, subject: &str) -> Option<CompatibilityLevel> {
        self.subject_levels.get(subject).copied()
    }

    /// The level a subject is held to: its own, else the global one.
    pub fn effective_level(&self, subject: &str) -> CompatibilityLevel {
        self.subject_level(subject).unwrap_or_else(|| self.global_level())
    }

    /// Why `schema` would be incompatible with `subject` (empty: compatible), checked against the
    /// given version, or against every live version when `version` is `None`.
    pub fn test_compatibility(
        &self,
        subject: &str,
        version: Option<VersionSpec>,
        schema: &ValidSchema,
    ) -> Result<Vec<String>, RegistryError> {
        let level = self.effective_level(subject);
        let live = self.live_schemas(subject);
        match version {
            None => Ok(check_all(level, schema, &live)),
            Some(spec) => match self.version(subject, spec, false) {
                Ok(found) => {
                    let old = self.schemas.get(&found.id).map(|stored| &stored.schema.parsed);
                    Ok(match old {
                        Some(old) => compatibility::check(level, &schema.parsed, &[old]),
                        None => Vec::new(),
                    })
                }
                // Testing against the latest version of a subject that has none passes, as
                // Confluent's does.
                Err(RegistryError::SubjectNotFound(_)) if spec == VersionSpec::Latest => Ok(Vec::new()),
                Err(error) => Err(error),
            },
        }
    }

    // ----- planning changes --------------------------------------------------------------------

    /// Registers `schema` under `subject`, unless the subject already holds it or it breaks the
    /// subject's compatibility level.
    pub fn plan_register(&self, subject: &str, schema: &ValidSchema) -> Result<Registration, RegistryError> {
        let existing_id = self.ids_by_normalized.get(&schema.normalized).copied();
        let versions = self.subjects.get(subject);
        if let (Some(id), Some(versions)) = (existing_id, versions) {
            if let Some((version, _)) = versions
                .iter()
                .rev()
                .find(|(_, entry)| entry.id == id && !entry.deleted)
            {
                return Ok(Registration::Existing { id, version: *version });
            }
        }
        let level = self.effective_level(subject);
        let messages = check_all(level, schema, &self.live_schemas(subject));
        if !messages.is_empty() {
            return Err(RegistryError::Incompatible {
                subject: subject.to_owned(),
                messages,
            });
        }
        let id = existing_id.unwrap_or(self.max_id + 1);
        let version = versions
            .and_then(|versions| versions.keys().next_back().copied())
            .unwrap_or(0)
            + 1;
        let stored_text = self
            .schemas
            .get(&id)
            .map(|stored| stored.schema.text.clone())
            .unwrap_or_else(|| schema.text.clone());
        Ok(Registration::New {
            id,
            version,
            record: Record::SchemaRegistered {
                subject: subject.to_owned(),
                version,
                id,
                schema_type: AVRO.to_owned(),
                schema: stored_text,
            },
        })
    }

    /// Deletes every version of a subject: soft, or permanently after a soft delete. Returns the
    /// versions deleted and the record to append.
    pub fn plan_delete_subject(&self, subject: &str, permanent: bool) -> Result<(Vec<u32>, Record), RegistryError> {
        let versions = self
            .subjects
            .get(subject)
            .filter(|versions| !versions.is_empty())
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_owned()))?;
        let live: Vec<u32> = versions
            .iter()
            .filter(|(_, entry)| !entry.deleted)
            .map(|(version, _)| *version)
            .collect();
        let deleted = if permanent {
            if !live.is_empty() {
                return Err(RegistryError::SubjectNotSoftDeleted(subject.to_owned()));
            }
            versions.keys().copied().collect()
        } else {
            if live.is_empty() {
                return Err(RegistryError::SubjectSoftDeleted(subject.to_owned()));
            }
            live
        };
        Ok((
            deleted,
            Record::SubjectDeleted {
                subject: subject.to_owned(),
                permanent,
            },
        ))
    }

    /// Deletes one version: soft, or permanently after a soft delete. Returns the version deleted
    /// and the record to append.
    pub fn plan_delete_version(
        &self,
        subject: &str,
        spec: VersionSpec,
        permanent: bool,
    ) -> Result<(u32, Record), RegistryError> {
        // A soft delete only sees live versions, a permanent one sees soft-deleted ones too.
        let versions = self.visible_versions(subject, permanent)?;
        let (version, entry) = match spec {
            VersionSpec::Latest => versions.iter().rev().find(|(_, entry)| permanent || !entry.deleted),
            VersionSpec::Number(n) => versions.get_key_value(&n),
        }
        .ok_or(match spec {
            VersionSpec::Number(n) => RegistryError::VersionNotFound(n),
            VersionSpec::Latest => RegistryError::SubjectNotFound(subject.to_owned()),
        })?;
        match (permanent, entry.deleted) {
            (false, true) => Err(RegistryError::VersionSoftDeleted(subject.to_owned(), *version)),
            (true, false) => Err(RegistryError::VersionNotSoftDeleted(subject.to_owned(), *version)),
            _ => Ok((
                *version,
                Record::VersionDeleted {
                    subject: subject.to_owned(),
                    version: *version,
                    permanent,
                },
            )),
        }
    }

    /// Sets the compatibility level of a subject, or the global one.
    pub fn plan_set_level(&self, subject: Option<&str>, level: CompatibilityLevel) -> Record {
        Record::CompatibilitySet {
            subject: subject.map(str::to_owned),
            compatibility: level.as_str().to_owned(),
        }
    }

    /// Removes a subject's own compatibility level, or resets the global one to the default.
    /// Returns the level in force before and the record to append.
    pub fn plan_delete_level(&self, subject: Option<&str>) -> Result<(CompatibilityLevel, Record), RegistryError> {
        let previous = match subject {
            Some(subject) => self
                .subject_level(subject)
                .ok_or_else(|| RegistryError::SubjectLevelNotConfigured(subject.to_owned()))?,
            None => self.global_level(),
        };
        Ok((
            previous,
            Record::CompatibilityDeleted {
                subject: subject.map(str::to_owned),
            },
        ))
    }

    // ----- helpers -----------------------------------------------------------------------------

    /// The versions of a subject that has at least one version visible under `deleted`.
    fn visible_versions(&self, subject: &str, deleted: bool) -> Result<&BTreeMap<u32, VersionEntry>, RegistryError> {
        self.subjects
            .get(subject)
            .filter(|versions| versions.values().any(|entry| deleted || !entry.deleted))
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_owned()))
    }

    fn subject_version(&self, subject: &str, version: u32, id: u32) -> Result<SubjectVersion, RegistryError> {
        let stored = self.schemas.get(&id).ok_or(RegistryError::SchemaIdNotFound(id))?;
        Ok(SubjectVersion {
            subject: subject.to_owned(),
            version,
            id,
            schema: stored.schema.text.clone(),
        })
    }

    fn id_in_use(&self, id: u32) -> bool {
        self.subjects
            .values()
            .any(|versions| versions.values().any(|entry| entry.id == id))
    }

    /// The parsed schemas of a subject's live versions, oldest first.
    fn live_schemas(&self, subject: &str) -> Vec<&apache_avro::Schema> {
        self.subjects
            .get(subject)
            .map(|versions| {
                versions
                    .values()
                    .filter(|entry| !entry.deleted)
                    .filter_map(|entry| self.schemas.get(&entry.id))
                    .map(|stored| &stored.schema.parsed)
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn check_all(level: CompatibilityLevel, schema: &ValidSchema, previous: &[&apache_avro::Schema]) -> Vec<String> {
    compatibility::check(level, &schema.parsed, previous)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"string"}]}"#;
    const V2: &str = r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"string"},{"name":"note","type":"string","default":""}]}"#;
    const V2_REQUIRED: &str =
        r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"string"},{"name":"note","type":"string"}]}"#;
    const OTHER: &str = r#"{"type":"record","name":"Payment","fields":[{"name":"amount","type":"long"}]}"#;

    fn schema(text: &str) -> ValidSchema {
        ValidSchema::parse(text).expect("test schema is valid")
    }

    /// Plans a registration and applies it, like the registry does after the write succeeded.
    fn register(state: &mut State, subject: &str, text: &str) -> Result<u32, RegistryError> {
        match state.plan_register(subject, &schema(text))? {
            Registration::Existing { id, .. } => Ok(id),
            Registration::New { id, record, .. } => {
                state.apply(&record);
                Ok(id)
            }
        }
    }

    fn delete_subject(state: &mut State, subject: &str, permanent: bool) -> Vec<u32> {
        let (versions, record) = state
            .plan_delete_subject(subject, permanent)
            .expect("delete is allowed");
        state.apply(&record);
        versions
    }

    fn fresh() -> State {
        State::new(CompatibilityLevel::Backward)
    }

    #[test]
    fn the_first_schema_gets_id_1_and_version_1() {
        let mut state = fresh();
        assert_eq!(register(&mut state, "s", V1), Ok(1));
        let found = state.version("s", VersionSpec::Latest, false).expect("found");
        assert_eq!(
            found,
            SubjectVersion {
                subject: "s".into(),
                version: 1,
                id: 1,
                schema: V1.into()
            }
        );
    }

    #[test]
    fn registering_the_same_schema_again_returns_the_same_id_and_adds_no_version() {
        let mut state = fresh();
        let first = register(&mut state, "s", V1);
        let again = register(&mut state, "s", &format!("  {V1}\n"));
        assert_eq!(first, again);
        assert_eq!(state.versions("s", false), Ok(vec![1]));
    }

    #[test]
    fn the_same_schema_under_another_subject_reuses_the_global_id() {
        let mut state = fresh();
        assert_eq!(register(&mut state, "a", V1), Ok(1));
        assert_eq!(register(&mut state, "b", OTHER), Ok(2));
        assert_eq!(register(&mut state, "c", V1), Ok(1));
        assert_eq!(state.versions("c", false), Ok(vec![1]));
        assert_eq!(
            state.versions_of_id(1, false),
            Ok(vec![("a".into(), 1), ("c".into(), 1)])
        );
    }

    #[test]
    fn an_incompatible_schema_is_refused_under_backward() {
        let mut state = fresh();
        register(&mut state, "s", V1).expect("registered");
        let refused = register(&mut state, "s", V2_REQUIRED);
        assert!(matches!(refused, Err(RegistryError::Incompatible { .. })));
        assert_eq!(register(&mut state, "s", V2), Ok(2));
        assert_eq!(state.versions("s", false), Ok(vec![1, 2]));
    }

    #[test]
    fn level_none_on_the_subject_lets_anything_in() {
        let mut state = fresh();
        register(&mut state, "s", V1).expect("registered");
        state.apply(&state.plan_set_level(Some("s"), CompatibilityLevel::None));
        assert_eq!(state.effective_level("s"), CompatibilityLevel::None);
        assert_eq!(state.effective_level("t"), CompatibilityLevel::Backward);
        assert!(register(&mut state, "s", V2_REQUIRED).is_ok());
    }

    #[test]
    fn ids_are_never_reused_after_a_permanent_delete() {
        let mut state = fresh();
        register(&mut state, "s", V1).expect("registered");
        delete_subject(&mut state, "s", false);
        delete_subject(&mut state, "s", true);
        assert_eq!(state.schema_by_id(1), Err(RegistryError::SchemaIdNotFound(1)));
        assert_eq!(register(&mut state, "t", OTHER), Ok(2));
        // The same schema as before comes back under its old id.
        assert_eq!(register(&mut state, "t2", V1), Ok(1));
    }

    #[test]
    fn soft_deleted_versions_leave_listings_but_their_ids_still_resolve() {
        let mut state = fresh();
        register(&mut state, "s", V1).expect("registered");
        register(&mut state, "s", V2).expect("registered");
        let (version, record) = state
            .plan_delete_version("s", VersionSpec::Number(1), false)
            .expect("allowed");
        assert_eq!(version, 1);
        state.apply(&record);
        assert_eq!(state.versions("s", false), Ok(vec![2]));
        assert_eq!(state.versions("s", true), Ok(vec![1, 2]));
        assert_eq!(state.schema_by_id(1), Ok(V1));
        assert_eq!(
            state.version("s", VersionSpec::Number(1), false),
            Err(RegistryError::VersionNotFound(1))
        );
        assert!(state.version("s", VersionSpec::Number(1), true).is_ok());
    }

    #[test]
    fn a_soft_deleted_subject_is_not_listed_and_new_versions_continue_its_numbering() {
        let mut state = fresh();
        register(&mut state, "s", V1).expect("registered");
        assert_eq!(delete_subject(&mut state, "s", false), vec![1]);
        assert_eq!(state.subjects(&SubjectFilter::default()), Vec::<String>::new());
        let with_deleted = SubjectFilter {
            deleted: true,
            ..SubjectFilter::default()
        };
        assert_eq!(state.subjects(&with_deleted), vec!["s".to_owned()]);
        assert_eq!(
            state.versions("s", false),
            Err(RegistryError::SubjectNotFound("s".into()))
        );
        // No live version any more, so the same schema makes a new version with the same id.
        assert_eq!(register(&mut state, "s", V1), Ok(1));
        assert_eq!(state.versions("s", false), Ok(vec![2]));
    }

    #[test]
    fn deletes_follow_confluents_soft_then_permanent_rules() {
        let mut state = fresh();
        register(&mut state, "s", V1).expect("registered");
        assert_eq!(
            state.plan_delete_subject("s", true).err(),
            Some(RegistryError::SubjectNotSoftDeleted("s".into()))
        );
        assert_eq!(
            state.plan_delete_version("s", VersionSpec::Number(1), true).err(),
            Some(RegistryError::VersionNotSoftDeleted("s".into(), 1))
        );
        delete_subject(&mut state, "s", false);
        assert_eq!(
            state.plan_delete_subject("s", false).err(),
            Some(RegistryError::SubjectSoftDeleted("s".into()))
        );
        assert_eq!(delete_subject(&mut state, "s", true), vec![1]);
        assert_eq!(
            state.plan_delete_subject("s", true).err(),
            Some(RegistryError::SubjectNotFound("s".into()))
        );
    }

    #[test]
    fn lookup_finds_the_version_holding_a_schema() {
        let mut state = fresh();
        register(&mut state, "s", V1).expect("registered");
        register(&mut state, "s", V2).expect("registered");
        let found = state.lookup("s", &schema(V2), false).expect("found");
        assert_eq!((found.version, found.id), (2, 2));
        assert_eq!(
            state.lookup("s", &schema(OTHER), false),
            Err(RegistryError::SchemaNotFound)
        );
        assert_eq!(
            state.lookup("nope", &schema(V1), false),
            Err(RegistryError::SubjectNotFound("nope".into()))
        );
    }

    #[test]
    fn subject_levels_fall_back_to_the_global_level_and_can_be_removed() {
        let mut state = fresh();
        state.apply(&state.plan_set_level(None, CompatibilityLevel::FullTransitive));
        assert_eq!(state.global_level(), CompatibilityLevel::FullTransitive);
        assert_eq!(state.subject_level("s"), None);
        assert_eq!(
            state.plan_delete_level(Some("s")).err(),
            Some(RegistryError::SubjectLevelNotConfigured("s".into()))
        );
        state.apply(&state.plan_set_level(Some("s"), CompatibilityLevel::Forward));
        let (previous, record) = state.plan_delete_level(Some("s")).expect("configured");
        assert_eq!(previous, CompatibilityLevel::Forward);
        state.apply(&record);
        assert_eq!(state.effective_level("s"), CompatibilityLevel::FullTransitive);
        let (_, record) = state.plan_delete_level(None).expect("always allowed");
        state.apply(&record);
        assert_eq!(state.global_level(), CompatibilityLevel::Backward);
    }

    #[test]
    fn replaying_the_records_rebuilds_the_same_answers() {
        let mut live = fresh();
        let mut log = Vec::new();
        for (subject, text) in [("a", V1), ("a", V2), ("b", OTHER)] {
            if let Registration::New { record, .. } = live.plan_register(subject, &schema(text)).expect("ok") {
                live.apply(&record);
                log.push(record);
            }
        }
        let record = live.plan_set_level(Some("b"), CompatibilityLevel::Full);
        live.apply(&record);
        log.push(record);
        let (_, record) = live.plan_delete_subject("b", false).expect("ok");
        live.apply(&record);
        log.push(record);

        let mut replayed = fresh();
        log.iter().for_each(|record| replayed.apply(record));
        assert_eq!(replayed.max_id(), live.max_id());
        assert_eq!(
            replayed.subjects(&SubjectFilter::default()),
            live.subjects(&SubjectFilter::default())
        );
        assert_eq!(replayed.versions("a", true), live.versions("a", true));
        assert_eq!(replayed.subject_level("b"), Some(CompatibilityLevel::Full));
        assert_eq!(replayed.schema_by_id(3), live.schema_by_id(3));
    }

    #[test]
    fn version_specs_accept_latest_minus_one_and_positive_numbers_only() {
        assert_eq!(VersionSpec::parse("latest"), Ok(VersionSpec::Latest));
        assert_eq!(VersionSpec::parse("-1"), Ok(VersionSpec::Latest));
        assert_eq!(VersionSpec::parse("3"), Ok(VersionSpec::Number(3)));
        for bad in ["0", "-2", "abc", "2147483648", ""] {
            assert_eq!(VersionSpec::parse(bad), Err(RegistryError::InvalidVersion(bad.into())));
        }
    }

    #[test]
    fn testing_compatibility_against_a_missing_subjects_latest_version_passes() {
        let state = fresh();
        assert_eq!(
            state.test_compatibility("nope", Some(VersionSpec::Latest), &schema(V1)),
            Ok(vec![])
        );
        assert_eq!(
            state.test_compatibility("nope", Some(VersionSpec::Number(1)), &schema(V1)),
            Err(RegistryError::SubjectNotFound("nope".into()))
        );
    }
}
