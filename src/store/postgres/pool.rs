//! A small pool of blocking PostgreSQL connections: the store's methods are synchronous
//! and run on blocking threads, so a connection is taken for one call (one transaction)
//! and given back, and a broken one is dropped instead of reused.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use postgres::types::ToSql;
use postgres::{Client, Config, GenericClient, NoTls, Row, Statement};

use crate::store::StoreError;

/// Idle connections kept for reuse; more are opened when every one is in use.
const MAX_IDLE: usize = 16;

/// See [`Pool::connect`].
const IDLE_IN_TRANSACTION: &str = "SET idle_in_transaction_session_timeout = '30s'";

pub(super) struct Pool {
    config: Config,
    idle: Mutex<Vec<(Client, Statements)>>,
}

/// A connection's prepared statements, by their SQL: a statement of the hot path is
/// parsed and planned once per connection, and each later use is one round trip
/// instead of two.
#[derive(Default)]
pub(super) struct Statements(HashMap<&'static str, Statement>);

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

impl Statements {
    fn prepared(&mut self, client: &mut impl GenericClient, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(statement) = self.0.get(sql) {
            return Ok(statement.clone());
        }
        let statement = client.prepare(sql)?;
        self.0.insert(sql, statement.clone());
        Ok(statement)
    }

    pub fn query(
        &mut self,
        client: &mut impl GenericClient,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Vec<Row>, StoreError> {
        let statement = self.prepared(client, sql)?;
        Ok(client.query(&statement, params)?)
    }

    pub fn query_opt(
        &mut self,
        client: &mut impl GenericClient,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Option<Row>, StoreError> {
        let statement = self.prepared(client, sql)?;
        Ok(client.query_opt(&statement, params)?)
    }

    pub fn execute(
        &mut self,
        client: &mut impl GenericClient,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<u64, StoreError> {
        let statement = self.prepared(client, sql)?;
        Ok(client.execute(&statement, params)?)
    }
}

impl Pool {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// A fresh connection of its own (for LISTEN, which holds one for good). A
    /// transaction of ours left idle (a node stuck between a write and its commit)
    /// is ended by the server after [`IDLE_IN_TRANSACTION`]: held open, it would hold
    /// back every node's event stream (see `stream`) and vacuum.
    pub fn connect(&self) -> Result<Client, StoreError> {
        let mut client = self.config.connect(NoTls)?;
        client.batch_execute(IDLE_IN_TRANSACTION)?;
        Ok(client)
    }

    pub fn get(&self) -> Result<Conn<'_>, StoreError> {
        Ok(Conn {
            pool: self,
            client: Some(self.take()?),
        })
    }

    /// A connection of the pool, for a caller that keeps it across calls (an open
    /// writer batch); it goes back with [`Pool::give`].
    pub fn take(&self) -> Result<(Client, Statements), StoreError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        Ok(match idle {
            Some((client, statements)) if !client.is_closed() => (client, statements),
            _ => (self.connect()?, Statements::default()),
        })
    }

    /// Gives a connection back, unless it broke or enough are idle.
    pub fn give(&self, conn: (Client, Statements)) {
        if conn.0.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }
}

/// A pooled connection, given back when dropped unless it broke.
pub(super) struct Conn<'a> {
    pool: &'a Pool,
    client: Option<(Client, Statements)>,
}

impl Conn<'_> {
    /// The client and its prepared statements, to use both in one transaction.
    pub fn parts(&mut self) -> (&mut Client, &mut Statements) {
        let (client, statements) = self
            .client
            .as_mut()
            .unwrap_or_else(|| unreachable!("taken only on drop"));
        (client, statements)
    }
}

impl Deref for Conn<'_> {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self
            .client
            .as_ref()
            .unwrap_or_else(|| unreachable!("taken only on drop"))
            .0
    }
}

impl DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.parts().0
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.client.take() {
            self.pool.give(conn);
        }
    }
}
