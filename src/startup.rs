//! Wiring: settings in, a bound HTTP listener and running delivery workers out.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::dev::Service as _;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use tokio::sync::{watch, Notify};
use tracing_actix_web::TracingLogger;

use crate::api::{self, AppState};
use crate::auth::TokenKeys;
use crate::backpressure::QueueGauge;
use crate::bounces::ingest::{Bounces, SnsCertificates};
use crate::config::Settings;
use crate::delivery::{run_worker_until_stopped, Member, RetryPolicy, Transport, Upstreams, Worker};
use crate::metrics::Metrics;
use crate::render::template::RenderLimits;
use crate::retention::{run_purger_until_stopped, Retention};
use crate::sending::Sender;
use crate::store::writer::{LeasePolicy, StoreWriter};
use crate::store::{PgStore, ResilientStore, Store};
use crate::templates::Templates;
use crate::webhooks::dispatcher::{run_dispatcher_until_stopped, Dispatcher};
use crate::webhooks::Webhooks;

/// A built service: listening, with its workers ready to start.
pub struct Application {
    port: u16,
    server: Server,
    worker: Worker,
    queue: Arc<QueueGauge>,
    worker_count: usize,
    wake: Arc<Notify>,
    tokens: Arc<TokenKeys>,
    dispatcher: Dispatcher,
    retention: Retention,
    /// `[dns] recheck`.
    domain_recheck: std::time::Duration,
}

/// How long workers may take to finish their step before a restart that reopens the store.
const REOPEN_DRAIN: std::time::Duration = std::time::Duration::from_secs(30);

/// How long requests in progress may take to finish after SIGTERM or SIGINT.
const SHUTDOWN_GRACE_SECS: u64 = 30;

/// Concurrent webhook deliveries.
const DISPATCHERS: usize = 4;

/// Delivery workers per upstream connection. A worker hands its connection back as
/// soon as the upstream answers and then waits for the outcome to reach the disk, so
/// with more workers than connections a connection never idles through an fsync; the
/// price is that a crash can repeat up to one transaction per worker (the upstream
/// accepted it, its outcome was not yet on disk). Measured on two cores into
/// smtp-sink over 8 connections: 1 per connection 1,974 msg/s end to end, 2 → 2,184,
/// 4 → 2,930–3,061.
pub const WORKERS_PER_CONNECTION: usize = 4;

/// Delivery workers when the sandbox is the transport (no connection limit applies).
const SANDBOX_WORKERS: usize = 2;

/// What `serve` reads and checks from the configuration before it binds a port or opens
/// the store: the data directory, keys, relay passwords and certificates, provider
/// secrets, the listen address. `check-config` runs exactly this, so it refuses every
/// configuration `serve` would refuse; only what the running system decides (the port
/// is taken, another mailgate holds the store) is left to `serve`.
pub struct Prepared {
    tokens: TokenKeys,
    /// One transport per `[[upstreams]]` entry, in order; empty means the sandbox.
    relays: Vec<Member>,
    providers: std::collections::HashMap<String, crate::bounces::providers::ProviderKeys>,
    sns_pinned: Option<Vec<u8>>,
    /// `storage.backend = "postgres"`: the database URL, read from `url_env` / `url_file`.
    database_url: Option<String>,
}

