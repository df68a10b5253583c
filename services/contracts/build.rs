//! Generates the Rust event types from the Avro schemas in `../../schemas/`.
//!
//! Every `<event_type>.v<N>.avsc` file is read. For the latest version of each event type a
//! struct named after the record is generated, plus one struct per nested named record, into
//! `$OUT_DIR/events.rs`; `$OUT_DIR/schema_info.rs` embeds every version's text (`include_str!`)
//! per event type. Anything the generator does not understand fails the build with a message
//! naming the file and field, rather than producing a type that disagrees with the schema.
//!
//! Only `serde_json` is used here: Avro validity itself is checked by the crate's tests with
//! `apache_avro`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

fn main() {
    if let Err(message) = run() {
        // `cargo::error` fails the build and shows the message as an error.
        for line in message.lines() {
            println!("cargo::error=saga-contracts: {line}");
        }
    }
}

/// One `.avsc` file.
struct SchemaFile {
    file_name: String,
    path: PathBuf,
    event_type: String,
    version: u32,
    json: Value,
}

type Result<T, E = String> = std::result::Result<T, E>;

fn run() -> Result<()> {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env("OUT_DIR")?);
    let schema_dir = manifest_dir.join("../../schemas");
    let schema_dir = schema_dir
        .canonicalize()
        .map_err(|e| format!("cannot open the schema directory {}: {e}", schema_dir.display()))?;

    // The directory itself, so that added or removed files rerun the generator too.
    println!("cargo::rerun-if-changed={}", schema_dir.display());
    let files = read_schema_files(&schema_dir)?;
    let by_event_type = group_by_event_type(files)?;

    let mut generator = Generator::default();
    for versions in by_event_type.values() {
        let latest = versions.last().expect("groups are never empty");
        generator.event(latest)?;
    }

    write(&out_dir.join("events.rs"), &generator.code)?;
    write(&out_dir.join("schema_info.rs"), &schema_info(&by_event_type)?)?;
    Ok(())
}

fn env(name: &str) -> Result<String> {
    std::env::var(name).map_err(|e| format!("environment variable {name}: {e}"))
}

fn write(path: &Path, code: &str) -> Result<()> {
    std::fs::write(path, code).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn read_schema_files(dir: &Path) -> Result<Vec<SchemaFile>> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?.path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        let Some(stem) = file_name.strip_suffix(".avsc") else {
            continue;
        };
        println!("cargo::rerun-if-changed={}", path.display());
        let (event_type, version) = stem
            .rsplit_once(".v")
            .and_then(|(event_type, n)| Some((event_type, n.parse::<u32>().ok()?)))
            .filter(|(event_type, n)| !event_type.is_empty() && *n >= 1)
            .ok_or_else(|| format!("{file_name}: schema files must be named <event_type>.v<N>.avsc, N >= 1"))?;
        let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| format!("{file_name}: not valid JSON: {e}"))?;
        let attribute = json.get("event_type").and_then(Value::as_str);
        if attribute != Some(event_type) {
            return Err(format!(
                "{file_name}: the record's \"event_type\" attribute is {attribute:?}, \
                 the file name says \"{event_type}\""
            ));
        }
        if json.get("type").and_then(Value::as_str) != Some("record") {
            return Err(format!("{file_name}: the top-level schema must be a record"));
        }
        let event_type = event_type.to_owned();
        files.push(SchemaFile {
            file_name,
            path,
            event_type,
            version,
            json,
        });
    }
    if files.is_empty() {
        return Err(format!("no .avsc files in {}", dir.display()));
    }
    Ok(files)
}

/// Groups the files by event type, versions ascending; checks that the versions of each event
/// type are 1..=N without gaps and that all of them name the same record.
fn group_by_event_type(files: Vec<SchemaFile>) -> Result<BTreeMap<String, Vec<SchemaFile>>> {
    let mut groups: BTreeMap<String, Vec<SchemaFile>> = BTreeMap::new();
    for file in files {
        groups.entry(file.event_type.clone()).or_default().push(file);
    }
    for (event_type, versions) in &mut groups {
        versions.sort_by_key(|f| f.version);
        for (expected, file) in (1..).zip(versions.iter()) {
            if file.version != expected {
                return Err(format!(
                    "{event_type}: versions must be numbered 1, 2, ... without gaps or \
                     duplicates; expected v{expected}, found {}",
                    file.file_name
                ));
            }
        }
        let first = &versions[0];
        let first_name = full_name(&first.json, "").map_err(|e| format!("{}: {e}", first.file_name))?;
        for file in &versions[1..] {
            let name = full_name(&file.json, "").map_err(|e| format!("{}: {e}", file.file_name))?;
            if name != first_name {
                return Err(format!(
                    "{event_type}: {} names the record {name}, but {} names it {first_name}; \
                     all versions of an event must keep one record name",
                    file.file_name, first.file_name
                ));
            }
        }
    }
    Ok(groups)
}

