//! The mailer: a background task that sends the emails the handler recorded, over SMTP.
//!
//! Emails go out over pooled SMTP connections, reused from one email to the next. It claims one
//! due pending row at a time for a lease (a committed `claimed_until`, so several
//! mailers, in one instance or many, never send the same row concurrently, even when a database
//! connection is lost mid-send), sends it, and marks it sent, which ends the claim. A failed
//! attempt is counted and the shared error policy decides what follows (see
//! [`crate::error::smtp_class`] and [`crate::domain::after_failed_send`]): a failure that may
//! pass (connection refused, a 4xx reply) postpones the row with exponential backoff, forever;
//! one retrying cannot fix (a 5xx such as an unknown recipient) sets the row aside as `failed`,
//! with its error, where operators list and redrive it, and the next email goes out. The
//! mailer's own database work is retried in place by the same policy.
//! On startup every pending row is made due (a crash after the handler's commit but before
//! sending), and idle, it looks again periodically as well as when woken.
//!
//! The one window left: the SMTP server accepted a mail and the process died before the row was
//! marked sent (a database outage alone does not open it: recording is retried until it
//! sticks, within the claim). Once the dead mailer's claim has expired, the email is sent again
//! with the same deterministic Message-ID, which receivers deduplicate on (docs/notification.md).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use saga_common::metrics::{label, EMAILS_FAILED, EMAILS_SENT};
use saga_common::outbox::{self, Relay};
use saga_common::retry::{Backoff, ErrorPolicy, GaveUp};
use saga_common::{telemetry, Classify, ErrorClass};
use saga_contracts::OrderId;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::domain::{self, AfterFailedSend};
use crate::email::Outcome;
use crate::error::{Error, Result};
use crate::store::{self, PendingNotification};

/// Default SMTP host (the local maildev).
pub const DEFAULT_SMTP_HOST: &str = "127.0.0.1";
/// Default SMTP port (the local maildev).
pub const DEFAULT_SMTP_PORT: u16 = 1025;
/// Default sender address.
pub const DEFAULT_SMTP_FROM: &str = "orders@saga-platform.local";

/// Most SMTP connections kept open at once (more than the mailers that send over them).
const SMTP_POOL_SIZE: u32 = 16;

/// How the connection to the SMTP server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SmtpTls {
    /// Plain SMTP, no TLS (local maildev only).
    Off,
    /// Plain connection upgraded with STARTTLS, which is required (usually port 587).
    Starttls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
}

/// How to reach the SMTP server.
#[derive(Clone, clap::Args)]
pub struct SmtpConfig {
    /// SMTP server host.
    #[arg(long = "smtp-host", env = "SMTP_HOST", default_value = DEFAULT_SMTP_HOST)]
    pub host: String,
    /// SMTP server port.
    #[arg(long = "smtp-port", env = "SMTP_PORT", default_value_t = DEFAULT_SMTP_PORT)]
    pub port: u16,
    /// Sender address (`From:`), optionally with a display name: `Shop <orders@example.com>`.
    #[arg(long = "smtp-from", env = "SMTP_FROM", default_value = DEFAULT_SMTP_FROM)]
    pub from: String,
    /// Transport security.
    #[arg(long = "smtp-tls", env = "SMTP_TLS", value_enum, default_value_t = SmtpTls::Off)]
    pub tls: SmtpTls,
    /// User name for SMTP authentication; none when unset.
    #[arg(long = "smtp-username", env = "SMTP_USERNAME")]
    pub username: Option<String>,
    /// Password for SMTP authentication (never logged).
    #[arg(long = "smtp-password", env = "SMTP_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Timeout of each SMTP command, connecting included.
    #[arg(long = "smtp-timeout-ms", env = "SMTP_TIMEOUT_MS", default_value_t = 10_000)]
    pub command_timeout_ms: u64,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            host: DEFAULT_SMTP_HOST.into(),
            port: DEFAULT_SMTP_PORT,
            from: DEFAULT_SMTP_FROM.into(),
            tls: SmtpTls::Off,
            username: None,
            password: None,
            command_timeout_ms: 10_000,
        }
    }
}

impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("from", &self.from)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("command_timeout_ms", &self.command_timeout_ms)
            .finish()
    }
}

