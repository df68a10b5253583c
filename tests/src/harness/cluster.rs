//! The system under test as OS processes: an Apache Kafka cluster (three KRaft nodes by default,
//! started through `deploy/kafka/node.sh` with their storage in the run's folder) and a schema
//! registry of the harness's own (which requires basic authentication, with a user and password
//! made up for the run), or a running cluster and registry it was pointed at; and the
//! four services from the built binaries, each with its own database. Every topic and consumer
//! group of a run carries the run's prefix, so runs never mix on a shared cluster. Every process
//! logs to its own file in the run's folder.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use kafka_security::KafkaSecurity;
use saga_common::auth::{ApiKeys, Scope};
use saga_common::config::{KafkaConfig, RegistryConfig, RegistryUserInfo};

use super::isolation::NodeCgroup;
use super::kafka_nodes::{self, KafkaNode};
use super::processes::ManagedProcess;
use super::run::{env_or, service_binaries, workspace_root};
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

/// The process name of instance `number` (from 1) of `service`: the service's own name for the
/// first, `<service>-<number>` for the others.
pub fn instance_name(service: &str, number: usize) -> String {
    if number <= 1 {
        service.to_string()
    } else {
        format!("{service}-{number}")
    }
}

/// How long a Kafka node may take to appear in the cluster's metadata after it starts (three
/// JVMs starting at once on a loaded 2-core machine take 15-40 s).
pub const NODE_START_TIMEOUT: Duration = Duration::from_secs(180);

/// Where the Kafka cluster and the schema registry come from.
#[derive(Debug, Clone)]
pub enum KafkaSource {
    /// The harness starts `nodes` Kafka nodes with `node_script` (`deploy/kafka/node.sh`) and a
    /// schema registry of its own; every fault kind is available.
    Own {
        /// Number of nodes.
        nodes: usize,
        /// The node launcher.
        node_script: PathBuf,
    },
    /// A running cluster and registry the harness did not start; it starts only the services,
    /// and cannot inject broker or registry faults.
    Existing {
        /// Their comma-separated bootstrap list.
        bootstrap_servers: String,
        /// The registry's base URL.
        registry_url: String,
        /// Credentials for the registry, if it requires them.
        registry_user_info: Option<RegistryUserInfo>,
    },
}

/// How the harness's own Kafka cluster is secured.
#[derive(Debug, Clone, Default)]
pub enum ClusterSecurity {
    /// Plaintext listeners, as the local stack runs by default.
    #[default]
    Plaintext,
    /// SASL_SSL listeners only (`deploy/kafka/node.sh` with `KAFKA_SECURITY=sasl_ssl`); the
    /// registry and the services log in with `client`.
    SaslSsl {
        /// `ca.pem` and `broker.pem`, as `deploy/kafka/tls.sh` makes them.
        tls_dir: PathBuf,
        /// The account every client of the run uses (its user name and password must be in
        /// `accounts`), with the mechanism to log in with and the CA file.
        client: Box<KafkaSecurity>,
        /// `user:password` of each client account the brokers know.
        accounts: Vec<String>,
        /// The brokers' own password.
        broker_password: String,
    },
}

impl ClusterSecurity {
    /// What the run's clients use.
    pub fn client(&self) -> KafkaSecurity {
        match self {
            ClusterSecurity::Plaintext => KafkaSecurity::plaintext(),
            ClusterSecurity::SaslSsl { client, .. } => (**client).clone(),
        }
    }

    /// The environment `deploy/kafka/node.sh` reads.
    fn broker_env(&self) -> Vec<(&'static str, String)> {
        match self {
            ClusterSecurity::Plaintext => vec![("KAFKA_SECURITY", "plaintext".into())],
            ClusterSecurity::SaslSsl {
                tls_dir,
                accounts,
                broker_password,
                ..
            } => vec![
                ("KAFKA_SECURITY", "sasl_ssl".into()),
                ("KAFKA_TLS_DIR", tls_dir.display().to_string()),
                ("KAFKA_SASL_USERS", accounts.join(",")),
                ("KAFKA_BROKER_PASSWORD", broker_password.clone()),
            ],
        }
    }
}

