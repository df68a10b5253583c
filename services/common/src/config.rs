//! Typed configuration shared by every service, loaded from command-line flags or environment
//! variables with defaults that match the local stack.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use kafka_security::KafkaSecurity;
use saga_contracts::Topic;

/// How to reach the Kafka cluster and how topics are laid out.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaConfig {
    /// Comma-separated bootstrap servers.
    #[arg(
        long = "kafka-bootstrap-servers",
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap_servers: String,
    /// Prefix for every topic name; isolates test runs that share a broker.
    #[arg(long = "topic-prefix", env = "TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
    /// Partitions of each topic when this service creates it.
    #[arg(long = "topic-partitions", env = "TOPIC_PARTITIONS", default_value_t = 6)]
    pub topic_partitions: i32,
    /// Replication factor of each topic when this service creates it: 1 on a one-node cluster,
    /// 3 on a cluster of three or more. Topics get `min.insync.replicas` of one less (at least
    /// 1), so with 3 replicas an `acks=all` write survives one broker down.
    #[arg(
        long = "topic-replication-factor",
        env = "TOPIC_REPLICATION_FACTOR",
        default_value_t = 1
    )]
    pub topic_replication_factor: i32,
    /// Consumer group session timeout. Kept low so a dead member's partitions move quickly.
    #[arg(
        long = "kafka-session-timeout-ms",
        env = "KAFKA_SESSION_TIMEOUT_MS",
        default_value_t = 6000
    )]
    pub session_timeout_ms: u32,
    /// How often a consumer commits the offsets of the records it has finished, in milliseconds.
    /// A crash re-delivers at most this much work, which the handlers' idempotence absorbs; a
    /// short interval costs a group-coordinator write per consumer each time.
    #[arg(
        long = "kafka-commit-interval-ms",
        env = "KAFKA_COMMIT_INTERVAL_MS",
        default_value_t = 5000
    )]
    pub commit_interval_ms: u64,
    /// librdkafka debug contexts (e.g. `cgrp,topic`), for diagnosing group and fetch problems.
    #[arg(long = "kafka-debug", env = "KAFKA_DEBUG")]
    pub debug: Option<String>,
    /// How often the consumer loop's client reports its statistics, which set the consumer lag
    /// gauge of each partition, in milliseconds; 0 turns the lag gauge off.
    #[arg(
        long = "kafka-statistics-interval-ms",
        env = "KAFKA_STATISTICS_INTERVAL_MS",
        default_value_t = 5000
    )]
    pub statistics_interval_ms: u64,
    /// How long the producer waits for more records to fill a request to a broker, in
    /// milliseconds (librdkafka's `linger.ms`): fewer, larger requests for that much latency.
    #[arg(
        long = "kafka-producer-linger-ms",
        env = "KAFKA_PRODUCER_LINGER_MS",
        default_value_t = 5
    )]
    pub producer_linger_ms: u64,
    /// How clients authenticate and encrypt (SASL, TLS); plaintext by default.
    #[command(flatten)]
    pub security: KafkaSecurity,
}

impl KafkaConfig {
    /// A configuration for the given bootstrap servers with every other setting at its default.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            topic_prefix: String::new(),
            topic_partitions: 6,
            topic_replication_factor: 1,
            session_timeout_ms: 6000,
            commit_interval_ms: 5000,
            debug: None,
            statistics_interval_ms: 5000,
            producer_linger_ms: 5,
            security: KafkaSecurity::plaintext(),
        }
    }

    /// A librdkafka configuration reaching this cluster: the bootstrap servers and the security
    /// settings. Every Kafka client of the platform starts from it.
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        self.security.client_config(&self.bootstrap_servers)
    }

    /// Sets the topic prefix.
    pub fn with_topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.topic_prefix = prefix.into();
        self
    }

    /// The full name of one of the saga's event topics.
    pub fn topic(&self, topic: Topic) -> String {
        format!("{}{}", self.topic_prefix, topic.base_name())
    }

    /// The full name of a consuming service's dead-letter topic.
    pub fn dead_letter_topic(&self, service: &str) -> String {
        format!("{}{service}.dead-letter", self.topic_prefix)
    }

    /// The full name of an arbitrary topic, with the prefix applied.
    pub fn prefixed(&self, name: &str) -> String {
        format!("{}{name}", self.topic_prefix)
    }
}

/// How to reach the schema registry.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryConfig {
    /// Base URL of the Confluent-compatible schema registry.
    #[arg(
        long = "schema-registry-url",
        env = "SCHEMA_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub url: String,
    /// Per-request timeout.
    #[arg(
        long = "schema-registry-timeout-ms",
        env = "SCHEMA_REGISTRY_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub timeout_ms: u64,
    /// Credentials for the registry's HTTP basic authentication, `user:password` (what
    /// Confluent's clients call `basic.auth.user.info`). Unset: requests carry none.
    #[arg(
        long = "schema-registry-user-info",
        env = RegistryUserInfo::ENV,
        hide_env_values = true
    )]
    pub user_info: Option<RegistryUserInfo>,
}

