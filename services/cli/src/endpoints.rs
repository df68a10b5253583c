//! Where the services' HTTP APIs and the dashboard are.

/// Base URLs of the services.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Endpoints {
    /// Order service base URL.
    #[arg(
        long = "order-url",
        env = "ORDER_SERVICE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub(crate) order: String,
    /// Payment service base URL.
    #[arg(
        long = "payment-url",
        env = "PAYMENT_SERVICE_URL",
        default_value = "http://127.0.0.1:8082"
    )]
    pub(crate) payment: String,
    /// Inventory service base URL.
    #[arg(
        long = "inventory-url",
        env = "INVENTORY_SERVICE_URL",
        default_value = "http://127.0.0.1:8083"
    )]
    pub(crate) inventory: String,
    /// Notification service base URL.
    #[arg(
        long = "notification-url",
        env = "NOTIFICATION_SERVICE_URL",
        default_value = "http://127.0.0.1:8084"
    )]
    pub(crate) notification: String,
    /// Dashboard base URL.
    #[arg(
        long = "dashboard-url",
        env = "DASHBOARD_URL",
        default_value = "http://127.0.0.1:8085"
    )]
    pub(crate) dashboard: String,
}

impl Endpoints {
    /// Every service with its base URL.
    pub(crate) fn all(&self) -> [(&'static str, &str); 4] {
        [
            ("order-service", &self.order),
            ("payment-service", &self.payment),
            ("inventory-service", &self.inventory),
            ("notification-service", &self.notification),
        ]
    }

    /// The base URL of `service` (`order-service` or just `order`).
    pub(crate) fn of(&self, service: &str) -> anyhow::Result<&str> {
        let wanted = service.trim_end_matches("-service");
        self.all()
            .into_iter()
            .find(|(name, _)| name.trim_end_matches("-service") == wanted)
            .map(|(_, url)| url.trim_end_matches('/'))
            .ok_or_else(|| {
                anyhow::anyhow!("unknown service {service:?}; one of order, payment, inventory, notification")
            })
    }
}
