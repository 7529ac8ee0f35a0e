//! Sender domains for a tenant: create one (its DKIM keys are made here), the DNS
//! records to publish, checks of those records (on demand and on a schedule), key
//! rotation, and the keys that sign a message's delivery.

pub mod dns;
pub mod records;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::Utc;

use crate::dkim::{self, Algorithm, KeyError, LoadedKey, SigningKey};
use crate::domain::auth::TenantId;
use crate::domain::ids::DomainId;
use crate::domain::sender_domain::{DkimKey, DomainName, DomainStatus, KeyState, RecordPurpose, SenderDomain};
use crate::store::{Store, StoreError};
use dns::Dns;
use records::RecordContext;

#[derive(Debug, thiserror::Error)]
pub enum DomainsError {
    #[error("the domain was not found")]
    NotFound,
    #[error("this tenant already has the domain `{0}`")]
    NameTaken(String),
    #[error("a rotation is already waiting for its record to verify")]
    RotationPending,
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("storage failed")]
    Store(#[from] StoreError),
    #[error("a blocking task failed")]
    Join(#[from] tokio::task::JoinError),
}

/// What signs a message from a verified domain, and where its bounces go.
pub struct DomainSigning {
    /// The `d=` of the signatures: the verified domain (the From domain or a parent).
    pub domain: String,
    pub keys: Vec<SigningKey>,
    /// The return-path host under the domain (`bounces.<domain>`).
    pub return_path_domain: String,
}

/// How long the signing keys read from the store are used before they are read again
/// (another node may have rotated them); a change on this node clears them at once.
const SIGNING_REFRESH: Duration = Duration::from_secs(30);

#[derive(Default)]
struct SigningCache {
    loaded_at: Option<Instant>,
    by_name: HashMap<(String, String), Arc<DomainSigning>>,
}

#[derive(Clone)]
pub struct Domains {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    dns: Dns,
    context: RecordContext,
    cache: Mutex<SigningCache>,
    reloading: tokio::sync::Mutex<()>,
    /// Held while a domain is read, changed and written back (rotate, a check's
    /// conclusion, delete), so two changes cannot overwrite each other on this node.
    writes: Mutex<()>,
}

/// A selector that sorts by creation and names its algorithm (`mg1796419534r`),
/// unlike every selector in `taken`.
fn selector(algorithm: Algorithm, at: chrono::DateTime<Utc>, taken: &[DkimKey]) -> String {
    let kind = match algorithm {
        Algorithm::Rsa => 'r',
        Algorithm::Ed25519 => 'e',
    };
    (at.timestamp()..)
        .map(|n| format!("mg{n}{kind}"))
        .find(|candidate| taken.iter().all(|k| &k.selector != candidate))
        .unwrap_or_else(|| format!("mg{}{kind}", uuid::Uuid::now_v7().simple()))
}

fn new_key(
    algorithm: Algorithm,
    state: KeyState,
    at: chrono::DateTime<Utc>,
    taken: &[DkimKey],
) -> Result<DkimKey, KeyError> {
    let generated = dkim::keys::generate(algorithm)?;
    Ok(DkimKey {
        selector: selector(algorithm, at, taken),
        algorithm,
        private_pkcs8: base64::engine::general_purpose::STANDARD.encode(&generated.pkcs8),
        public: generated.public,
        state,
        created_at: at,
        retire_after: None,
    })
}

impl Domains {
    pub fn new(store: Arc<dyn Store>, dns: Dns, context: RecordContext) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                dns,
                context,
                cache: Mutex::new(SigningCache::default()),
                reloading: tokio::sync::Mutex::new(()),
                writes: Mutex::new(()),
            }),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> Result<T, DomainsError> + Send + 'static,
    ) -> Result<T, DomainsError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&inner)).await?
    }

    fn forget_signing(&self) {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .loaded_at = None;
    }

    /// Adds `name` for `tenant` with a new RSA-2048 key (and an Ed25519 key when
    /// asked), pending until its records verify.
    #[tracing::instrument(skip_all, fields(tenant = %tenant, domain = name.as_str()))]
    pub async fn create(
        &self,
        tenant: &TenantId,
        name: DomainName,
        ed25519: bool,
    ) -> Result<SenderDomain, DomainsError> {
        let tenant = tenant.clone();
        let created = self
            .blocking(move |inner| {
                let now = Utc::now();
                let mut keys = vec![new_key(Algorithm::Rsa, KeyState::Active, now, &[])?];
                if ed25519 {
                    keys.push(new_key(Algorithm::Ed25519, KeyState::Active, now, &[])?);
                }
                let mut domain = SenderDomain {
                    id: DomainId::generate(),
                    tenant,
                    name,
                    status: DomainStatus::Pending,
                    keys,
                    records: Vec::new(),
                    created_at: now,
                    checked_at: None,
                    verified_at: None,
                };
                domain.records = records::expected(&domain, &inner.context);
                if !inner.store.put_domain(&domain, true)? {
                    return Err(DomainsError::NameTaken(domain.name.as_str().to_owned()));
                }
                Ok(domain)
            })
            .await?;
        tracing::info!(domain_id = %created.id, "sender domain created");
        Ok(created)
    }

    pub async fn get(&self, tenant: &TenantId, id_or_name: &str) -> Result<SenderDomain, DomainsError> {
        let (tenant, key) = (tenant.clone(), id_or_name.to_owned());
        self.blocking(move |inner| inner.store.domain(&tenant, &key)?.ok_or(DomainsError::NotFound))
            .await
    }

    pub async fn list(&self, tenant: &TenantId) -> Result<Vec<SenderDomain>, DomainsError> {
        let tenant = tenant.clone();
        self.blocking(move |inner| Ok(inner.store.domains(Some(&tenant))?))
            .await
    }

    pub async fn delete(&self, tenant: &TenantId, id_or_name: &str) -> Result<(), DomainsError> {
        let domain = self.get(tenant, id_or_name).await?;
        let tenant = tenant.clone();
        self.blocking(move |inner| {
            let _write = inner.writes.lock().unwrap_or_else(PoisonError::into_inner);
            if inner.store.delete_domain(&tenant, &domain.id)? {
                Ok(())
            } else {
                Err(DomainsError::NotFound)
            }
        })
        .await?;
        self.forget_signing();
        Ok(())
    }

    /// Publishes a new key beside each active one; it signs once its record verifies
    /// (a check after it is published), and the old key retires then.
    pub async fn rotate(&self, tenant: &TenantId, id_or_name: &str) -> Result<SenderDomain, DomainsError> {
        let snapshot = self.get(tenant, id_or_name).await?;
        if snapshot.keys.iter().any(|k| k.state == KeyState::Pending) {
            return Err(DomainsError::RotationPending);
        }
        self.blocking(move |inner| {
            let now = Utc::now();
            // Keys first (an RSA key takes a while), then the change under the lock on
            // the domain as it is now.
            let mut fresh_keys: Vec<DkimKey> = Vec::new();
            for key in snapshot.active_keys() {
                let taken: Vec<DkimKey> = snapshot.keys.iter().chain(&fresh_keys).cloned().collect();
                fresh_keys.push(new_key(key.algorithm, KeyState::Pending, now, &taken)?);
            }
            let _write = inner.writes.lock().unwrap_or_else(PoisonError::into_inner);
            let mut domain = inner
                .store
                .domain(&snapshot.tenant, snapshot.id.as_str())?
                .ok_or(DomainsError::NotFound)?;
            if domain.keys.iter().any(|k| k.state == KeyState::Pending) {
                return Err(DomainsError::RotationPending);
            }
            domain.keys.extend(fresh_keys);
            let previous = std::mem::take(&mut domain.records);
            domain.records = records::expected(&domain, &inner.context)
                .into_iter()
                .map(|mut r| {
                    if let Some(old) = previous.iter().find(|o| o.name == r.name && o.value == r.value) {
                        r.status = old.status;
                    }
                    r
                })
                .collect();
            if !inner.store.put_domain(&domain, false)? {
                return Err(DomainsError::NotFound);
            }
            Ok(domain)
        })
        .await
    }

    /// Looks every record up now and saves what was found.
    #[tracing::instrument(skip_all, fields(tenant = %tenant))]
    pub async fn verify(&self, tenant: &TenantId, id_or_name: &str) -> Result<SenderDomain, DomainsError> {
        let domain = self.get(tenant, id_or_name).await?;
        self.check(domain).await
    }

    async fn check(&self, domain: SenderDomain) -> Result<SenderDomain, DomainsError> {
        let mut checked = records::expected(&domain, &self.inner.context);
        // All lookups at once: a slow or silent name server costs one timeout, not one
        // per record.
        let dns = &self.inner.dns;
        let lookups = checked.iter().map(|record| async move {
            match record.purpose {
                RecordPurpose::ReturnPath => dns.cname(&record.name).await.map(|t| t.into_iter().collect()),
                _ => dns.txt(&record.name).await,
            }
        });
        let answers = futures_util::future::join_all(lookups).await;
        for (record, found) in checked.iter_mut().zip(answers) {
            let previous = domain
                .records
                .iter()
                .find(|r| r.name == record.name && r.value == record.value)
                .map_or(DomainStatus::Pending, |r| r.status);
            record.status = match found {
                Ok(values) => records::next_status(previous, records::matches(record, &values)),
                Err(err) => {
                    tracing::warn!(error = %err, "a DNS lookup failed; the record keeps its last status");
                    previous
                }
            };
        }
        // The lookups took a while: apply what they found to the domain as it is now, so
        // a rotation or a delete made meanwhile is neither undone nor resurrected (the
        // records are matched by name and value, whatever the keys are now).
        let (tenant, id) = (domain.tenant.clone(), domain.id.clone());
        let concluded = self
            .blocking(move |inner| {
                let _write = inner.writes.lock().unwrap_or_else(PoisonError::into_inner);
                let mut fresh = inner
                    .store
                    .domain(&tenant, id.as_str())?
                    .ok_or(DomainsError::NotFound)?;
                let before = fresh.status;
                records::conclude(&mut fresh, checked, &inner.context, Utc::now());
                if !inner.store.put_domain(&fresh, false)? {
                    return Err(DomainsError::NotFound);
                }
                if before == DomainStatus::Verified && fresh.status == DomainStatus::Failing {
                    tracing::warn!(tenant = %fresh.tenant, domain = fresh.name.as_str(), "a verified sender domain is failing its DNS check: mail from it is no longer signed");
                }
                Ok(fresh)
            })
            .await?;
        self.forget_signing();
        Ok(concluded)
    }

    /// Checks every tenant's domains (the schedule of `[dns] recheck`).
    pub async fn check_all(&self) -> Result<usize, DomainsError> {
        let all = self.blocking(|inner| Ok(inner.store.domains(None)?)).await?;
        let count = all.len();
        for domain in all {
            match self.check(domain).await {
                Ok(_) | Err(DomainsError::NotFound) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(count)
    }

    /// What signs mail from `from_domain` for `tenant`: its verified domain (the From
    /// domain itself or the nearest parent), or `None`.
    pub async fn signing(
        &self,
        tenant: &TenantId,
        from_domain: &DomainName,
    ) -> Result<Option<Arc<DomainSigning>>, DomainsError> {
        let fresh = || {
            let cache = self.inner.cache.lock().unwrap_or_else(PoisonError::into_inner);
            cache.loaded_at.is_some_and(|at| at.elapsed() < SIGNING_REFRESH)
        };
        if !fresh() {
            // One reload at a time: the workers that found the keys stale together wait
            // for it instead of each reading every domain and parsing every key.
            let _reloading = self.inner.reloading.lock().await;
            if !fresh() {
                let loaded = self.blocking(|inner| load_signing(inner.store.as_ref())).await?;
                let mut cache = self.inner.cache.lock().unwrap_or_else(PoisonError::into_inner);
                cache.by_name = loaded;
                cache.loaded_at = Some(Instant::now());
            }
        }
        let cache = self.inner.cache.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(from_domain
            .and_parents()
            .find_map(|name| cache.by_name.get(&(tenant.as_str().to_owned(), name.to_owned())))
            .cloned())
    }
}

/// Re-checks every domain every `interval` until `stopped` turns true, so a record
/// that disappears turns its domain `failing` (and its mail unsigned) without anyone
/// asking, and a rotation's new record takes over once published.
pub async fn run_domain_checks_until_stopped(
    domains: Domains,
    interval: Duration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match domains.check_all().await {
            Ok(checked) => tracing::debug!(checked, "sender domains re-checked"),
            Err(err) => {
                tracing::warn!(error = %crate::telemetry::ErrorChain(&err), "re-checking sender domains failed")
            }
        }
    }
}

