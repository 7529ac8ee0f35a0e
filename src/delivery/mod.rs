//! Getting accepted messages to the upstreams: workers, the upstream pool, transports,
//! retry policy.

pub mod outgoing;
pub mod pool;
pub mod retry;
pub mod smtp_client;
pub mod smtp_session;
mod starttls;
pub mod tls;
pub mod transport;
pub mod worker;

pub use pool::{Member, Upstreams};
pub use retry::RetryPolicy;
pub use transport::{Transport, TransportJob};
pub use worker::{run_worker_until_stopped, ExecutionOutcome, Worker};
