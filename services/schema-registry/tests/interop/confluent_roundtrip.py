#!/usr/bin/env python3
"""Confluent's own Python client (confluent-kafka) against our schema registry.

Driven by services/schema-registry/tests/interop.rs. Subcommands, each printing one JSON
document to stdout:

  decode URL TOPIC HEX
      Decodes Confluent-framed Avro bytes (hex) with AvroDeserializer -> the decoded dict.
  encode URL TOPIC SCHEMA_JSON VALUE_JSON
      Serializes VALUE_JSON with AvroSerializer (auto-registering SCHEMA_JSON under the
      topic-record-name subject) -> {"hex": ..., "subject": ...}.
  client URL SUBJECT SCHEMA_JSON
      Exercises SchemaRegistryClient's API (register, lookup, versions, compatibility,
      config, delete) -> a report of what each call returned.
  auth URL SUBJECT SCHEMA_JSON VALUE_JSON WRITER_INFO READER_INFO
      Against a registry with users: registers and serializes as WRITER_INFO, fetches and
      deserializes as READER_INFO (both user:password, given as basic.auth.user.info), and
      reports what is refused without credentials, with a wrong password, and to the reader.

Exits with status 3 and a hint when the Python packages are missing.
"""

import json
import sys

try:
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    from confluent_kafka.schema_registry import topic_record_subject_name_strategy
    from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
    from confluent_kafka.schema_registry.error import SchemaRegistryError
    from confluent_kafka.serialization import MessageField, SerializationContext
except ImportError as error:  # pragma: no cover - environment check
    print(
        f"missing Python packages ({error}); run: pip install -r tests/requirements.txt "
        "(from the repository root)",
        file=sys.stderr,
    )
    sys.exit(3)


def client(url, user_info=None):
    # No retries: a registry answer that is wrong should fail fast, not be retried into passing.
    conf = {"url": url, "max.retries": 0}
    if user_info is not None:
        conf["basic.auth.user.info"] = user_info
    return SchemaRegistryClient(conf)


def decode(url, topic, hex_bytes):
    deserializer = AvroDeserializer(client(url))
    ctx = SerializationContext(topic, MessageField.VALUE)
    value = deserializer(bytes.fromhex(hex_bytes), ctx)
    return value


def encode(url, topic, schema_json, value_json):
    serializer = AvroSerializer(
        client(url),
        schema_json,
        conf={
            "auto.register.schemas": True,
            "subject.name.strategy": topic_record_subject_name_strategy,
        },
    )
    ctx = SerializationContext(topic, MessageField.VALUE)
    data = serializer(json.loads(value_json), ctx)
    record_name = json.loads(schema_json)
    full_name = record_name.get("namespace", "") + "." + record_name["name"]
    return {"hex": data.hex(), "subject": f"{topic}-{full_name.lstrip('.')}"}


def error_code(call):
    try:
        call()
    except SchemaRegistryError as error:
        return {"http_status": error.http_status_code, "error_code": error.error_code}
    return None


def exercise_client(url, subject, schema_json):
    sr = client(url)
    schema = Schema(schema_json, "AVRO")
    report = {}
    report["schema_types"] = sr.get_schema_types()
    report["registered_id"] = sr.register_schema(subject, schema)
    # A fresh client: confluent-kafka 2.12.0 mangles the result of a cached re-registration.
    report["registered_again_id"] = client(url).register_schema(subject, schema)
    fetched = sr.get_schema(report["registered_id"])
    report["fetched_schema"] = json.loads(fetched.schema_str)
    report["fetched_schema_type"] = fetched.schema_type
    found = client(url).lookup_schema(subject, schema)
    report["lookup"] = {"id": found.schema_id, "version": found.version, "subject": found.subject}
    latest = sr.get_latest_version(subject)
    report["latest"] = {"id": latest.schema_id, "version": latest.version, "subject": latest.subject}
    version = client(url).get_version(subject, 1)
    report["version_1"] = {"id": version.schema_id, "version": version.version}
    report["subjects"] = sr.get_subjects()
    report["versions"] = sr.get_versions(subject)
    report["schema_versions"] = [
        {"subject": v.subject, "version": v.version}
        for v in sr.get_schema_versions(report["registered_id"])
    ]
    report["subjects_by_id"] = sr.get_subjects_by_schema_id(report["registered_id"])
    report["compatible_with_itself"] = sr.test_compatibility(subject, schema)
    report["global_level"] = sr.get_compatibility()
    report["set_level"] = sr.set_compatibility(subject, "full_transitive")
    report["subject_level"] = sr.get_compatibility(subject)
    report["unknown_id"] = error_code(lambda: client(url).get_schema(999999))
    report["unknown_subject"] = error_code(lambda: client(url).get_latest_version("no-such-subject"))
    report["invalid_schema"] = error_code(
        lambda: client(url).register_schema(subject, Schema('{"type": "nonsense"}', "AVRO"))
    )
    report["deleted_versions"] = sr.delete_subject(subject)
    report["permanently_deleted_versions"] = sr.delete_subject(subject, permanent=True)
    report["subjects_after_delete"] = sr.get_subjects()
    return report


def exercise_auth(url, subject, schema_json, value_json, writer_info, reader_info):
    writer, reader = client(url, writer_info), client(url, reader_info)
    schema = Schema(schema_json, "AVRO")
    report = {}
    report["registered_id"] = writer.register_schema(subject, schema)
    report["fetched_by_reader"] = json.loads(reader.get_schema(report["registered_id"]).schema_str)
    report["reader_latest_version"] = reader.get_latest_version(subject).version
    report["reader_subjects"] = reader.get_subjects()

    topic = "auth"
    ctx = SerializationContext(topic, MessageField.VALUE)
    serializer = AvroSerializer(
        writer,
        schema_json,
        conf={
            "auto.register.schemas": True,
            "subject.name.strategy": topic_record_subject_name_strategy,
        },
    )
    data = serializer(json.loads(value_json), ctx)
    report["round_trip"] = AvroDeserializer(reader)(data, ctx)

    wrong_password = writer_info.split(":", 1)[0] + ":wrong-password"
    report["anonymous_read"] = error_code(lambda: client(url).get_subjects())
    report["anonymous_register"] = error_code(
        lambda: client(url).register_schema(subject + "-other", schema)
    )
    report["wrong_password_read"] = error_code(lambda: client(url, wrong_password).get_subjects())
    report["reader_register"] = error_code(
        lambda: client(url, reader_info).register_schema(subject + "-other", schema)
    )
    report["reader_set_level"] = error_code(
        lambda: client(url, reader_info).set_compatibility(subject, "none")
    )
    report["subjects_after"] = writer.get_subjects()
    return report


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    command, args = argv[1], argv[2:]
    if command == "decode" and len(args) == 3:
        result = decode(*args)
    elif command == "encode" and len(args) == 4:
        result = encode(*args)
    elif command == "client" and len(args) == 3:
        result = exercise_client(*args)
    elif command == "auth" and len(args) == 6:
        result = exercise_auth(*args)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