/// The active keys of every verified domain, loaded into ring.
fn load_signing(store: &dyn Store) -> Result<HashMap<(String, String), Arc<DomainSigning>>, DomainsError> {
    let mut loaded = HashMap::new();
    for domain in store.domains(None)? {
        if domain.status != DomainStatus::Verified {
            continue;
        }
        let mut keys = Vec::new();
        for key in domain.active_keys() {
            // One unreadable key costs its own signature, not every domain's.
            let loaded = base64::engine::general_purpose::STANDARD
                .decode(&key.private_pkcs8)
                .map_err(|_| KeyError::Unusable(key.algorithm))
                .and_then(|der| LoadedKey::load(key.algorithm, &der));
            match loaded {
                Ok(loaded) => keys.push(SigningKey {
                    selector: key.selector.clone(),
                    key: loaded,
                }),
                Err(err) => {
                    tracing::error!(domain = domain.name.as_str(), selector = %key.selector, error = %err, "a stored DKIM key cannot be loaded; mail goes without its signature")
                }
            }
        }
        // RSA first: a verifier that stops at the first signature it can check gets
        // the one every verifier supports.
        keys.sort_by_key(|k| k.key.algorithm() != Algorithm::Rsa);
        let name = domain.name.as_str().to_owned();
        loaded.insert(
            (domain.tenant.as_str().to_owned(), name.clone()),
            Arc::new(DomainSigning {
                return_path_domain: records::return_path_host(&name),
                domain: name,
                keys,
            }),
        );
    }
    Ok(loaded)
}