/// Full name of a named schema object: `name` if it contains a dot, else `namespace.name`
/// (its own namespace, or the enclosing one).
fn full_name(schema: &Value, enclosing_namespace: &str) -> Result<String> {
    let name = schema
        .get("name")
        .and_then(Value::as_str)
        .ok_or("a named type has no \"name\"")?;
    if name.contains('.') {
        return Ok(name.to_owned());
    }
    let namespace = schema
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or(enclosing_namespace);
    Ok(if namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}.{name}")
    })
}

fn split_full_name(full_name: &str) -> (&str, &str) {
    full_name.rsplit_once('.').unwrap_or(("", full_name))
}

/// Names the generated code or the crate already uses; a record may not take them.
const RESERVED_TYPE_NAMES: &[&str] = &[
    "Self",
    "bool",
    "char",
    "str",
    "f32",
    "f64",
    "i8",
    "i16",
    "i32",
    "i64",
    "i128",
    "isize",
    "u8",
    "u16",
    "u32",
    "u64",
    "u128",
    "usize",
    "ContractError",
    "Envelope",
    "Event",
    "EventId",
    "EventSchemaInfo",
    "EventType",
    "OrderId",
    "PaymentId",
    "Result",
    "SagaEvent",
    "SchemaVersion",
    "Topic",
    "AdjustmentId",
];

const RUST_KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "dyn", "else", "enum", "extern", "false", "fn", "for", "gen",
    "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return", "static", "struct",
    "trait", "true", "type", "unsafe", "use", "where", "while", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "try", "typeof", "unsized", "virtual", "yield",
];

/// Keywords that cannot even be raw identifiers.
const NON_RAW_KEYWORDS: &[&str] = &["crate", "self", "super", "Self", "_"];

/// A generated struct, remembered to detect conflicting definitions of one name.
struct Generated {
    full_name: String,
    /// The record's JSON with the namespace made explicit, for comparison.
    definition: Value,
    file_name: String,
}

/// A field of a generated record, as far as the envelope accessors need it.
struct FieldInfo {
    name: String,
    rust_type: String,
    timestamp_millis: bool,
}

#[derive(Default)]
struct Generator {
    code: String,
    /// Struct name (record simple name) → where it came from.
    structs: BTreeMap<String, Generated>,
}

/// Per-file state: named types defined so far in this file (full name → struct name) and
/// records whose fields are being generated (to reject recursion).
struct FileScope<'a> {
    file_name: &'a str,
    names: BTreeMap<String, String>,
    in_progress: BTreeSet<String>,
}

const STRING: &str = "::std::string::String";

/// The fields of the envelope every event carries; the generated struct holds them as one
/// flattened `envelope: crate::Envelope` field.
const ENVELOPE_FIELDS: [&str; 4] = ["event_id", "order_id", "causation_id", "occurred_at"];

/// String fields that hold UUIDs of a known kind, and the typed id they become.
const ID_FIELDS: &[(&str, &str)] = &[
    ("payment_id", "crate::PaymentId"),
    ("adjustment_id", "crate::AdjustmentId"),
];

impl Generator {
    /// Generates the latest version of one event type: its record, nested records, and the
    /// envelope accessors.
    fn event(&mut self, file: &SchemaFile) -> Result<()> {
        let mut scope = FileScope {
            file_name: &file.file_name,
            names: BTreeMap::new(),
            in_progress: BTreeSet::new(),
        };
        let object = file.json.as_object().expect("checked to be a record");
        let (struct_name, fields) = self.record(object, "", &mut scope, "")?;
        self.envelope(&file.file_name, &struct_name, &fields)
    }