/// When the mailer looks for work and how it backs off.
#[derive(Debug, Clone, clap::Args)]
pub struct MailerConfig {
    /// Emails sent at the same time (each by its own mailer task).
    #[arg(long = "mailer-concurrency", env = "MAILER_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,
    /// How often an idle mailer looks for due emails it was not woken for (written by another
    /// instance, or postponed after a failure).
    #[arg(
        long = "mailer-poll-interval-ms",
        env = "MAILER_POLL_INTERVAL_MS",
        default_value_t = 1_000
    )]
    pub poll_interval_ms: u64,
    /// Delay after the first failed attempt; it doubles with each further failure.
    #[arg(
        long = "mailer-retry-initial-ms",
        env = "MAILER_RETRY_INITIAL_MS",
        default_value_t = 1_000
    )]
    pub retry_initial_ms: u64,
    /// Longest delay between two attempts.
    #[arg(long = "mailer-retry-max-ms", env = "MAILER_RETRY_MAX_MS", default_value_t = 60_000)]
    pub retry_max_ms: u64,
    /// How long a claimed email stays reserved for the mailer that claimed it. It must outlast a
    /// whole SMTP exchange and the recording of its result; if the mailer dies meanwhile, the
    /// email is sent again after this long.
    #[arg(long = "mailer-claim-secs", env = "MAILER_CLAIM_SECS", default_value_t = 120)]
    pub claim_secs: u64,
}

impl Default for MailerConfig {
    fn default() -> Self {
        Self {
            concurrency: 4,
            poll_interval_ms: 1_000,
            retry_initial_ms: 1_000,
            retry_max_ms: 60_000,
            claim_secs: 120,
        }
    }
}

impl MailerConfig {
    fn backoff(&self) -> Backoff {
        Backoff {
            initial: Duration::from_millis(self.retry_initial_ms),
            max: Duration::from_millis(self.retry_max_ms),
        }
    }
}

/// An SMTP client for one server and sender.
#[derive(Clone)]
pub struct SmtpSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl SmtpSender {
    /// A client for `config`; no connection is made until the first send.
    pub fn new(config: &SmtpConfig) -> Result<Self> {
        let from = config
            .from
            .parse::<Mailbox>()
            .map_err(|e| Error::Config(format!("SMTP_FROM {:?}: {e}", config.from)))?;
        let builder = match config.tls {
            SmtpTls::Off => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(config.host.as_str()),
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&config.host)
                .map_err(|e| Error::Config(format!("SMTP_HOST {:?}: {e}", config.host)))?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&config.host)
                .map_err(|e| Error::Config(format!("SMTP_HOST {:?}: {e}", config.host)))?,
        };
        // Connections are pooled and reused from one email to the next (checked with NOOP before
        // reuse); the pool holds more than the mailers that share it, and closes connections idle
        // for a minute.
        let pool = PoolConfig::new()
            .max_size(SMTP_POOL_SIZE)
            .idle_timeout(Duration::from_secs(60));
        let mut builder = builder
            .port(config.port)
            .timeout(Some(Duration::from_millis(config.command_timeout_ms)))
            .pool_config(pool);
        match (&config.username, &config.password) {
            (Some(username), Some(password)) => {
                builder = builder.credentials(Credentials::new(username.clone(), password.clone()));
            }
            (None, None) => {}
            _ => {
                return Err(Error::Config(
                    "SMTP_USERNAME and SMTP_PASSWORD must be set together".into(),
                ))
            }
        }
        Ok(Self {
            transport: builder.build(),
            from,
        })
    }

    /// Sends one email; `Ok` once the server accepted it.
    async fn send(&self, notification: &PendingNotification) -> Result<()> {
        let to = notification
            .recipient
            .parse::<Mailbox>()
            .map_err(|e| Error::Message(format!("recipient {:?}: {e}", notification.recipient)))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(notification.subject.as_str())
            .message_id(Some(notification.message_id.clone()))
            .header(ContentType::TEXT_PLAIN)
            .body(notification.body.clone())
            .map_err(|e| Error::Message(e.to_string()))?;
        self.transport.send(message).await?;
        Ok(())
    }
}

/// What became of the email a mailer claimed.
enum Delivery {
    /// The SMTP server accepted it and it is marked sent.
    Sent,
    /// Retrying cannot deliver it: it is set aside as failed.
    SetAside,
    /// The attempt failed in a way that may pass: it stays pending, postponed.
    Postponed,
}

/// Sends recorded emails until shutdown. Several mailers may run side by side (in one process or
/// many): each claims a different row.
#[derive(Clone)]
pub struct Mailer {
    database: PgPool,
    relay: Relay,
    sender: SmtpSender,
    wake: Arc<Notify>,
    poll_interval: Duration,
    /// For the mailer's own database work: retried in place.
    database_policy: ErrorPolicy,
    /// For sending an email: carried out over its attempts through the table (see
    /// [`domain::after_failed_send`]), so a failing email never holds up the others.
    email_policy: ErrorPolicy,
    claim: Duration,
}

