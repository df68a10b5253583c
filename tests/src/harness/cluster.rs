//! The system under test as OS processes: a broker (Tansu, durable sqlite storage in the run's
//! folder) and a schema registry of the harness's own, and the four services from the built
//! binaries, each with its own database. Every process logs to a file in the run's folder.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use saga_common::config::{KafkaConfig, RegistryConfig};

use super::broker_storage::index_record_headers;
use super::processes::ManagedProcess;
use crate::eventually;

/// Emails the notification service sends at once; the invariant checks need it.
pub const MAILER_CONCURRENCY: usize = 4;

/// The four services, by binary name.
pub const SERVICES: [&str; 4] = [
    "order-service",
    "payment-service",
    "inventory-service",
    "notification-service",
];

/// Where things are and how the services are configured.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Short unique id of the run; names its databases.
    pub run_id: String,
    /// Folder for logs and the broker's storage.
    pub run_dir: PathBuf,
    /// Folder with the built service and registry binaries.
    pub bin_dir: PathBuf,
    /// The Tansu binary.
    pub tansu: PathBuf,
    /// PostgreSQL server URL without a database.
    pub postgres_server: String,
    /// SMTP server the notification service sends to.
    pub smtp: (String, u16),
    /// Saga deadline of the order service.
    pub saga_deadline_secs: f64,
    /// Partitions of every topic.
    pub partitions: i32,
}

/// What observers need of the cluster, detached from the processes.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// Broker settings.
    pub kafka: KafkaConfig,
    /// Registry settings.
    pub registry: RegistryConfig,
    /// Database URL of each service.
    pub databases: BTreeMap<String, String>,
}