    /// Generates the struct for a record schema object (unless an identical one exists) and
    /// returns its name and fields.
    fn record(
        &mut self,
        object: &Map<String, Value>,
        enclosing_namespace: &str,
        scope: &mut FileScope<'_>,
        context: &str,
    ) -> Result<(String, Vec<FieldInfo>)> {
        let schema = Value::Object(object.clone());
        let full_name = full_name(&schema, enclosing_namespace).map_err(|e| at(scope, context, &e))?;
        let (namespace, struct_name) = split_full_name(&full_name);
        let (namespace, struct_name) = (namespace.to_owned(), struct_name.to_owned());
        if RESERVED_TYPE_NAMES.contains(&struct_name.as_str())
            || RUST_KEYWORDS.contains(&struct_name.as_str())
            || NON_RAW_KEYWORDS.contains(&struct_name.as_str())
        {
            return Err(at(
                scope,
                context,
                &format!("the record name \"{struct_name}\" cannot be a Rust type name here"),
            ));
        }
        if scope.names.contains_key(&full_name) {
            return Err(at(
                scope,
                context,
                &format!("the record {full_name} is defined twice in one schema"),
            ));
        }
        scope.names.insert(full_name.clone(), struct_name.clone());
        scope.in_progress.insert(full_name.clone());

        let fields_json = object
            .get("fields")
            .and_then(Value::as_array)
            .ok_or_else(|| at(scope, context, &format!("record {full_name} has no \"fields\" array")))?;
        let mut fields = Vec::new();
        let mut body = String::new();
        let mut seen = BTreeSet::new();
        let top_level = context.is_empty();
        for field in fields_json {
            let name = field
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| at(scope, context, &format!("a field of {full_name} has no name")))?;
            let field_context = format!("{struct_name}.{name}");
            if !seen.insert(name) {
                return Err(at(scope, &field_context, "duplicate field name"));
            }
            let identifier = field_identifier(name).map_err(|e| at(scope, &field_context, &e))?;
            let field_type = field
                .get("type")
                .ok_or_else(|| at(scope, &field_context, "the field has no \"type\""))?;
            let mut rust_type = self.rust_type(field_type, &namespace, scope, &field_context)?;
            if top_level && ENVELOPE_FIELDS.contains(&name) {
                // Checked and emitted as the flattened envelope by `envelope`.
                fields.push(FieldInfo {
                    name: name.to_owned(),
                    rust_type,
                    timestamp_millis: is_timestamp_millis(field_type),
                });
                continue;
            }
            if let Some((_, id_type)) = ID_FIELDS.iter().find(|(id_field, _)| *id_field == name) {
                let nullable_string = format!("::std::option::Option<{STRING}>");
                rust_type = match rust_type.as_str() {
                    STRING => (*id_type).to_owned(),
                    nullable if nullable == nullable_string => format!("::std::option::Option<{id_type}>"),
                    _ => {
                        return Err(at(
                            scope,
                            &field_context,
                            "an id field must be a string or [\"null\", \"string\"]",
                        ))
                    }
                };
            }
            if let Some(doc) = field.get("doc") {
                let doc = doc
                    .as_str()
                    .ok_or_else(|| at(scope, &field_context, "\"doc\" must be a string"))?;
                doc_comment(&mut body, "    ", doc);
            }
            writeln!(body, "    pub {identifier}: {rust_type},").expect("writing to a String");
            fields.push(FieldInfo {
                name: name.to_owned(),
                rust_type,
                timestamp_millis: is_timestamp_millis(field_type),
            });
        }
        scope.in_progress.remove(&full_name);
        if top_level {
            let order_type = envelope_order_type(scope.file_name, &fields)?;
            body.insert_str(
                0,
                &format!(
                    "    /// Event id, order id, causation id and occurred-at.\n    \
                     #[serde(flatten)]\n    pub envelope: crate::Envelope<{order_type}>,\n"
                ),
            );
        }
        if self.already_defined(object, &namespace, &struct_name, &full_name, scope.file_name)? {
            return Ok((struct_name, fields));
        }