/// Where things are and how the services are configured.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Short unique id of the run; names its databases, topic prefix and firewall table.
    pub run_id: String,
    /// Folder for logs and the Kafka nodes' storage.
    pub run_dir: PathBuf,
    /// Folder with the built service and registry binaries.
    pub bin_dir: PathBuf,
    /// The cluster and registry.
    pub kafka: KafkaSource,
    /// Replicas of every topic the services create (min(nodes, 3)).
    pub replication_factor: i32,
    /// Prefix of the run's topics and consumer groups.
    pub topic_prefix: String,
    /// PostgreSQL server URL without a database.
    pub postgres_server: String,
    /// SMTP server the notification service sends to.
    pub smtp: (String, u16),
    /// Saga deadline of the order service.
    pub saga_deadline_secs: f64,
    /// Partitions of every topic.
    pub partitions: i32,
    /// Instances of every service: they share its database and consumer group.
    pub instances: usize,
    /// How the cluster the harness starts is secured (an existing cluster's clients read
    /// `KAFKA_SECURITY_PROTOCOL` and the rest from the harness's environment instead).
    pub security: ClusterSecurity,
}

impl ClusterConfig {
    /// A small run for an integration test named `name`: its folder beside the built binaries
    /// (`<bin>/<name>/<run id>`), topics prefixed `<name><run id>.` with 2 partitions and one
    /// replica, a 60 s saga deadline, and the local stack's PostgreSQL and SMTP catcher (or the
    /// ones `POSTGRES_SERVER_URL`, `SMTP_HOST` and `SMTP_PORT` name).
    pub fn for_test(name: &str, kafka: KafkaSource, security: ClusterSecurity) -> Self {
        let run_id = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace_root().join("target"));
        let bin_dir = service_binaries(&target);
        Self {
            run_dir: bin_dir.join(name).join(&run_id),
            topic_prefix: format!("{}{run_id}.", name.replace('_', "-")),
            run_id,
            bin_dir,
            kafka,
            replication_factor: 1,
            postgres_server: env_or("POSTGRES_SERVER_URL", "postgres://postgres:postgres@127.0.0.1:5432"),
            smtp: (
                env_or("SMTP_HOST", "127.0.0.1"),
                env_or("SMTP_PORT", "1025").parse().unwrap_or(1025),
            ),
            saga_deadline_secs: 60.0,
            partitions: 2,
            instances: 1,
            security,
        }
    }
}

/// What observers need of the cluster, detached from the processes.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// Kafka settings (every node in the bootstrap list, the run's topic prefix).
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
    /// The Kafka nodes the harness started (none on an existing cluster).
    pub kafka_nodes: Vec<KafkaNode>,
    /// The schema registry the harness started (none with an existing one).
    pub registry: Option<ManagedProcess>,
    /// The services' processes, by instance name (see [`instance_name`]).
    pub services: BTreeMap<String, ManagedProcess>,
    /// Registry base URL.
    pub registry_url: String,
    /// Credentials for the registry (the services and the harness's own clients use them).
    pub registry_user_info: Option<RegistryUserInfo>,
    /// HTTP address of each service instance, by instance name.
    pub http: BTreeMap<String, SocketAddr>,
    /// The API key of each scope the services accept: those of `ORDER_API_KEY`, `READ_API_KEY`
    /// and `ADMIN_API_KEY` when set (as `.local/secrets.env` sets them), fresh ones otherwise.
    pub api_keys: ApiKeys,
    /// Database URL of each service.
    pub databases: BTreeMap<String, String>,
    kafka: KafkaConfig,
}

