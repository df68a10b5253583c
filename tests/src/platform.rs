//! The whole platform in one test: the four services started in-process on the test's topics
//! and databases, driven through their HTTP APIs, and the mail the local maildev received.

use std::time::Duration;

use saga_common::service::RunningService;
use serde_json::{json, Value};

use crate::{eventually, services, TestEnv};

/// The four services of one test.
pub struct Platform {
    /// The test's slice of the stack.
    pub env: TestEnv,
    /// The order service.
    pub order: RunningService,
    /// The payment service.
    pub payment: RunningService,
    /// The inventory service.
    pub inventory: RunningService,
    /// The notification service, mailing to the local maildev.
    pub notification: RunningService,
    http: reqwest::Client,
}

impl Platform {
    /// Starts the four services; orders fail `saga_deadline_secs` after they were placed unless decided.
    pub async fn start(saga_deadline_secs: f64) -> anyhow::Result<Self> {
        let env = TestEnv::new().await?;
        Ok(Self {
            order: services::order::start(&env, saga_deadline_secs).await?,
            payment: services::payment::start(&env).await?,
            inventory: services::inventory::Inventory::start(&env).await?.running,
            notification: services::notification::start(&env, services::notification::maildev_smtp()).await?,
            env,
            http: crate::http(),
        })
    }

    /// Stops the four services gracefully.
    pub async fn stop(self) {
        tokio::join!(
            self.order.stop(),
            self.payment.stop(),
            self.inventory.stop(),
            self.notification.stop()
        );
    }

    /// Adds `delta` units of `sku` through the inventory API.
    pub async fn restock(&self, sku: &str, delta: i64) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!("http://{}/stock/{sku}/adjustments", self.inventory.local_addr))
            .json(&json!({"delta": delta, "reason": "test stock"}))
            .send()
            .await?;
        anyhow::ensure!(response.status().is_success(), "restock answered {}", response.status());
        Ok(())
    }

    /// Places an order through the order API; returns its id.
    pub async fn place(&self, email: &str, token: &str, lines: &[(&str, i64)]) -> anyhow::Result<String> {
        let items: Vec<Value> = lines
            .iter()
            .map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity, "unit_price_minor": 1250}))
            .collect();
        let body = json!({"customer_id": "c-e2e", "customer_email": email, "currency": "EUR", "payment_token": token, "items": items});
        let response = self
            .http
            .post(format!("http://{}/orders", self.order.local_addr))
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(response.status() == 202, "POST /orders answered {}", response.status());
        let answer: Value = response.json().await?;
        Ok(answer["order_id"].as_str().unwrap_or_default().to_string())
    }

    /// `GET path` on a service, as JSON.
    pub async fn get(&self, address: std::net::SocketAddr, path: &str) -> anyhow::Result<Value> {
        let response = self.http.get(format!("http://{address}{path}")).send().await?;
        anyhow::ensure!(
            response.status().is_success(),
            "GET {path} answered {}",
            response.status()
        );
        Ok(response.json().await?)
    }

    /// Waits until the order is decided; returns its view.
    pub async fn terminal_order(&self, order_id: &str) -> anyhow::Result<Value> {
        eventually(
            &format!("order {order_id} decided"),
            Duration::from_secs(60),
            || async {
                let view = self
                    .get(self.order.local_addr, &format!("/orders/{order_id}"))
                    .await
                    .ok()?;
                (view["status"] != "PENDING").then_some(view)
            },
        )
        .await
    }

    /// The payment of an order.
    pub async fn payment(&self, order_id: &str) -> anyhow::Result<Value> {
        self.get(self.payment.local_addr, &format!("/payments/{order_id}"))
            .await
    }

    /// Waits until the payment of an order has `status`.
    pub async fn payment_when(&self, order_id: &str, status: &str) -> anyhow::Result<Value> {
        eventually(
            &format!("payment of {order_id} {status}"),
            Duration::from_secs(60),
            || async {
                let payment = self.payment(order_id).await.ok()?;
                (payment["status"] == status).then_some(payment)
            },
        )
        .await
    }

    /// The stock levels of `sku`.
    pub async fn stock(&self, sku: &str) -> anyhow::Result<Value> {
        self.get(self.inventory.local_addr, &format!("/stock/{sku}")).await
    }

    /// Waits until the SKU's stock has exactly these levels.
    pub async fn stock_settles(&self, sku: &str, available: i64, reserved: i64, committed: i64) -> anyhow::Result<()> {
        let expected = (available, reserved, committed);
        let last = eventually(
            &format!("stock of {sku} at {expected:?}"),
            Duration::from_secs(60),
            || async {
                let stock = self.stock(sku).await.ok()?;
                let levels = (
                    stock["available"].as_i64()?,
                    stock["reserved"].as_i64()?,
                    stock["committed"].as_i64()?,
                );
                (levels == expected).then_some(levels)
            },
        )
        .await;
        last.map(|_| ())
    }
}

/// Mail the SMTP server received for `address`.
pub async fn mail_to(address: &str) -> anyhow::Result<Vec<Value>> {
    let url = std::env::var("MAILDEV_API_URL").unwrap_or_else(|_| "http://127.0.0.1:1080".into());
    let all: Vec<Value> = crate::get(format!("{url}/email")).await?.json().await?;
    Ok(all
        .into_iter()
        .filter(|mail| {
            mail["to"]
                .as_array()
                .is_some_and(|to| to.iter().any(|t| t["address"] == address))
        })
        .collect())
}

/// Waits for exactly `count` mails to `address`, then makes sure no more arrive for a while.
pub async fn exactly_mails(address: &str, count: usize) -> anyhow::Result<Vec<Value>> {
    eventually(
        &format!("{count} mail(s) to {address}"),
        Duration::from_secs(60),
        || async { (mail_to(address).await.ok()?.len() >= count).then_some(()) },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mails = mail_to(address).await?;
    anyhow::ensure!(
        mails.len() == count,
        "expected {count} mail(s) to {address}, got {}: {mails:#?}",
        mails.len()
    );
    Ok(mails)
}

/// An address no other test mails.
pub fn unique_email() -> String {
    format!("{}@example.com", uuid::Uuid::new_v4().simple())
}

/// A SKU no other test stocks.
pub fn unique_sku() -> String {
    format!("SKU-{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}
