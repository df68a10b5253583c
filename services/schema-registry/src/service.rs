//! The registry service: the in-memory [`State`] kept equal to the Kafka log.
//!
//! Reads take a shared lock on the state and never wait for Kafka. Writes are serialized: under
//! the storage lock, a write catches up with the log if an earlier write failed, plans its change
//! against the state, appends the record, and only when the broker acknowledged it applies it.
//! A write runs in its own task, so a client that hangs up halfway cannot leave a record in the
//! log that the state never saw.

use std::sync::{Arc, PoisonError, RwLock};

use crate::error::Error;
use crate::record::Record;
use crate::state::{RegistryError, State};
use crate::storage::KafkaStorage;

/// Why a request did not succeed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServiceError {
    /// The request was refused; the client has to change it.
    #[error(transparent)]
    Rejected(#[from] RegistryError),
    /// The change could not be made durable; the client may retry.
    #[error("the registry's storage failed")]
    Storage(#[from] Error),
}

/// What a planned change comes to.
#[derive(Debug)]
pub(crate) enum Planned<T> {
    /// Nothing to write; answer `T`.
    Nothing(T),
    /// Append the record, then answer `T`.
    Append(T, Record),
}

/// The state and its log.
#[derive(Debug)]
pub(crate) struct Service {
    state: RwLock<State>,
    storage: tokio::sync::Mutex<KafkaStorage>,
}

impl Service {
    /// A service whose state was rebuilt from `storage`'s records.
    pub(crate) fn new(state: State, storage: KafkaStorage) -> Service {
        Service {
            state: RwLock::new(state),
            storage: tokio::sync::Mutex::new(storage),
        }
    }

    /// Runs a query against the current state.
    pub(crate) fn read<T>(&self, query: impl FnOnce(&State) -> T) -> T {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        query(&state)
    }

    /// Plans a change against the current state and, if it needs a record, makes that record
    /// durable and applies it. See the module docs.
    pub(crate) async fn write<T, F>(self: &Arc<Self>, plan: F) -> Result<T, ServiceError>
    where
        T: Send + 'static,
        F: FnOnce(&State) -> Result<Planned<T>, RegistryError> + Send + 'static,
    {
        let service = Arc::clone(self);
        tokio::spawn(async move {
            let mut storage = service.storage.lock().await;
            let missed = storage.catch_up().await?;
            service.apply_all(&missed);
            match service.read(plan)? {
                Planned::Nothing(answer) => Ok(answer),
                Planned::Append(answer, record) => {
                    let records = storage.append(&record).await?;
                    service.apply_all(&records);
                    Ok(answer)
                }
            }
        })
        .await
        .map_err(|e| ServiceError::Storage(Error::Task(e.to_string())))?
    }

    fn apply_all(&self, records: &[Record]) {
        if records.is_empty() {
            return;
        }
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        records.iter().for_each(|record| state.apply(record));
    }
}