/// The running (or stopped) processes and their addresses.
#[derive(Debug)]
pub struct Cluster {
    /// The run's configuration.
    pub config: ClusterConfig,
    /// The broker process.
    pub broker: ManagedProcess,
    /// The schema registry process.
    pub registry: ManagedProcess,
    /// The services, by binary name.
    pub services: BTreeMap<String, ManagedProcess>,
    /// Broker address, `127.0.0.1:port`.
    pub broker_address: String,
    /// Registry base URL.
    pub registry_url: String,
    /// HTTP address of each service.
    pub http: BTreeMap<String, SocketAddr>,
    /// Database URL of each service.
    pub databases: BTreeMap<String, String>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn port_open(address: &str) -> bool {
    tokio::net::TcpStream::connect(address).await.is_ok()
}

impl Cluster {
    /// Lays out the processes (free ports, database names); starts nothing.
    pub fn new(config: ClusterConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.run_dir)?;
        for binary in SERVICES.iter().copied().chain(["schema-registry"]) {
            let path = config.bin_dir.join(binary);
            anyhow::ensure!(
                path.exists(),
                "{} is missing: build the platform first (cargo build --bins)",
                path.display()
            );
        }
        anyhow::ensure!(
            config.tansu.exists(),
            "{} is missing: deploy/local/stack.sh infra builds it (or set TANSU_BIN)",
            config.tansu.display()
        );
        let broker_address = format!("127.0.0.1:{}", free_port()?);
        let listener = format!("tcp://{broker_address}");
        let broker = ManagedProcess::new(
            "broker",
            config.tansu.clone(),
            vec![
                "broker".into(),
                "--listener-url".into(),
                listener.clone(),
                "--advertised-listener-url".into(),
                listener,
                // resolved from the working directory: the run's folder
                "--storage-engine".into(),
                "sqlite://broker.db".into(),
            ],
            BTreeMap::new(),
            config.run_dir.clone(),
        );
        let registry_port = free_port()?;
        let registry_url = format!("http://127.0.0.1:{registry_port}");
        let registry = ManagedProcess::new(
            "schema-registry",
            config.bin_dir.join("schema-registry"),
            Vec::new(),
            BTreeMap::from([
                ("REGISTRY_LISTEN".to_string(), format!("127.0.0.1:{registry_port}")),
                ("KAFKA_BOOTSTRAP_SERVERS".to_string(), broker_address.clone()),
                ("RUST_LOG".to_string(), "info".to_string()),
            ]),
            config.run_dir.clone(),
        );
        let mut services = BTreeMap::new();
        let mut http = BTreeMap::new();
        let mut databases = BTreeMap::new();
        for name in SERVICES {
            let address = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let database = format!(
                "{}/h{}_{}",
                config.postgres_server.trim_end_matches('/'),
                config.run_id,
                name.trim_end_matches("-service")
            );
            let mut env = BTreeMap::from([
                ("KAFKA_BOOTSTRAP_SERVERS".to_string(), broker_address.clone()),
                // The broker is restarted under load; see `Cluster::kafka`.
                ("KAFKA_IDEMPOTENT_PRODUCER".to_string(), "false".to_string()),
                ("SCHEMA_REGISTRY_URL".to_string(), registry_url.clone()),
                ("DATABASE_URL".to_string(), database.clone()),
                ("HTTP_LISTEN".to_string(), address.to_string()),
                ("TOPIC_PARTITIONS".to_string(), config.partitions.to_string()),
                ("LOG_FORMAT".to_string(), "json".to_string()),
                (
                    "RUST_LOG".to_string(),
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string()),
                ),
            ]);
            // Consumer settings a run may override from the harness's own environment.
            for passed in [
                "KAFKA_REJOIN_UNASSIGNED_SECS",
                "KAFKA_SESSION_TIMEOUT_MS",
                "KAFKA_DEBUG",
            ] {
                if let Ok(value) = std::env::var(passed) {
                    env.insert(passed.to_string(), value);
                }
            }
            match name {
                "order-service" => {
                    env.insert("SAGA_DEADLINE_SECS".into(), config.saga_deadline_secs.to_string());
                }
                "notification-service" => {
                    env.insert("MAILER_CONCURRENCY".into(), MAILER_CONCURRENCY.to_string());
                    env.insert("SMTP_HOST".into(), config.smtp.0.clone());
                    env.insert("SMTP_PORT".into(), config.smtp.1.to_string());
                }
                _ => {}
            }
            services.insert(
                name.to_string(),
                ManagedProcess::new(name, config.bin_dir.join(name), Vec::new(), env, config.run_dir.clone()),
            );
            http.insert(name.to_string(), address);
            databases.insert(name.to_string(), database);
        }
        Ok(Self {
            config,
            broker,
            registry,
            services,
            broker_address,
            registry_url,
            http,
            databases,
        })
    }

    /// Addresses for observers.
    pub fn view(&self) -> ClusterView {
        ClusterView {
            kafka: self.kafka(),
            registry: self.registry_config(),
            databases: self.databases.clone(),
        }
    }

    /// Whether the broker answers a metadata request within `timeout` (a live process can
    /// still be unable to serve anything).
    pub async fn broker_answers(address: &str, timeout: Duration) -> bool {
        saga_common::kafka::probe_broker(&KafkaConfig::new(address), timeout)
            .await
            .is_ok()
    }

    /// The broker's SQLite storage file.
    pub fn broker_storage(&self) -> PathBuf {
        self.config.run_dir.join("broker.db")
    }

    /// Broker settings for the harness's own clients.
    pub fn kafka(&self) -> KafkaConfig {
        KafkaConfig::new(self.broker_address.clone())
    }

    /// Registry settings for the harness's own clients.
    pub fn registry_config(&self) -> RegistryConfig {
        RegistryConfig::new(self.registry_url.clone())
    }

    /// Starts the broker, waits for its port and adds the index its storage lacks
    /// ([`super::broker_storage`]).
    pub async fn start_broker(&mut self) -> anyhow::Result<()> {
        self.broker.start()?;
        let address = self.broker_address.clone();
        eventually("broker listening", Duration::from_secs(30), || async {
            port_open(&address).await.then_some(())
        })
        .await?;
        if let Err(error) = index_record_headers(&self.broker_storage()) {
            tracing::warn!(
                error = format!("{error:#}"),
                "could not index the broker's record headers"
            );
        }
        Ok(())
    }

    /// Starts the registry and waits until it answers.
    pub async fn start_registry(&mut self) -> anyhow::Result<()> {
        self.registry.start()?;
        let url = format!("{}/subjects", self.registry_url);
        eventually("schema registry answering", Duration::from_secs(60), || async {
            reqwest::get(&url)
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        })
        .await
    }

    /// Starts a service (if not running) without waiting for it.
    pub fn start_service(&mut self, name: &str) -> anyhow::Result<()> {
        self.services
            .get_mut(name)
            .with_context(|| format!("no service {name}"))?
            .start()
    }

    /// Waits until a service's readiness probe answers 200.
    pub async fn wait_ready(&self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        let url = format!("http://{}/health/ready", self.http[name]);
        eventually(&format!("{name} ready"), timeout, || async {
            reqwest::get(&url)
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        })
        .await
    }

    /// Starts everything and waits until every service is ready.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        self.start_broker().await?;
        self.start_registry().await?;
        for name in SERVICES {
            self.start_service(name)?;
        }
        for name in SERVICES {
            self.wait_ready(name, Duration::from_secs(120)).await?;
        }
        Ok(())
    }

    /// Starts every process that is not running and resumes paused ones, without waiting for
    /// anything (so a caller holding the cluster's lock does not hold it for long).
    pub fn restart_stopped(&mut self) -> anyhow::Result<()> {
        self.broker.start()?;
        self.registry.start()?;
        for process in self.services.values_mut() {
            process.start()?;
        }
        Ok(())
    }

    /// Resumes every service (a no-op for those not paused).
    pub async fn resume_all(&self) {
        for process in self.services.values() {
            process.resume().await.ok();
        }
    }

    /// Stops everything gracefully.
    pub async fn stop_all(&mut self) {
        for process in self.services.values_mut() {
            process.terminate(Duration::from_secs(20)).await.ok();
        }
        self.registry.terminate(Duration::from_secs(10)).await.ok();
        self.broker.terminate(Duration::from_secs(10)).await.ok();
    }

    /// Drops the run's databases (after a run that passed).
    pub async fn drop_databases(&self) -> anyhow::Result<()> {
        let mut admin = sqlx::PgPool::connect(&format!(
            "{}/postgres",
            self.config.postgres_server.trim_end_matches('/')
        ))
        .await?
        .acquire()
        .await?;
        for url in self.databases.values() {
            let name = url.rsplit('/').next().unwrap_or_default();
            sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&mut *admin)
                .await?;
        }
        Ok(())
    }
}
