//! How every Kafka client of the platform (the services, the schema registry, sagactl, the
//! dashboard, the test harness) reaches the brokers: plaintext, TLS, SASL, or SASL over TLS,
//! with SCRAM-SHA-512 or PLAIN credentials and a CA file (and optionally a client certificate)
//! for TLS. One settings struct, read from the same environment variables everywhere, applied
//! to librdkafka's configuration by [`KafkaSecurity::apply`].
//!
//! The password and the client key's password never reach a log: `Debug` prints them as `***`.

use std::fmt;
use std::str::FromStr;

use rdkafka::ClientConfig;

/// What went wrong with the security settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecurityError {
    /// A setting has a value outside those it takes.
    #[error("{setting}: '{value}' is not one of {expected}")]
    Unknown {
        /// The environment variable.
        setting: &'static str,
        /// What it was set to.
        value: String,
        /// What it takes.
        expected: &'static str,
    },
    /// A setting the chosen protocol needs is missing.
    #[error("{setting} must be set when KAFKA_SECURITY_PROTOCOL is {protocol}")]
    Missing {
        /// The environment variable.
        setting: &'static str,
        /// The protocol needing it.
        protocol: SecurityProtocol,
    },
}

/// The protocol of the connection to the brokers (Kafka's `security.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecurityProtocol {
    /// No encryption, no authentication: the local stack's default.
    #[default]
    Plaintext,
    /// TLS, no SASL (a client certificate may authenticate).
    Ssl,
    /// SASL without encryption.
    SaslPlaintext,
    /// SASL over TLS: what a shared staging cluster should use.
    SaslSsl,
}

impl SecurityProtocol {
    /// Kafka's name of the protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(self, SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl)
    }

    fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SecurityProtocol {
    type Err = SecurityError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.to_ascii_uppercase().replace('-', "_").as_str() {
            "PLAINTEXT" => Ok(SecurityProtocol::Plaintext),
            "SSL" => Ok(SecurityProtocol::Ssl),
            "SASL_PLAINTEXT" => Ok(SecurityProtocol::SaslPlaintext),
            "SASL_SSL" => Ok(SecurityProtocol::SaslSsl),
            _ => Err(SecurityError::Unknown {
                setting: "KAFKA_SECURITY_PROTOCOL",
                value: value.to_string(),
                expected: "plaintext, ssl, sasl_plaintext, sasl_ssl",
            }),
        }
    }
}

/// The SASL mechanism (Kafka's `sasl.mechanism`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SaslMechanism {
    /// Salted challenge-response: the password never crosses the wire.
    #[default]
    ScramSha512,
    /// The password sent as is: only over TLS.
    Plain,
}

impl SaslMechanism {
    /// Kafka's name of the mechanism.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::Plain => "PLAIN",
        }
    }
}

impl FromStr for SaslMechanism {
    type Err = SecurityError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.to_ascii_uppercase().replace('_', "-").as_str() {
            "SCRAM-SHA-512" => Ok(SaslMechanism::ScramSha512),
            "PLAIN" => Ok(SaslMechanism::Plain),
            _ => Err(SecurityError::Unknown {
                setting: "KAFKA_SASL_MECHANISM",
                value: value.to_string(),
                expected: "SCRAM-SHA-512, PLAIN",
            }),
        }
    }
}

/// The security settings of a Kafka client.
#[derive(Clone, Default, clap::Args)]
pub struct KafkaSecurity {
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[arg(
        long = "kafka-security-protocol",
        env = "KAFKA_SECURITY_PROTOCOL",
        default_value = "plaintext"
    )]
    pub protocol: SecurityProtocol,
    /// `SCRAM-SHA-512` or `PLAIN` (with a SASL protocol).
    #[arg(
        long = "kafka-sasl-mechanism",
        env = "KAFKA_SASL_MECHANISM",
        default_value = "SCRAM-SHA-512"
    )]
    pub sasl_mechanism: SaslMechanism,
    /// The SASL user name.
    #[arg(long = "kafka-sasl-username", env = "KAFKA_SASL_USERNAME")]
    pub sasl_username: Option<String>,
    /// The SASL password.
    #[arg(long = "kafka-sasl-password", env = "KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub sasl_password: Option<String>,
    /// PEM file of the CA(s) that signed the brokers' certificates; the system's CAs when unset.
    #[arg(long = "kafka-ssl-ca-location", env = "KAFKA_SSL_CA_LOCATION")]
    pub ssl_ca_location: Option<String>,
    /// PEM file of this client's certificate, for brokers that authenticate clients by TLS.
    #[arg(long = "kafka-ssl-certificate-location", env = "KAFKA_SSL_CERTIFICATE_LOCATION")]
    pub ssl_certificate_location: Option<String>,
    /// PEM file of this client's private key.
    #[arg(long = "kafka-ssl-key-location", env = "KAFKA_SSL_KEY_LOCATION")]
    pub ssl_key_location: Option<String>,
    /// Password of that private key, if it is encrypted.
    #[arg(
        long = "kafka-ssl-key-password",
        env = "KAFKA_SSL_KEY_PASSWORD",
        hide_env_values = true
    )]
    pub ssl_key_password: Option<String>,
}