        let mut code = type_doc(object, "record", &full_name, scope.file_name);
        code.push_str("#[derive(Debug, Clone, PartialEq, ::serde::Serialize, ::serde::Deserialize)]\n");
        writeln!(code, "pub struct {struct_name} {{\n{body}}}\n").expect("writing to a String");
        self.code.push_str(&code);
        Ok((struct_name, fields))
    }

    /// Whether the named type was generated already from an identical definition (then it is
    /// not generated again); an error if another schema defines the name differently. Otherwise
    /// remembers this definition and returns `false`.
    fn already_defined(
        &mut self,
        object: &Map<String, Value>,
        namespace: &str,
        type_name: &str,
        full_name: &str,
        file_name: &str,
    ) -> Result<bool> {
        let mut definition = object.clone();
        definition.insert("namespace".into(), Value::String(namespace.to_owned()));
        definition.insert("name".into(), Value::String(type_name.to_owned()));
        let definition = Value::Object(definition);
        if let Some(existing) = self.structs.get(type_name) {
            if existing.full_name == full_name && existing.definition == definition {
                return Ok(true);
            }
            return Err(format!(
                "the name {type_name} is defined differently in {} ({}) and {file_name} ({full_name}); \
                 a named type must have one definition across the latest schemas",
                existing.file_name, existing.full_name
            ));
        }
        self.structs.insert(
            type_name.to_owned(),
            Generated {
                full_name: full_name.to_owned(),
                definition,
                file_name: file_name.to_owned(),
            },
        );
        Ok(false)
    }

    /// Generates a Rust enum for an Avro enum (unless an identical one exists) and returns its
    /// name. Variants are the symbols in UpperCamelCase; serde uses the symbols themselves.
    fn enumeration(
        &mut self,
        object: &Map<String, Value>,
        enclosing_namespace: &str,
        scope: &mut FileScope<'_>,
        context: &str,
    ) -> Result<String> {
        let schema = Value::Object(object.clone());
        let full_name = full_name(&schema, enclosing_namespace).map_err(|e| at(scope, context, &e))?;
        let (namespace, enum_name) = split_full_name(&full_name);
        let (namespace, enum_name) = (namespace.to_owned(), enum_name.to_owned());
        if RESERVED_TYPE_NAMES.contains(&enum_name.as_str()) || RUST_KEYWORDS.contains(&enum_name.as_str()) {
            return Err(at(
                scope,
                context,
                &format!("the enum name \"{enum_name}\" cannot be a Rust type name here"),
            ));
        }
        if scope.names.insert(full_name.clone(), enum_name.clone()).is_some() {
            return Err(at(
                scope,
                context,
                &format!("{full_name} is defined twice in one schema"),
            ));
        }
        let symbols: Vec<&str> = object
            .get("symbols")
            .and_then(Value::as_array)
            .map(|symbols| symbols.iter().filter_map(Value::as_str).collect())
            .filter(|symbols: &Vec<&str>| !symbols.is_empty())
            .ok_or_else(|| {
                at(
                    scope,
                    context,
                    &format!("enum {full_name} needs a non-empty \"symbols\" array"),
                )
            })?;
        if let Some(default) = object.get("default") {
            if !default.as_str().is_some_and(|d| symbols.contains(&d)) {
                return Err(at(
                    scope,
                    context,
                    &format!("enum {full_name}: the default is not one of its symbols"),
                ));
            }
        }
        if self.already_defined(object, &namespace, &enum_name, &full_name, scope.file_name)? {
            return Ok(enum_name);
        }
        let mut variants = String::new();
        let mut names = String::new();
        let mut all = String::new();
        for symbol in &symbols {
            let variant = upper_camel(symbol).map_err(|e| at(scope, context, &e))?;
            writeln!(variants, "    #[serde(rename = {symbol:?})]\n    {variant},").expect("writing to a String");
            writeln!(names, "            {enum_name}::{variant} => {symbol:?},").expect("writing to a String");
            write!(all, "{enum_name}::{variant}, ").expect("writing to a String");
        }
        let mut code = type_doc(object, "enum", &full_name, scope.file_name);
        writeln!(
            code,
            "#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ::serde::Serialize, ::serde::Deserialize)]
pub enum {enum_name} {{
{variants}}}

impl {enum_name} {{
    /// Every symbol, in schema order.
    pub const ALL: [{enum_name}; {count}] = [{all}];

    /// The Avro symbol.
    pub fn as_str(self) -> &'static str {{
        match self {{
{names}        }}
    }}
}}