/// The scope keys of the environment, a fresh key for each scope it lacks.
fn keys_from_env_or_fresh() -> ApiKeys {
    let (set, fresh) = (ApiKeys::from_env(), ApiKeys::generate());
    ApiKeys {
        order: set.order.or(fresh.order),
        read: set.read.or(fresh.read),
        admin: set.admin.or(fresh.admin),
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Cluster {
    /// Lays out the processes (ports, database names); starts nothing.
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
        let (kafka_nodes, registry, bootstrap_servers, registry_url, registry_user_info) = match &config.kafka {
            KafkaSource::Own { nodes, node_script } => {
                anyhow::ensure!(*nodes >= 1, "a Kafka cluster needs at least one node");
                anyhow::ensure!(
                    node_script.exists(),
                    "{} is missing: the harness starts its Kafka nodes with it",
                    node_script.display()
                );
                let base_port = kafka_nodes::pick_base_port(*nodes)?;
                let cluster_dir = config.run_dir.join("kafka");
                let kafka_nodes: Vec<KafkaNode> = (1..=*nodes as i32)
                    .map(|id| {
                        let cgroup = NodeCgroup::create(&format!("saga-harness-{}-kafka-{id}", config.run_id));
                        let mut node = KafkaNode::new(
                            node_script,
                            &cluster_dir,
                            &config.run_dir,
                            id,
                            *nodes,
                            base_port,
                            cgroup,
                        );
                        for (name, value) in config.security.broker_env() {
                            node.process.set_env(name, &value);
                        }
                        node
                    })
                    .collect();
                let bootstrap = kafka_nodes::bootstrap_servers(&kafka_nodes);
                let registry_port = free_port()?;
                let (users_file, user_info) = registry_users_file(&config.run_dir)?;
                let mut registry = ManagedProcess::new(
                    "schema-registry",
                    config.bin_dir.join("schema-registry"),
                    Vec::new(),
                    BTreeMap::from([
                        ("REGISTRY_LISTEN".to_string(), format!("127.0.0.1:{registry_port}")),
                        ("REGISTRY_USERS_FILE".to_string(), users_file.display().to_string()),
                        ("KAFKA_BOOTSTRAP_SERVERS".to_string(), bootstrap.clone()),
                        (
                            "REGISTRY_SCHEMAS_TOPIC_REPLICATION_FACTOR".to_string(),
                            config.replication_factor.to_string(),
                        ),
                        ("RUST_LOG".to_string(), "info".to_string()),
                    ]),
                    config.run_dir.clone(),
                );
                for (name, value) in config.security.client().to_env() {
                    registry.set_env(name, &value);
                }
                (
                    kafka_nodes,
                    Some(registry),
                    bootstrap,
                    format!("http://127.0.0.1:{registry_port}"),
                    Some(user_info),
                )
            }
            KafkaSource::Existing {
                bootstrap_servers,
                registry_url,
                registry_user_info,
            } => (
                Vec::new(),
                None,
                bootstrap_servers.clone(),
                registry_url.trim_end_matches('/').to_string(),
                registry_user_info.clone(),
            ),
        };
        let client_security = match &config.kafka {
            KafkaSource::Own { .. } => config.security.client(),
            KafkaSource::Existing { .. } => KafkaSecurity::from_env()?,
        };
        let kafka = KafkaConfig {
            topic_replication_factor: config.replication_factor,
            security: client_security.clone(),
            ..KafkaConfig::new(bootstrap_servers.clone()).with_topic_prefix(config.topic_prefix.clone())
        };
        let mut services = BTreeMap::new();
        let mut http = BTreeMap::new();
        let api_keys = keys_from_env_or_fresh();
        let mut databases = BTreeMap::new();
        for (name, number) in SERVICES
            .into_iter()
            .flat_map(|name| (1..=config.instances.max(1)).map(move |number| (name, number)))
        {
            let address = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let database = format!(
                "{}/h{}_{}",
                config.postgres_server.trim_end_matches('/'),
                config.run_id,
                name.trim_end_matches("-service")
            );
            let mut env = BTreeMap::from([
                ("KAFKA_BOOTSTRAP_SERVERS".to_string(), bootstrap_servers.clone()),
                ("TOPIC_PREFIX".to_string(), config.topic_prefix.clone()),
                (
                    "TOPIC_REPLICATION_FACTOR".to_string(),
                    config.replication_factor.to_string(),
                ),
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
            env.extend(
                client_security
                    .to_env()
                    .into_iter()
                    .map(|(name, value)| (name.to_string(), value)),
            );
            if let Some(user_info) = &registry_user_info {
                env.insert(RegistryUserInfo::ENV.to_string(), user_info.expose_secret());
            }
            env.extend(api_keys.to_env().into_iter().map(|(name, key)| (name.to_string(), key)));
            // Consumer settings a run may override from the harness's own environment.
            for passed in ["KAFKA_SESSION_TIMEOUT_MS", "KAFKA_COMMIT_INTERVAL_MS", "KAFKA_DEBUG"] {
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
            let instance = instance_name(name, number);
            services.insert(
                instance.clone(),
                ManagedProcess::new(
                    &instance,
                    config.bin_dir.join(name),
                    Vec::new(),
                    env,
                    config.run_dir.clone(),
                ),
            );
            http.insert(instance, address);
            databases.insert(name.to_string(), database);
        }
        Ok(Self {
            config,
            kafka_nodes,
            registry,
            services,
            registry_url,
            registry_user_info,
            http,
            api_keys,
            databases,
            kafka,
        })
    }

    /// The HTTP addresses of the order service's instances, the first first.
    pub fn order_service_addresses(&self) -> Vec<SocketAddr> {
        (1..=self.config.instances.max(1))
            .filter_map(|number| self.http.get(&instance_name("order-service", number)).copied())
            .collect()
    }

    /// Whether the harness started the Kafka cluster and registry itself (and so may fault them).
    pub fn owns_kafka(&self) -> bool {
        !self.kafka_nodes.is_empty()
    }

    /// Addresses for observers.
    pub fn view(&self) -> ClusterView {
        ClusterView {
            kafka: self.kafka(),
            registry: self.registry_config(),
            databases: self.databases.clone(),
        }
    }

    /// Kafka settings for the harness's own clients: every node, the run's topic prefix.
    pub fn kafka(&self) -> KafkaConfig {
        self.kafka.clone()
    }

    /// Registry settings for the harness's own clients.
    pub fn registry_config(&self) -> RegistryConfig {
        RegistryConfig::new(self.registry_url.clone()).with_user_info(self.registry_user_info.clone())
    }

    /// The node with id `id`.
    pub fn node_mut(&mut self, id: i32) -> anyhow::Result<&mut KafkaNode> {
        self.kafka_nodes
            .iter_mut()
            .find(|node| node.id == id)
            .with_context(|| format!("no Kafka node {id}"))
    }

    /// Starts every Kafka node at once and waits until the cluster's metadata lists all of them.
    /// A node whose process exits meanwhile fails the start with its log's location.
    pub async fn start_kafka(&mut self) -> anyhow::Result<()> {
        for node in &mut self.kafka_nodes {
            node.process.start()?;
        }
        let expected: Vec<i32> = self.kafka_nodes.iter().map(|node| node.id).collect();
        let deadline = tokio::time::Instant::now() + NODE_START_TIMEOUT;
        loop {
            for node in &mut self.kafka_nodes {
                anyhow::ensure!(
                    node.process.is_running(),
                    "Kafka node {} exited while starting; see {}",
                    node.id,
                    node.process.log_path().display()
                );
            }
            let (listed, error) = match kafka_nodes::listed_brokers(&self.kafka, Duration::from_secs(5)).await {
                Ok(listed) => (listed, None),
                Err(error) => (Default::default(), Some(format!("{error:#}"))),
            };
            if expected.iter().all(|id| listed.contains(id)) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(kafka_nodes::nodes_not_up(&expected, &listed, NODE_START_TIMEOUT, error));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Starts the harness's registry (if it has one) and waits until it answers.
    pub async fn start_registry(&mut self) -> anyhow::Result<()> {
        if let Some(registry) = &mut self.registry {
            registry.start()?;
        }
        let registry = self.registry_config();
        let url = format!("{}/subjects", self.registry_url);
        let http = reqwest::Client::new();
        eventually("schema registry answering", Duration::from_secs(60), || async {
            registry
                .authorize(http.get(&url))
                .send()
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
        answers_ok(&format!("{name} ready"), &url, timeout).await
    }

    /// Adds `delta` units of `sku` through the inventory service's API.
    pub async fn restock(&self, sku: &str, delta: i64) -> anyhow::Result<()> {
        let url = format!("http://{}/stock/{sku}/adjustments", self.http["inventory-service"]);
        let answer = self
            .api_keys
            .authorize(reqwest::Client::new().post(url), Scope::Admin)
            .json(&serde_json::json!({"delta": delta, "reason": "restock"}))
            .send()
            .await?;
        anyhow::ensure!(answer.status().is_success(), "restock answered {}", answer.status());
        Ok(())
    }

    /// Places an order of one unit of `sku` for `email`, paid with a token the simulated gateway
    /// approves, through the order service's API; returns its id.
    pub async fn place_one(&self, sku: &str, email: &str) -> anyhow::Result<String> {
        let answer = self
            .api_keys
            .authorize(
                reqwest::Client::new().post(format!("http://{}/orders", self.http["order-service"])),
                Scope::Orders,
            )
            .json(&serde_json::json!({
                "customer_id": "c-harness", "customer_email": email, "currency": "EUR",
                "payment_token": "tok_visa",
                "items": [{"sku": sku, "quantity": 1, "unit_price_minor": 1250}],
            }))
            .send()
            .await?;
        anyhow::ensure!(answer.status() == 202, "POST /orders answered {}", answer.status());
        let body: serde_json::Value = answer.json().await?;
        body["order_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("POST /orders answered no order id: {body}"))
    }

    /// Starts everything and waits until every service is ready.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        if self.owns_kafka() {
            self.start_kafka().await?;
        } else {
            let brokers = kafka_nodes::listed_brokers(&self.kafka, Duration::from_secs(10))
                .await
                .with_context(|| format!("the Kafka cluster at {} does not answer", self.kafka.bootstrap_servers))?;
            tracing::info!(?brokers, "using an existing Kafka cluster");
        }
        self.start_registry().await?;
        let instances: Vec<String> = self.services.keys().cloned().collect();
        for name in &instances {
            self.start_service(name)?;
        }
        for name in &instances {
            self.wait_ready(name, Duration::from_secs(120)).await?;
        }
        Ok(())
    }

    /// Starts every process that is not running and resumes paused ones, without waiting for
    /// anything (so a caller holding the cluster's lock does not hold it for long).
    pub async fn restart_stopped(&mut self) -> anyhow::Result<()> {
        for node in &mut self.kafka_nodes {
            node.process.resume().await.ok();
            node.process.start()?;
        }
        if let Some(registry) = &mut self.registry {
            registry.start()?;
        }
        for process in self.services.values_mut() {
            process.resume().await.ok();
            process.start()?;
        }
        Ok(())
    }

    /// Stops everything: the services gracefully, then the registry, then every Kafka node at
    /// once (SIGTERM, SIGKILL after 30 s).
    pub async fn stop_all(&mut self) {
        for process in self.services.values_mut() {
            process.terminate(Duration::from_secs(20)).await.ok();
        }
        if let Some(registry) = &mut self.registry {
            registry.terminate(Duration::from_secs(10)).await.ok();
        }
        futures::future::join_all(
            self.kafka_nodes
                .iter_mut()
                .map(|node| node.process.terminate(Duration::from_secs(30))),
        )
        .await;
    }

    /// Deletes the Kafka nodes' storage (after a run that passed; their logs stay).
    pub fn remove_kafka_storage(&self) -> std::io::Result<()> {
        if self.owns_kafka() {
            std::fs::remove_dir_all(self.config.run_dir.join("kafka"))?;
        }
        Ok(())
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
            // The service's database and, after --verify-replay, its rebuilt copy.
            for database in [name.to_owned(), format!("{name}_rebuilt")] {
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"))
                    .execute(&mut *admin)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Writes the users file of the harness's own registry into the run's folder (readable by its
/// owner only): one read-write user with a password made up for the run.
fn registry_users_file(run_dir: &std::path::Path) -> anyhow::Result<(PathBuf, RegistryUserInfo)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let user_info = RegistryUserInfo::new("harness", uuid::Uuid::new_v4().simple().to_string());
    let path = run_dir.join("registry-users");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{}:{}:write", user_info.user(), user_info.password())?;
    Ok((path, user_info))
}

/// Waits until `GET url` answers with a success status.
async fn answers_ok(what: &str, url: &str, timeout: Duration) -> anyhow::Result<()> {
    eventually(what, timeout, || async {
        reqwest::get(url)
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ())
    })
    .await
}