impl KafkaSecurity {
    /// Plaintext, as the local stack runs by default.
    pub fn plaintext() -> Self {
        Self::default()
    }

    /// SASL over TLS with `mechanism`, the given credentials and the CA file.
    pub fn sasl_ssl(mechanism: SaslMechanism, username: &str, password: &str, ca_location: &str) -> Self {
        Self {
            protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: mechanism,
            sasl_username: Some(username.to_string()),
            sasl_password: Some(password.to_string()),
            ssl_ca_location: Some(ca_location.to_string()),
            ..Self::default()
        }
    }

    /// The settings as the environment gives them (the variables the flags read), for programs
    /// that take no flags, such as tests.
    pub fn from_env() -> Result<Self, clap::Error> {
        #[derive(clap::Parser)]
        struct FromEnvironment {
            #[command(flatten)]
            security: KafkaSecurity,
        }
        use clap::Parser as _;
        Ok(FromEnvironment::try_parse_from(["kafka-security"])?.security)
    }

    /// The environment variables that give these settings to a child process.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("KAFKA_SECURITY_PROTOCOL", self.protocol.as_str().to_string()),
            ("KAFKA_SASL_MECHANISM", self.sasl_mechanism.as_str().to_string()),
        ];
        let optional = [
            ("KAFKA_SASL_USERNAME", &self.sasl_username),
            ("KAFKA_SASL_PASSWORD", &self.sasl_password),
            ("KAFKA_SSL_CA_LOCATION", &self.ssl_ca_location),
            ("KAFKA_SSL_CERTIFICATE_LOCATION", &self.ssl_certificate_location),
            ("KAFKA_SSL_KEY_LOCATION", &self.ssl_key_location),
            ("KAFKA_SSL_KEY_PASSWORD", &self.ssl_key_password),
        ];
        env.extend(
            optional
                .into_iter()
                .filter_map(|(name, value)| Some((name, value.clone()?))),
        );
        env
    }

    /// Checks that the chosen protocol has what it needs.
    pub fn validate(&self) -> Result<(), SecurityError> {
        let missing = |setting| SecurityError::Missing {
            setting,
            protocol: self.protocol,
        };
        if self.protocol.uses_sasl() {
            if self.sasl_username.as_deref().unwrap_or_default().is_empty() {
                return Err(missing("KAFKA_SASL_USERNAME"));
            }
            if self.sasl_password.is_none() {
                return Err(missing("KAFKA_SASL_PASSWORD"));
            }
        }
        if self.ssl_certificate_location.is_some() != self.ssl_key_location.is_some() {
            return Err(missing(if self.ssl_key_location.is_none() {
                "KAFKA_SSL_KEY_LOCATION"
            } else {
                "KAFKA_SSL_CERTIFICATE_LOCATION"
            }));
        }
        Ok(())
    }

    /// Sets the protocol, SASL and TLS properties on a librdkafka configuration.
    pub fn apply(&self, config: &mut ClientConfig) {
        config.set("security.protocol", self.protocol.as_str());
        if self.protocol.uses_sasl() {
            config.set("sasl.mechanism", self.sasl_mechanism.as_str());
            if let Some(username) = &self.sasl_username {
                config.set("sasl.username", username);
            }
            if let Some(password) = &self.sasl_password {
                config.set("sasl.password", password);
            }
        }
        if self.protocol.uses_tls() {
            let files = [
                ("ssl.ca.location", &self.ssl_ca_location),
                ("ssl.certificate.location", &self.ssl_certificate_location),
                ("ssl.key.location", &self.ssl_key_location),
                ("ssl.key.password", &self.ssl_key_password),
            ];
            for (property, value) in files {
                if let Some(value) = value {
                    config.set(property, value);
                }
            }
        }
    }

    /// A librdkafka configuration for `bootstrap_servers` with these settings applied.
    pub fn client_config(&self, bootstrap_servers: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap_servers);
        self.apply(&mut config);
        config
    }
}