impl ::std::fmt::Display for {enum_name} {{
    fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {{
        f.write_str(self.as_str())
    }}
}}
",
            count = symbols.len(),
        )
        .expect("writing to a String");
        self.code.push_str(&code);
        Ok(enum_name)
    }

    /// The Rust type of an Avro type.
    fn rust_type(
        &mut self,
        schema: &Value,
        namespace: &str,
        scope: &mut FileScope<'_>,
        context: &str,
    ) -> Result<String> {
        match schema {
            Value::String(name) => match name.as_str() {
                "string" => Ok(STRING.to_owned()),
                "long" => Ok("i64".to_owned()),
                "int" => Ok("i32".to_owned()),
                "boolean" => Ok("bool".to_owned()),
                "double" => Ok("f64".to_owned()),
                "null" | "float" | "bytes" => Err(unsupported(scope, context, schema)),
                reference => {
                    let full_name = if reference.contains('.') || namespace.is_empty() {
                        reference.to_owned()
                    } else {
                        format!("{namespace}.{reference}")
                    };
                    let found = scope
                        .names
                        .get(&full_name)
                        .or_else(|| scope.names.get(reference))
                        .cloned();
                    match found {
                        Some(_) if scope.in_progress.contains(&full_name) => Err(at(
                            scope,
                            context,
                            &format!("recursive record {full_name} is not supported"),
                        )),
                        Some(struct_name) => Ok(struct_name),
                        None => Err(at(
                            scope,
                            context,
                            &format!(
                                "unknown type \"{reference}\" (named types must be defined earlier in the same file)"
                            ),
                        )),
                    }
                }
            },
            Value::Array(branches) => match branches.as_slice() {
                [null, inner] if null == "null" && inner != "null" && !inner.is_array() => {
                    let inner = self.rust_type(inner, namespace, scope, context)?;
                    Ok(format!("::std::option::Option<{inner}>"))
                }
                _ => Err(unsupported(scope, context, schema)),
            },
            Value::Object(object) => {
                let Some(Value::String(type_name)) = object.get("type") else {
                    return Err(unsupported(scope, context, schema));
                };
                if let Some(logical) = object.get("logicalType") {
                    return if type_name == "long" && logical == "timestamp-millis" {
                        Ok("i64".to_owned())
                    } else {
                        Err(unsupported(scope, context, schema))
                    };
                }
                match type_name.as_str() {
                    "record" => Ok(self.record(object, namespace, scope, context)?.0),
                    "array" => {
                        let items = object
                            .get("items")
                            .ok_or_else(|| at(scope, context, "an array has no \"items\""))?;
                        let items = self.rust_type(items, namespace, scope, context)?;
                        Ok(format!("::std::vec::Vec<{items}>"))
                    }
                    "enum" => self.enumeration(object, namespace, scope, context),
                    "fixed" | "map" | "error" => Err(unsupported(scope, context, schema)),
                    primitive => self.rust_type(&Value::String(primitive.to_owned()), namespace, scope, context),
                }
            }
            _ => Err(unsupported(scope, context, schema)),
        }
    }

    /// Implements `crate::Event` for a top-level event record (its envelope was checked by
    /// [`envelope_order_type`] when the struct was generated).
    fn envelope(&mut self, file_name: &str, struct_name: &str, fields: &[FieldInfo]) -> Result<()> {
        let order_type = envelope_order_type(file_name, fields)?;
        writeln!(
            self.code,
            "impl crate::Event for {struct_name} {{
    type OrderRef = {order_type};

    fn envelope(&self) -> &crate::Envelope<{order_type}> {{
        &self.envelope
    }}
}}
"
        )
        .expect("writing to a String");
        Ok(())
    }
}

/// Checks that a top-level record carries the envelope every event must have (event id, order
/// id, causation id, occurred-at) and returns the Rust type of its order reference:
/// `crate::OrderId`, or an `Option` of it where the schema lets `order_id` be null.
fn envelope_order_type(file_name: &str, fields: &[FieldInfo]) -> Result<&'static str> {
    let field = |name: &str| fields.iter().find(|f| f.name == name);
    let missing =
        |name: &str, expected: &str| format!("{file_name}: every event needs a field \"{name}\" of type {expected}");
    let option_string = format!("::std::option::Option<{STRING}>");
    match field("event_id") {
        Some(f) if f.rust_type == STRING => {}
        _ => return Err(missing("event_id", "string")),
    }
    let order_type = match field("order_id") {
        Some(f) if f.rust_type == STRING => "crate::OrderId",
        Some(f) if f.rust_type == option_string => "::std::option::Option<crate::OrderId>",
        _ => return Err(missing("order_id", "string or [\"null\", \"string\"]")),
    };
    match field("causation_id") {
        Some(f) if f.rust_type == option_string => {}
        _ => return Err(missing("causation_id", "[\"null\", \"string\"]")),
    }
    match field("occurred_at") {
        Some(f) if f.timestamp_millis => {}
        _ => return Err(missing("occurred_at", "long with logicalType timestamp-millis")),
    }
    Ok(order_type)
}