impl Prepared {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        Self::with_tokens(settings, TokenKeys::load)
    }

    /// Every check of `new`, changing nothing on disk (no dev key is created); returns
    /// what an operator should hear about even though it is allowed.
    pub fn check(settings: &Settings) -> anyhow::Result<Vec<String>> {
        Self::with_tokens(settings, TokenKeys::check)?;
        Ok(settings.warnings())
    }

    fn with_tokens(
        settings: &Settings,
        tokens: impl FnOnce(&Settings) -> anyhow::Result<TokenKeys>,
    ) -> anyhow::Result<Self> {
        use std::net::ToSocketAddrs as _;
        let listen = &settings.http.listen;
        let resolved = listen.to_socket_addrs().ok().and_then(|mut a| a.next());
        anyhow::ensure!(
            resolved.is_some(),
            "http.listen `{listen}` is not an address like 127.0.0.1:8080"
        );
        usable_data_directory(&settings.storage.path)?;
        let tokens = tokens(settings)?;
        let smtp_timeout = settings.delivery.smtp_timeout.0;
        let relays = settings
            .upstreams
            .iter()
            .map(|up| {
                let transport = Transport::smtp(up, smtp_timeout)?;
                let member = Member::new(transport, up.weight, up.max_connections, up.rate_per_second)
                    .with_tenant_cap(up.tenant_max_connections);
                Ok(match up.dkim {
                    crate::config::DkimMode::Sign => member,
                    crate::config::DkimMode::Off => member.without_dkim(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let providers =
            crate::bounces::providers::load_keys(settings).context("Failed to read provider webhook keys")?;
        let sns_pinned = match &settings.bounces.sns_certificate_file {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("bounces.sns_certificate_file: Failed to read {}", path.display()))?,
            ),
            None => None,
        };
        let storage = &settings.storage;
        let database_url = match storage.backend {
            crate::config::StorageBackend::Sled => None,
            crate::config::StorageBackend::Postgres => Some(
                crate::config::read_secret(storage.url_file.as_deref(), storage.url_env.as_deref())
                    .context("storage: Failed to read the database URL")?
                    .context("storage: no database URL")?,
            ),
        };
        Ok(Self {
            tokens,
            relays,
            providers,
            sns_pinned,
            database_url,
        })
    }
}

/// `storage.path` is a directory, or can be made one: its nearest existing ancestor is
/// a directory that is not read-only. Checked without creating anything; whether the
/// store itself opens (another mailgate may hold its lock) only `serve` finds out.
fn usable_data_directory(path: &std::path::Path) -> anyhow::Result<()> {
    let absolute = std::path::absolute(path).with_context(|| format!("storage.path `{}`", path.display()))?;
    let existing = absolute
        .ancestors()
        .find(|p| p.exists())
        .with_context(|| format!("storage.path `{}`: no part of it exists", path.display()))?;
    let metadata =
        std::fs::metadata(existing).with_context(|| format!("storage.path: cannot read {}", existing.display()))?;
    anyhow::ensure!(
        metadata.is_dir(),
        "storage.path `{}`: {} is not a directory",
        path.display(),
        existing.display()
    );
    anyhow::ensure!(
        !metadata.permissions().readonly(),
        "storage.path `{}`: {} is read-only",
        path.display(),
        existing.display()
    );
    Ok(())
}

impl Application {
    /// Checks the configuration (`Prepared`), binds the listener from
    /// `settings.http.listen` (port 0 picks a free port), opens the store and recovers
    /// abandoned leases, and builds the transport.
    pub fn build(settings: Settings) -> anyhow::Result<Self> {
        let prepared = Prepared::new(&settings)?;
        for warning in settings.warnings() {
            tracing::warn!("{warning}");
        }
        let listener = TcpListener::bind(&settings.http.listen)
            .with_context(|| format!("Failed to listen on {}", settings.http.listen))?;
        Self::build_with(settings, prepared, listener)
    }

    fn build_with(settings: Settings, prepared: Prepared, listener: TcpListener) -> anyhow::Result<Self> {
        let settings = Arc::new(settings);
        std::fs::create_dir_all(&settings.storage.path).with_context(|| {
            format!(
                "Failed to create the data directory {}",
                settings.storage.path.display()
            )
        })?;
        let store: Arc<dyn Store> = match &prepared.database_url {
            None => Arc::new(
                ResilientStore::open(settings.storage.path.join("db"), settings.storage.cache_bytes).with_context(
                    || {
                        format!(
                            "Failed to open the store in {} (is another mailgate using it?)",
                            settings.storage.path.display()
                        )
                    },
                )?,
            ),
            // The URL holds a password: the error says what failed, never the URL.
            Some(url) => Arc::new(PgStore::open(url).context("Failed to open the PostgreSQL store")?),
        };
        let recovered = store.recover_leases().context("Failed to recover leased messages")?;
        if recovered > 0 {
            tracing::warn!(
                recovered,
                "requeued messages that were being sent when the process stopped"
            );
        }
        let Prepared {
            tokens,
            relays,
            providers,
            sns_pinned,
            database_url: _,
        } = prepared;
        let tokens = Arc::new(tokens);
        let delivery = &settings.delivery;
        let members = if relays.is_empty() {
            let sandbox = Transport::sandbox(settings.storage.path.join("sandbox"))?;
            vec![Member::new(sandbox, 1, SANDBOX_WORKERS as u32, 0)]
        } else {
            relays
        };
        let upstreams = Arc::new(Upstreams::new(members, delivery.circuit_cooldown.0));
        let queue = Arc::new(QueueGauge::default());
        let worker_count = upstreams.connections() * WORKERS_PER_CONNECTION;
        let wake = Arc::new(Notify::new());
        let woken = Arc::clone(&wake);
        store.on_new_work(Arc::new(move || woken.notify_waiters()));
        let metrics = Arc::new(Metrics::new(settings.metrics.tenant_labels));
        let revocations = Arc::new(crate::auth::Revocations::default());
        for (jti, until) in store
            .revoked_tokens(jsonwebtoken::get_current_timestamp())
            .context("Failed to load token revocations")?
        {
            revocations.revoke(&jti, until);
        }
        let dns = crate::domains::dns::Dns::new(&settings.dns.servers()?).context("Failed to set up DNS lookups")?;
        let domains = crate::domains::Domains::new(
            Arc::clone(&store),
            dns,
            crate::domains::records::RecordContext {
                return_path_domain: delivery.return_path_domain.clone(),
                relay_hosts: settings.upstreams.iter().map(|u| u.host.clone()).collect(),
            },
        );
        let domain_recheck = settings.dns.recheck.0;
        let unsubscribe = Arc::new(crate::unsubscribe::UnsubscribeLinks::new(
            store
                .secret("unsubscribe")
                .context("Failed to read the unsubscribe key")?,
            match &settings.http.public_url {
                Some(_) => settings.http.public_base(),
                // The bound address, not `listen`: with port 0 only the socket knows.
                None => format!("http://{}", listener.local_addr()?),
            },
        ));
        let writer = StoreWriter::start(Arc::clone(&store), Arc::clone(&upstreams) as Arc<dyn LeasePolicy>)
            .context("Failed to start the store writer")?;
        let worker = Worker {
            store: Arc::clone(&store),
            writer: writer.clone(),
            upstreams: Arc::clone(&upstreams),
            policy: RetryPolicy {
                base: delivery.retry_base.0,
                max: delivery.retry_max.0,
                max_age: delivery.max_age.0,
            },
            return_path_domain: delivery.return_path_domain.clone(),
            metrics: Arc::clone(&metrics),
            domains: domains.clone(),
            unsubscribe: Arc::clone(&unsubscribe),
        };
        let templates = Templates::new(
            Arc::clone(&store),
            RenderLimits {
                max_output_bytes: settings.templates.max_output_bytes,
                timeout: settings.templates.render_timeout.0,
                max_iterations: settings.templates.max_loop_iterations,
            },
        )
        .context("Failed to load the shipped templates")?;
        let hooks = &settings.webhooks;
        let dispatcher = Dispatcher {
            store: Arc::clone(&store),
            policy: RetryPolicy {
                base: hooks.retry_base.0,
                max: hooks.retry_max.0,
                max_age: hooks.max_age.0,
            },
            allow_private_targets: hooks.allow_private_targets,
            timeout: hooks.request_timeout.0,
        };
        let webhooks = Webhooks {
            store: Arc::clone(&store),
            allow_private_targets: hooks.allow_private_targets,
        };
        let retention = Retention {
            history: settings.storage.retention.0,
            mime: settings.storage.mime_retention.0,
            stats: settings.storage.stats_retention.0,
        };
        let http = settings.http.clone();
        let state = web::Data::new(AppState {
            store: Arc::clone(&store),
            tokens: Arc::clone(&tokens),
            upstreams: Arc::clone(&upstreams),
            queue: Arc::clone(&queue),
            sender: Sender {
                store: Arc::clone(&store),
                writer,
                wake: Arc::clone(&wake),
                settings: Arc::clone(&settings),
                templates: templates.clone(),
                metrics: Arc::clone(&metrics),
                domains: domains.clone(),
            },
            metrics: Arc::clone(&metrics),
            revocations,
            limiter: Arc::new(crate::limits::Limiter::new(Arc::clone(&settings))),
            templates,
            webhooks,
            domains,
            unsubscribe,
            bounces: Bounces {
                store,
                providers: Arc::new(providers),
                max_signature_age: settings.bounces.max_signature_age.0,
                sns_certificates: Arc::new(SnsCertificates {
                    pinned: sns_pinned,
                    ..Default::default()
                }),
                seen_tokens: Arc::default(),
            },
            settings,
        });
        let port = listener.local_addr()?.port();
        let server = HttpServer::new(move || {
            let metrics = Arc::clone(&metrics);
            App::new()
                .wrap_fn(move |req, srv| {
                    let started = std::time::Instant::now();
                    let method = req.method().to_string();
                    let metrics = Arc::clone(&metrics);
                    let call = srv.call(req);
                    async move {
                        let response = call.await?;
                        // Read after routing: before it, the pattern is the first one
                        // registered that fits the path, not the resource that served it.
                        let route = response
                            .request()
                            .match_pattern()
                            .unwrap_or_else(|| "unmatched".to_owned());
                        metrics.http_request(&method, &route, response.status().as_u16(), started.elapsed());
                        Ok(response)
                    }
                })
                .wrap(TracingLogger::<crate::api::request_span::RedactedRootSpan>::new())
                // `//emails`: what an SDK whose base URL ends in `/` asks for (Resend's
                // joins base URL and path as strings).
                .wrap(actix_web::middleware::NormalizePath::new(
                    actix_web::middleware::TrailingSlash::MergeOnly,
                ))
                .app_data(state.clone())
                .configure(crate::console::configure)
                .configure(api::configure)
        })
        .client_request_timeout(http.header_timeout.0)
        .client_disconnect_timeout(std::time::Duration::from_secs(1))
        .keep_alive(http.keep_alive.0)
        .shutdown_timeout(SHUTDOWN_GRACE_SECS)
        .disable_signals()
        .listen(listener)?
        .run();
        tracing::info!(
            port,
            upstreams = %upstreams.statuses().iter().map(|u| u.name.as_str()).collect::<Vec<_>>().join(","),
            workers = worker_count,
            "mailgate is listening"
        );
        Ok(Self {
            port,
            server,
            worker,
            queue,
            worker_count,
            wake,
            tokens,
            dispatcher,
            retention,
            domain_recheck,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The store the service uses (tests inspect it; operations tools may too).
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.worker.store)
    }

    /// The keys that sign and verify tokens (to print the dev token at start-up).
    pub fn tokens(&self) -> &TokenKeys {
        &self.tokens
    }

    /// Serves HTTP and runs the delivery workers and webhook dispatchers until the
    /// server stops (SIGINT/SIGTERM, or the store asking to be reopened), then lets each
    /// finish its current step.
    pub async fn run_until_stopped(self) -> anyhow::Result<Stopped> {
        let (stop, stopped) = watch::channel(false);
        let mut workers: Vec<_> = (0..self.worker_count)
            .map(|_| {
                tokio::spawn(run_worker_until_stopped(
                    self.worker.clone(),
                    Arc::clone(&self.wake),
                    stopped.clone(),
                ))
            })
            .collect();
        workers.extend(
            (0..DISPATCHERS)
                .map(|_| tokio::spawn(run_dispatcher_until_stopped(self.dispatcher.clone(), stopped.clone()))),
        );
        workers.push(tokio::spawn(crate::backpressure::run_queue_sampler_until_stopped(
            Arc::clone(&self.queue),
            Arc::clone(&self.worker.store),
            stopped.clone(),
        )));
        workers.push(tokio::spawn(crate::auth::run_key_reloader_until_stopped(
            Arc::clone(&self.tokens),
            stopped.clone(),
        )));
        workers.push(tokio::spawn(crate::stats::folding::run_stats_folder_until_stopped(
            Arc::clone(&self.worker.store),
            stopped.clone(),
        )));
        workers.push(tokio::spawn(crate::domains::run_domain_checks_until_stopped(
            self.worker.domains.clone(),
            self.domain_recheck,
            stopped.clone(),
        )));
        workers.push(tokio::spawn(run_purger_until_stopped(
            Arc::clone(&self.worker.store),
            self.retention,
            stopped.clone(),
        )));
        let signalled = Arc::new(AtomicBool::new(false));
        let signals = tokio::spawn(stop_gracefully_on_signal(self.server.handle(), Arc::clone(&signalled)));
        let reopening = Arc::new(AtomicBool::new(false));
        let reopen = tokio::spawn(stop_to_reopen_the_store(
            Arc::clone(&self.queue),
            Arc::clone(&reopening),
            self.server.handle(),
        ));
        let served = self.server.await;
        let _ = stop.send(true);
        // A signal wins over a reopen: the operator asked the process to go.
        let reopen_now = reopening.load(Ordering::SeqCst) && !signalled.load(Ordering::SeqCst);
        let drained = futures_util::future::join_all(workers);
        if reopen_now {
            // A write that entered sled before it failed may never return: the new
            // process recovers what such a worker held, like after a crash.
            if tokio::time::timeout(REOPEN_DRAIN, drained).await.is_err() {
                tracing::warn!("workers did not finish within {REOPEN_DRAIN:?}; restarting anyway");
            }
        } else {
            drained.await;
        }
        signals.abort();
        reopen.abort();
        served.context("The HTTP server failed")?;
        Ok(if reopen_now {
            Stopped::ToReopenStore
        } else {
            Stopped::Signalled
        })
    }
}

/// Why [`Application::run_until_stopped`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// SIGTERM or SIGINT: the process should exit.
    Signalled,
    /// The store refused writes (a full disk) and the disk has room again; sled can
    /// only be reopened by a new process, so `serve` re-executes itself.
    ToReopenStore,
}

/// Drains the server when the store asks to be reopened.
async fn stop_to_reopen_the_store(
    queue: Arc<QueueGauge>,
    reopening: Arc<AtomicBool>,
    server: actix_web::dev::ServerHandle,
) {
    queue.reopen_requested().await;
    tracing::warn!("the disk has room again: finishing requests in progress, then restarting to reopen the store");
    reopening.store(true, Ordering::SeqCst);
    server.stop(true).await;
}

/// SIGTERM and SIGINT both stop the server gracefully: no new connections, requests in
/// progress finish (up to `SHUTDOWN_GRACE_SECS`), then workers finish their transactions.
/// actix's own handling treats SIGINT (Ctrl-C) as a forced stop that drops requests
/// mid-body, so its signals are off. A second signal exits at once: what was accepted is
/// on disk, and a transaction cut short is retried at the next start.
async fn stop_gracefully_on_signal(server: actix_web::dev::ServerHandle, signalled: Arc<AtomicBool>) {
    let mut signals = Signals::listen();
    let Some(name) = signals.next().await else {
        return;
    };
    signalled.store(true, Ordering::SeqCst);
    tracing::info!(
        signal = name,
        "shutting down: finishing requests in progress, then the transactions in flight (signal again to exit now)"
    );
    let draining = tokio::spawn(async move { server.stop(true).await });
    if let Some(again) = signals.next().await {
        tracing::warn!(signal = again, "second signal: exiting without waiting");
        std::process::exit(130);
    }
    let _ = draining.await;
}

/// SIGTERM and SIGINT as one stream; either may be missing if it cannot be listened for.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn listen() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let open = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(stream) => Some(stream),
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for {name}: it will not stop mailgate gracefully");
                None
            }
        };
        Self {
            term: open(SignalKind::terminate(), "SIGTERM"),
            int: open(SignalKind::interrupt(), "SIGINT"),
        }
    }

    /// The next signal's name; `None` when neither can be listened for.
    async fn next(&mut self) -> Option<&'static str> {
        async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
            match signal {
                Some(stream) => stream.recv().await,
                None => std::future::pending().await,
            }
        }
        if self.term.is_none() && self.int.is_none() {
            return None;
        }
        tokio::select! {
            Some(()) = recv(&mut self.term) => Some("SIGTERM"),
            Some(()) = recv(&mut self.int) => Some("SIGINT"),
            else => None,
        }
    }
}