impl fmt::Debug for KafkaSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |secret: &Option<String>| secret.as_ref().map(|_| "***");
        f.debug_struct("KafkaSecurity")
            .field("protocol", &self.protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &redacted(&self.sasl_password))
            .field("ssl_ca_location", &self.ssl_ca_location)
            .field("ssl_certificate_location", &self.ssl_certificate_location)
            .field("ssl_key_location", &self.ssl_key_location)
            .field("ssl_key_password", &redacted(&self.ssl_key_password))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_and_mechanisms_parse_in_any_case() {
        assert_eq!("sasl_ssl".parse(), Ok(SecurityProtocol::SaslSsl));
        assert_eq!("SASL-SSL".parse(), Ok(SecurityProtocol::SaslSsl));
        assert_eq!("Plaintext".parse(), Ok(SecurityProtocol::Plaintext));
        assert_eq!("scram-sha-512".parse(), Ok(SaslMechanism::ScramSha512));
        assert_eq!("plain".parse(), Ok(SaslMechanism::Plain));
        assert!("tls".parse::<SecurityProtocol>().is_err());
        assert!("SCRAM-SHA-256".parse::<SaslMechanism>().is_err());
    }

    #[test]
    fn sasl_without_credentials_is_refused_before_connecting() {
        let mut security = KafkaSecurity {
            protocol: SecurityProtocol::SaslSsl,
            ..KafkaSecurity::default()
        };
        assert_eq!(
            security.validate(),
            Err(SecurityError::Missing {
                setting: "KAFKA_SASL_USERNAME",
                protocol: SecurityProtocol::SaslSsl
            })
        );
        security.sasl_username = Some("saga".into());
        assert!(security.validate().is_err());
        security.sasl_password = Some("secret".into());
        assert_eq!(security.validate(), Ok(()));
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let security = KafkaSecurity {
            protocol: SecurityProtocol::Ssl,
            ssl_certificate_location: Some("client.pem".into()),
            ..KafkaSecurity::default()
        };
        assert!(security.validate().is_err());
    }

    #[test]
    fn sasl_ssl_sets_the_mechanism_the_credentials_and_the_ca() {
        let config = KafkaSecurity::sasl_ssl(SaslMechanism::ScramSha512, "saga", "secret", "/ca.pem")
            .client_config("127.0.0.1:9092");
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(config.get("sasl.username"), Some("saga"));
        assert_eq!(config.get("sasl.password"), Some("secret"));
        assert_eq!(config.get("ssl.ca.location"), Some("/ca.pem"));
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:9092"));
    }

    #[test]
    fn settings_passed_through_the_environment_read_back_the_same() {
        let security = KafkaSecurity::sasl_ssl(SaslMechanism::Plain, "saga", "secret", "/ca.pem");
        let env = security.to_env();
        let args = env.iter().flat_map(|(name, value)| {
            let flag = format!("--{}", name.to_ascii_lowercase().replace('_', "-"));
            [flag, value.clone()]
        });
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            security: KafkaSecurity,
        }
        use clap::Parser as _;
        let parsed = Flags::try_parse_from(std::iter::once("test".to_string()).chain(args))
            .map(|flags| flags.security)
            .expect("every variable has a flag of the same name");
        assert_eq!(
            parsed.client_config("b:9092").config_map(),
            security.client_config("b:9092").config_map()
        );
    }

    #[test]
    fn plaintext_sets_no_sasl_or_tls_property() {
        let config = KafkaSecurity::plaintext().client_config("127.0.0.1:9092");
        assert_eq!(config.get("security.protocol"), Some("PLAINTEXT"));
        assert_eq!(config.get("sasl.mechanism"), None);
        assert_eq!(config.get("ssl.ca.location"), None);
    }

    #[test]
    fn passwords_never_show_in_debug_output() {
        let security = KafkaSecurity {
            ssl_key_password: Some("key-secret".into()),
            ..KafkaSecurity::sasl_ssl(SaslMechanism::Plain, "saga", "sasl-secret", "/ca.pem")
        };
        let printed = format!("{security:?}");
        assert!(
            !printed.contains("sasl-secret") && !printed.contains("key-secret"),
            "{printed}"
        );
        assert!(printed.contains("saga"), "{printed}");
    }
}
