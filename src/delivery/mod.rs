//! Getting accepted messages to the upstream: workers, transports, retry policy.

pub mod retry;
pub mod transport;
pub mod worker;

pub use retry::RetryPolicy;
pub use transport::{Transport, TransportJob};
pub use worker::{run_worker_until_stopped, ExecutionOutcome, Worker};