impl RegistryConfig {
    /// A configuration for the given registry URL, without credentials.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            timeout_ms: 5000,
            user_info: None,
        }
    }

    /// Sets the credentials requests carry.
    pub fn with_user_info(mut self, user_info: Option<RegistryUserInfo>) -> Self {
        self.user_info = user_info;
        self
    }

    /// The per-request timeout as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Adds the registry credentials, if any, to a request for the registry.
    pub fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.user_info {
            Some(user_info) => request.basic_auth(&user_info.user, Some(&user_info.password)),
            None => request,
        }
    }
}

/// A schema registry user and password, parsed from `user:password` (the password may contain
/// colons). `Debug` shows the user only.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryUserInfo {
    user: String,
    password: String,
}

impl RegistryUserInfo {
    /// The environment variable holding `user:password`.
    pub const ENV: &'static str = "SCHEMA_REGISTRY_USER_INFO";

    /// Credentials of `user` with `password`.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            password: password.into(),
        }
    }

    /// The credentials in [`Self::ENV`], if it is set.
    pub fn from_env() -> Result<Option<Self>, String> {
        match std::env::var(Self::ENV) {
            Ok(text) => text
                .parse()
                .map(Some)
                .map_err(|reason| format!("{}: {reason}", Self::ENV)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(format!("{} is not valid UTF-8", Self::ENV)),
        }
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// `user:password`, as another process takes it through [`Self::ENV`]. Never log it.
    pub fn expose_secret(&self) -> String {
        format!("{}:{}", self.user, self.password)
    }
}

impl FromStr for RegistryUserInfo {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once(':') {
            Some((user, password)) if !user.is_empty() && !password.is_empty() => Ok(Self::new(user, password)),
            _ => Err("expected user:password, both non-empty (leave the setting unset for none)".to_owned()),
        }
    }
}

impl fmt::Debug for RegistryUserInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryUserInfo")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

/// Logging options.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryConfig {
    /// `json` for one JSON object per line, `pretty` for humans.
    #[arg(long = "log-format", env = "LOG_FORMAT", default_value = "json")]
    pub log_format: String,
    /// Where to export traces over OTLP/HTTP (protobuf), e.g. `http://127.0.0.1:4318`; traces
    /// are not exported when unset. The other standard `OTEL_EXPORTER_OTLP_*` variables
    /// (headers, timeout, a traces-only endpoint) apply too.
    #[arg(long = "otlp-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// Returns `url` with any password replaced by `***`, for logging.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme_end + 3], &credentials[..colon], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_carry_the_prefix() {
        let config = KafkaConfig::new("localhost:9092").with_topic_prefix("t1.");
        assert_eq!(config.topic(Topic::Orders), "t1.orders");
        assert_eq!(
            config.dead_letter_topic("payment-service"),
            "t1.payment-service.dead-letter"
        );
    }

    #[test]
    fn registry_user_info_splits_at_the_first_colon_and_debug_hides_the_password() {
        let info: RegistryUserInfo = "saga:pa:ss".parse().expect("user:password");
        assert_eq!((info.user(), info.password()), ("saga", "pa:ss"));
        assert_eq!(info.expose_secret(), "saga:pa:ss");
        let config = RegistryConfig::new("http://registry:8081").with_user_info(Some(info));
        let shown = format!("{config:?}");
        assert!(shown.contains("saga") && !shown.contains("pa:ss"), "{shown}");
        for invalid in ["", "saga", "saga:", ":secret"] {
            assert!(invalid.parse::<RegistryUserInfo>().is_err(), "{invalid:?}");
        }
    }

    #[test]
    fn registry_requests_carry_basic_credentials_only_when_configured() {
        let http = reqwest::Client::new();
        let with = RegistryConfig::new("http://registry:8081")
            .with_user_info(Some(RegistryUserInfo::new("saga", "secret")))
            .authorize(http.get("http://registry:8081/subjects"))
            .build()
            .expect("a request");
        // base64("saga:secret")
        assert_eq!(
            with.headers().get(reqwest::header::AUTHORIZATION).map(|v| v.as_bytes()),
            Some(&b"Basic c2FnYTpzZWNyZXQ="[..])
        );
        let without = RegistryConfig::new("http://registry:8081")
            .authorize(http.get("http://registry:8081/subjects"))
            .build()
            .expect("a request");
        assert!(without.headers().get(reqwest::header::AUTHORIZATION).is_none());
    }

    #[test]
    fn passwords_never_reach_the_log() {
        assert_eq!(
            redact_url("postgres://app:secret@db:5432/orders"),
            "postgres://app:***@db:5432/orders"
        );
        assert_eq!(
            redact_url("postgres://postgres@db/orders"),
            "postgres://postgres@db/orders"
        );
        assert_eq!(redact_url("http://registry:8081"), "http://registry:8081");
    }
}