/// `payment_declined` or `PAYMENT_DECLINED` → `PaymentDeclined`.
fn upper_camel(symbol: &str) -> Result<String> {
    let valid = symbol.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && symbol.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!("the enum symbol \"{symbol}\" cannot be a Rust variant name"));
    }
    Ok(symbol
        .split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let lower = part.to_ascii_lowercase();
            let mut chars = lower.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect())
}

fn is_timestamp_millis(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("long")
        && schema.get("logicalType").and_then(Value::as_str) == Some("timestamp-millis")
}

fn field_identifier(name: &str) -> Result<String> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid || NON_RAW_KEYWORDS.contains(&name) {
        return Err(format!("the field name \"{name}\" cannot be a Rust field name"));
    }
    Ok(if RUST_KEYWORDS.contains(&name) {
        format!("r#{name}")
    } else {
        name.to_owned()
    })
}

/// The doc comment of a generated type: the schema's `doc`, then where it came from.
fn type_doc(object: &Map<String, Value>, kind: &str, full_name: &str, file_name: &str) -> String {
    let mut code = String::new();
    if let Some(doc) = object.get("doc").and_then(Value::as_str) {
        doc_comment(&mut code, "", doc);
        code.push_str("///\n");
    }
    writeln!(
        code,
        "/// Avro {kind} `{full_name}`, generated from `schemas/{file_name}`."
    )
    .expect("writing to a String");
    code
}

fn doc_comment(out: &mut String, indent: &str, doc: &str) {
    for line in doc.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            writeln!(out, "{indent}///").expect("writing to a String");
        } else {
            writeln!(out, "{indent}/// {line}").expect("writing to a String");
        }
    }
}

fn at(scope: &FileScope<'_>, context: &str, message: &str) -> String {
    if context.is_empty() {
        format!("{}: {message}", scope.file_name)
    } else {
        format!("{} ({context}): {message}", scope.file_name)
    }
}

fn unsupported(scope: &FileScope<'_>, context: &str, schema: &Value) -> String {
    at(
        scope,
        context,
        &format!(
            "unsupported Avro type {schema}; the generator supports string, long, int, boolean, \
             double, long/timestamp-millis, [\"null\", T], arrays, enums and records"
        ),
    )
}

/// `schema_info.rs`: per event type (a static named after its record), the event type, the
/// record's full name and every version's text; plus the number of event types.
fn schema_info(by_event_type: &BTreeMap<String, Vec<SchemaFile>>) -> Result<String> {
    let mut code = String::new();
    let mut record_names = BTreeMap::new();
    for (event_type, versions) in by_event_type {
        let latest = versions.last().expect("groups are never empty");
        let record_name = full_name(&latest.json, "")?;
        let (_, struct_name) = split_full_name(&record_name);
        if let Some(other) = record_names.insert(struct_name.to_owned(), event_type) {
            return Err(format!(
                "event types {other} and {event_type} both use the record name {struct_name}"
            ));
        }
        writeln!(
            code,
            "pub(crate) static {struct_name}: crate::EventSchemaInfo = crate::EventSchemaInfo {{
    event_type: {event_type:?},
    record_name: {record_name:?},
    versions: &["
        )
        .expect("writing to a String");
        for file in versions {
            let path = file
                .path
                .to_str()
                .ok_or_else(|| format!("{}: the path is not valid UTF-8", file.path.display()))?;
            writeln!(
                code,
                "        crate::SchemaVersion {{ version: {}, json: include_str!({path:?}) }},",
                file.version
            )
            .expect("writing to a String");
        }
        code.push_str("    ],\n};\n\n");
    }
    writeln!(
        code,
        "/// How many event types `schemas/` defines.\npub(crate) const EVENT_TYPE_COUNT: usize = {};",
        by_event_type.len()
    )
    .expect("writing to a String");
    Ok(code)
}
