//! Starting the notification service for a test, and the SMTP servers its mail goes to: the
//! local stack's mail catcher (maildev), shared by every test, or a small SMTP server of the
//! test's own that refuses chosen recipients for good.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use notification_service::mailer::{MailerConfig, SmtpConfig};
use notification_service::Config;
use saga_common::service::RunningService;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::TestEnv;

/// Starts the notification service in-process on this test's topics and database, mailing
/// through `smtp`, with short mailer timings.
pub async fn start(env: &TestEnv, smtp: SmtpConfig) -> anyhow::Result<RunningService> {
    let config = Config {
        service: env.service_config("notification"),
        smtp,
        mailer: MailerConfig {
            poll_interval_ms: 200,
            retry_initial_ms: 200,
            retry_max_ms: 1_000,
            ..MailerConfig::default()
        },
    };
    notification_service::start(&config, CancellationToken::new())
        .await?
        .context("service stopped before it was up")
}

/// Plain SMTP to `127.0.0.1:port`.
pub fn smtp_on_localhost(port: u16) -> SmtpConfig {
    SmtpConfig {
        host: "127.0.0.1".into(),
        port,
        command_timeout_ms: 5_000,
        ..SmtpConfig::default()
    }
}

/// The local stack's maildev: `SMTP_HOST`/`SMTP_PORT` as deploy/local/stack.env exports them.
pub fn maildev_smtp() -> SmtpConfig {
    SmtpConfig {
        host: std::env::var("SMTP_HOST").unwrap_or_else(|_| "127.0.0.1".into()),
        ..smtp_on_localhost(
            std::env::var("SMTP_PORT")
                .ok()
                .and_then(|port| port.parse().ok())
                .unwrap_or(1025),
        )
    }
}

/// maildev's HTTP API: `MAILDEV_API_URL`, or port `MAILDEV_WEB_PORT` on 127.0.0.1.
fn maildev_url() -> String {
    std::env::var("MAILDEV_API_URL").unwrap_or_else(|_| {
        let port = std::env::var("MAILDEV_WEB_PORT").unwrap_or_else(|_| "1080".into());
        format!("http://127.0.0.1:{port}")
    })
}

/// Every mail maildev received for `recipient`. maildev is shared by every test, so each test
/// mails recipients of its own (the fixtures' `{order_id}@example.com`) and looks only at those.
pub async fn maildev_mails_to(recipient: &str) -> anyhow::Result<Vec<Value>> {
    let all: Vec<Value> = crate::get(format!("{}/email", maildev_url()))
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(all
        .into_iter()
        .filter(|mail| {
            mail["to"]
                .as_array()
                .is_some_and(|to| to.iter().any(|address| address["address"] == recipient))
        })
        .collect())
}

/// A small SMTP server on a free local port that refuses the recipients it is told to with
/// `550 5.1.1` (a permanent rejection) and accepts every other mail, remembering its
/// recipients. It stops when dropped.
pub struct RejectingSmtpServer {
    /// The port it listens on.
    pub port: u16,
    rejected: Arc<Mutex<HashSet<String>>>,
    delivered: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
    listener: JoinHandle<()>,
}

impl RejectingSmtpServer {
    /// A server refusing mail to every address in `rejected`.
    pub async fn start(rejected: &[&str]) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let rejected = Arc::new(Mutex::new(rejected.iter().map(|r| (*r).to_owned()).collect()));
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::clone(&connections);
        let session = Session {
            rejected: Arc::clone(&rejected),
            delivered: Arc::clone(&delivered),
        };
        let listener = tokio::spawn(async move {
            while let Ok((connection, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let session = session.clone();
                tokio::spawn(async move {
                    // A client that hangs up mid-session is no concern of the test.
                    let _ = session.serve(connection).await;
                });
            }
        });
        Ok(Self {
            port,
            rejected,
            delivered,
            connections,
            listener,
        })
    }

    /// From now on, accepts mail to every recipient.
    pub fn accept_everyone(&self) {
        self.rejected.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// How many connections clients opened so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The recipients of every mail accepted so far, in order.
    pub fn delivered_to(&self) -> Vec<String> {
        self.delivered.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Drop for RejectingSmtpServer {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// One SMTP conversation of a [`RejectingSmtpServer`]: just enough of RFC 5321 for lettre.
#[derive(Clone)]
struct Session {
    rejected: Arc<Mutex<HashSet<String>>>,
    delivered: Arc<Mutex<Vec<String>>>,
}

impl Session {
    async fn serve(self, connection: TcpStream) -> std::io::Result<()> {
        let (reader, mut writer) = connection.into_split();
        let mut lines = BufReader::new(reader).lines();
        writer.write_all(b"220 test-smtp ready\r\n").await?;
        let mut recipients = Vec::new();
        while let Some(line) = lines.next_line().await? {
            let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
            let reply = match verb.as_str() {
                "EHLO" | "HELO" => "250 test-smtp".to_owned(),
                "MAIL" | "NOOP" => "250 OK".to_owned(),
                "RSET" => {
                    recipients.clear();
                    "250 OK".to_owned()
                }
                "RCPT" => {
                    let address = line
                        .split_once('<')
                        .and_then(|(_, rest)| rest.split_once('>'))
                        .map(|(address, _)| address.to_owned())
                        .unwrap_or_default();
                    if self
                        .rejected
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .contains(&address)
                    {
                        format!("550 5.1.1 <{address}>: no such user")
                    } else {
                        recipients.push(address);
                        "250 OK".to_owned()
                    }
                }
                "DATA" => {
                    writer.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                    while lines.next_line().await?.is_some_and(|line| line != ".") {}
                    self.delivered
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .append(&mut recipients);
                    "250 OK queued".to_owned()
                }
                "QUIT" => {
                    writer.write_all(b"221 bye\r\n").await?;
                    return Ok(());
                }
                _ => "502 command not implemented".to_owned(),
            };
            writer.write_all(format!("{reply}\r\n").as_bytes()).await?;
        }
        Ok(())
    }
}
