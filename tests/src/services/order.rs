//! Starting the order service for a test.

use saga_common::service::RunningService;
use tokio_util::sync::CancellationToken;

use crate::TestEnv;

/// A saga deadline long enough that no test waits for it unless it means to.
pub const LONG_DEADLINE_SECS: f64 = 30.0;

/// Starts the order service on `env`'s topics and a database of its own, failing orders whose
/// outcomes have not all arrived `deadline_secs` after they were placed. Stop it with
/// [`RunningService::stop`].
pub async fn start(env: &TestEnv, deadline_secs: f64) -> anyhow::Result<RunningService> {
    start_with_rate_limit(
        env,
        deadline_secs,
        order_service::rate_limit::OrderRateLimitConfig {
            per_second: 1000,
            burst: 2000,
        },
    )
    .await
}

/// [`start`] with the given per-client limit on placing orders.
pub async fn start_with_rate_limit(
    env: &TestEnv,
    deadline_secs: f64,
    order_rate_limit: order_service::rate_limit::OrderRateLimitConfig,
) -> anyhow::Result<RunningService> {
    let config = order_service::Config {
        service: env.service_config("order"),
        saga_deadline_secs: deadline_secs,
        order_rate_limit,
    };
    order_service::start(&config, CancellationToken::new())
        .await?
        .ok_or_else(|| anyhow::anyhow!("order service did not start"))
}