impl Mailer {
    /// A mailer over `database`, sending with `sender`, woken through `wake` when the handler
    /// recorded an email, following the service's error `policy`.
    pub fn new(
        database: PgPool,
        relay: Relay,
        sender: SmtpSender,
        wake: Arc<Notify>,
        config: &MailerConfig,
        policy: ErrorPolicy,
    ) -> Self {
        Self {
            database,
            relay,
            sender,
            wake,
            poll_interval: Duration::from_millis(config.poll_interval_ms.max(10)),
            database_policy: policy,
            email_policy: ErrorPolicy {
                backoff: config.backoff(),
                ..policy
            },
            claim: Duration::from_secs(config.claim_secs.max(1)),
        }
    }

    /// Runs until `shutdown` is cancelled. An attempt in progress finishes (bounded by the SMTP
    /// timeout) and is recorded before the task ends. Returns early only when its own database
    /// work fails in a way retrying cannot fix; `/health/live` then reports the mailer dead.
    pub async fn run(self, shutdown: CancellationToken) {
        match self.send_until_shutdown(&shutdown).await {
            Ok(()) => tracing::info!("mailer stopped"),
            Err(gave_up) => tracing::error!(error = %gave_up, "mailer stopped: its database work keeps failing"),
        }
    }

    async fn send_until_shutdown(&self, shutdown: &CancellationToken) -> Result<(), GaveUp> {
        let database = &self.database;
        let Some(pending) = self
            .database_policy
            .run("mailer startup sweep", shutdown, || {
                store::make_all_pending_due(database)
            })
            .await
            .transpose()?
        else {
            return Ok(());
        };
        if pending > 0 {
            tracing::info!(pending, "sending emails left pending by an earlier run");
        }
        // Consecutive postponed attempts; after each one the whole mailer pauses with backoff,
        // so an SMTP outage costs one attempt per pause, not one per pending row.
        let mut postponed = 0u32;
        while !shutdown.is_cancelled() {
            let Some(claimed) = self
                .database_policy
                .run("claiming the next email", shutdown, || {
                    store::claim_due(database, self.claim)
                })
                .await
                .transpose()?
            else {
                break;
            };
            let Some(notification) = claimed else {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(self.poll_interval) => {}
                }
                continue;
            };
            match self.deliver(notification, shutdown).await? {
                Delivery::Sent | Delivery::SetAside => {
                    postponed = 0;
                    // There may be more: let an idle sibling mailer help.
                    self.wake.notify_one();
                }
                Delivery::Postponed => {
                    postponed = postponed.saturating_add(1);
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(self.email_policy.backoff.delay(postponed)) => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends a claimed email and records what became of it, in a client span that continues the
    /// trace of the consumer span that recorded the email.
    async fn deliver(
        &self,
        notification: PendingNotification,
        shutdown: &CancellationToken,
    ) -> Result<Delivery, GaveUp> {
        let span = tracing::info_span!(
            "deliver",
            otel.name = "smtp send",
            otel.kind = "client",
            order_id = %notification.order_id,
            outcome = %notification.outcome,
            message_id = %notification.message_id,
            attempt = notification.attempts.saturating_add(1),
        );
        telemetry::continue_trace(&span, notification.traceparent.as_deref());
        self.send_and_record(notification, shutdown).instrument(span).await
    }

    async fn send_and_record(
        &self,
        notification: PendingNotification,
        shutdown: &CancellationToken,
    ) -> Result<Delivery, GaveUp> {
        let order_id = notification.order_id;
        let outcome = notification.outcome.as_str();
        let database = &self.database;
        let error = match self.sender.send(&notification).await {
            Ok(()) => {
                ::metrics::counter!(EMAILS_SENT, label::TEMPLATE => template_label(outcome)).increment(1);
                // The server has the mail: record it until the database takes it, shutdown or
                // not (within the claim), so that no other attempt sends it again.
                let keep_trying = CancellationToken::new();
                self.database_policy
                    .run("recording a sent email", &keep_trying, || {
                        self.record(order_id, outcome, Recorded::Sent)
                    })
                    .await
                    .transpose()?;
                tracing::info!("email sent");
                return Ok(Delivery::Sent);
            }
            Err(error) => error,
        };
        let class = error.class();
        let reason = format!("{error:#}");
        let earlier = |count: i32| u32::try_from(count).unwrap_or(0);
        // If recording the failure is interrupted by shutdown, the claim expires and the email
        // is tried again then.
        let delivery = match domain::after_failed_send(
            &self.email_policy,
            class,
            earlier(notification.attempts),
            earlier(notification.unclassified_failures),
        ) {
            AfterFailedSend::RetryAfter(delay) => {
                count_failed(outcome, "retried");
                tracing::warn!(error = %reason, %class, retry_in_ms = delay.as_millis() as u64, "sending email failed; will retry");
                let unclassified = class == ErrorClass::Unclassified;
                self.database_policy
                    .run("postponing an email", shutdown, || {
                        store::postpone(database, order_id, outcome, &reason, unclassified, delay)
                    })
                    .await
                    .transpose()?;
                Delivery::Postponed
            }
            AfterFailedSend::SetAside => {
                count_failed(outcome, "set_aside");
                tracing::error!(error = %reason, %class, "email cannot be delivered; set aside as failed");
                self.database_policy
                    .run("setting an email aside", shutdown, || {
                        self.record(order_id, outcome, Recorded::SetAside { error: &reason })
                    })
                    .await
                    .transpose()?;
                Delivery::SetAside
            }
        };
        Ok(delivery)
    }
}

/// The `template` label of an email whose order had `outcome`: `confirmed`, `failed`, or `other`
/// for a value this code does not know (a label never takes arbitrary text).
fn template_label(outcome: &str) -> &'static str {
    [Outcome::Confirmed, Outcome::Failed]
        .into_iter()
        .map(Outcome::as_str)
        .find(|known| *known == outcome)
        .unwrap_or("other")
}

/// Counts a failed attempt to send an email of `outcome`, followed by `disposition`.
fn count_failed(outcome: &str, disposition: &'static str) {
    ::metrics::counter!(
        EMAILS_FAILED,
        label::TEMPLATE => template_label(outcome),
        label::DISPOSITION => disposition
    )
    .increment(1);
}

/// What became of an email, as the mailer records it.
enum Recorded<'a> {
    /// The SMTP server accepted it.
    Sent,
    /// Retrying cannot deliver it; `error` says why.
    SetAside { error: &'a str },
}

impl Mailer {
    /// Records what became of a claimed email and, in the same transaction, the event that tells
    /// it (notification.sent or notification.failed) in the outbox.
    async fn record(&self, order_id: OrderId, outcome: &str, recorded: Recorded<'_>) -> Result<(), Error> {
        let mut tx = self.database.begin().await?;
        let event = match recorded {
            Recorded::Sent => domain::sent_event(&store::mark_sent(&mut tx, order_id, outcome).await?),
            Recorded::SetAside { error } => {
                domain::set_aside_event(&store::set_aside(&mut tx, order_id, outcome, error).await?, error)
            }
        };
        outbox::enqueue(&mut tx, &event, None).await?;
        tx.commit().await?;
        self.relay.notify();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_counted_by_the_outcome_they_report_and_nothing_else() {
        assert_eq!(template_label("confirmed"), "confirmed");
        assert_eq!(template_label("failed"), "failed");
        assert_eq!(template_label("anything else"), "other");
    }

    #[test]
    fn the_smtp_password_never_reaches_the_log() {
        let config = SmtpConfig {
            username: Some("mailer".into()),
            password: Some("hunter2".into()),
            ..SmtpConfig::default()
        };
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("***"), "{printed}");
    }

    #[test]
    fn a_username_without_a_password_is_a_configuration_error() {
        let config = SmtpConfig {
            username: Some("mailer".into()),
            ..SmtpConfig::default()
        };
        assert!(matches!(SmtpSender::new(&config), Err(Error::Config(_))));
    }

    #[test]
    fn an_unparsable_sender_is_a_configuration_error() {
        let config = SmtpConfig {
            from: "not an address".into(),
            ..SmtpConfig::default()
        };
        assert!(matches!(SmtpSender::new(&config), Err(Error::Config(_))));
    }

    fn pending_to(recipient: &str) -> PendingNotification {
        PendingNotification {
            order_id: saga_contracts::OrderId::new(),
            outcome: "confirmed".into(),
            recipient: recipient.into(),
            subject: "Order confirmed".into(),
            body: "Thank you.".into(),
            message_id: "<test.confirmed@saga-platform.local>".into(),
            attempts: 0,
            unclassified_failures: 0,
            traceparent: None,
        }
    }

    #[tokio::test]
    async fn an_smtp_server_nobody_listens_on_is_a_transient_error() -> anyhow::Result<()> {
        // Bound once, then released: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let sender = SmtpSender::new(&SmtpConfig {
            port,
            command_timeout_ms: 2_000,
            ..SmtpConfig::default()
        })?;
        let outcome = sender.send(&pending_to("ada@example.com")).await;
        assert!(
            matches!(&outcome, Err(error) if error.class() == ErrorClass::Transient),
            "{outcome:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_recipient_that_does_not_parse_can_never_be_sent_to() -> anyhow::Result<()> {
        let sender = SmtpSender::new(&SmtpConfig::default())?;
        let outcome = sender.send(&pending_to("not an address")).await;
        assert!(
            matches!(&outcome, Err(error @ Error::Message(_)) if error.class() == ErrorClass::Permanent),
            "{outcome:?}"
        );
        Ok(())
    }
}
