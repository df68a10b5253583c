//! Where the services' HTTP APIs and the dashboard are, and the API keys sagactl calls them
//! with (`ORDER_API_KEY`, `READ_API_KEY`, `ADMIN_API_KEY`, as `.local/secrets.env` sets them).

use saga_common::auth::{ApiKeys, Scope, Secret};

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
    /// Further order-service instances (base URLs, comma-separated): `bench` sends its orders to
    /// these and the order service URL in turn. Any instance answers every other request.
    #[arg(long = "more-order-urls", env = "MORE_ORDER_SERVICE_URLS", value_delimiter = ',')]
    pub(crate) more_order: Vec<String>,
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
    /// API key of the `orders` scope (placing and reading orders).
    #[arg(long = "order-api-key", env = ApiKeys::ORDER_ENV, hide_env_values = true)]
    pub(crate) order_api_key: Option<Secret>,
    /// API key of the `read` scope (reading payments, stock, notifications, the dashboard).
    #[arg(long = "read-api-key", env = ApiKeys::READ_ENV, hide_env_values = true)]
    pub(crate) read_api_key: Option<Secret>,
    /// API key of the `admin` scope (stock adjustments, redrives, operator lists).
    #[arg(long = "admin-api-key", env = ApiKeys::ADMIN_ENV, hide_env_values = true)]
    pub(crate) admin_api_key: Option<Secret>,
}

/// What to do about a refused credential: `status` 401 or 403 from a route needing `scope`.
pub(crate) fn credential_hint(status: reqwest::StatusCode, scope: Scope) -> String {
    let variable = match scope {
        Scope::Orders => ApiKeys::ORDER_ENV,
        Scope::Read => ApiKeys::READ_ENV,
        Scope::Admin => ApiKeys::ADMIN_ENV,
    };
    match status.as_u16() {
        401 | 403 => format!(
            " (this needs a key with the {scope} scope in {variable}; on the local stack `source .local/secrets.env` sets it)"
        ),
        _ => String::new(),
    }
}

impl Endpoints {
    /// `request` carrying the key of `scope` (none when that key is not set: the service's 401
    /// then says so).
    pub(crate) fn authorize(&self, request: reqwest::RequestBuilder, scope: Scope) -> reqwest::RequestBuilder {
        ApiKeys {
            order: self.order_api_key.clone(),
            read: self.read_api_key.clone(),
            admin: self.admin_api_key.clone(),
        }
        .authorize(request, scope)
    }

    /// The order-service instance that order number `index` of a benchmark is sent to: each in
    /// turn.
    pub(crate) fn order_instance(&self, index: usize) -> &str {
        let more = || {
            self.more_order
                .iter()
                .map(|url| url.trim())
                .filter(|url| !url.is_empty())
        };
        match index % (1 + more().count()) {
            0 => self.order.as_str(),
            other => more().nth(other - 1).unwrap_or(&self.order),
        }
        .trim_end_matches('/')
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(more_order: &[&str]) -> Endpoints {
        Endpoints {
            order: "http://127.0.0.1:8080/".into(),
            more_order: more_order.iter().map(|url| url.to_string()).collect(),
            payment: String::new(),
            inventory: String::new(),
            notification: String::new(),
            dashboard: String::new(),
            order_api_key: None,
            read_api_key: None,
            admin_api_key: None,
        }
    }

    #[test]
    fn orders_go_to_each_order_service_instance_in_turn() {
        let two = endpoints(&["http://127.0.0.1:8180"]);
        let sent: Vec<&str> = (0..4).map(|index| two.order_instance(index)).collect();
        assert_eq!(
            sent,
            [
                "http://127.0.0.1:8080",
                "http://127.0.0.1:8180",
                "http://127.0.0.1:8080",
                "http://127.0.0.1:8180"
            ]
        );
    }

    #[test]
    fn an_empty_list_of_further_instances_leaves_the_order_service_alone() {
        let one = endpoints(&[""]);
        assert!((0..3).all(|index| one.order_instance(index) == "http://127.0.0.1:8080"));
    }
}
