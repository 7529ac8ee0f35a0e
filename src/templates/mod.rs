//! Templates for a tenant: create, version, read, delete, and render with data.
//!
//! Names resolve to the tenant's own template first, then to a shipped one. Every
//! change is checked before it is stored: all parts compile, every partial exists,
//! and no template can end up including itself. Compiled templates are cached per
//! (id, version), so a send never re-parses a template.

pub mod builtin;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use serde_json::Value;

use crate::domain::auth::TenantId;
use crate::domain::ids::TemplateId;
use crate::domain::template::{Part, Template, TemplateKey, TemplateName, TemplateSources, TemplateVersion};
use crate::render::template::{
    compile, render, CompileError, CompiledParts, RenderLimits, RenderedParts, TemplateError,
};
use crate::store::{Store, StoreError};
use builtin::{Builtin, BuiltinError};

#[derive(Debug, thiserror::Error)]
pub enum TemplatesError {
    #[error("the template was not found")]
    NotFound,
    #[error("version {0} of the template was not found")]
    VersionNotFound(u32),
    #[error("this tenant already has a template named `{0}`")]
    NameTaken(String),
    #[error("built-in templates are read-only; create your own template with the same name to override it")]
    ReadOnly,
    #[error("a template needs at least one of `subject`, `html` and `text`")]
    Empty,
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("the {} part includes `{name}`, which is not a template of this tenant", part.as_str())]
    UnknownPartial { part: Part, name: String },
    #[error("`{0}` would include itself through its partials")]
    Cycle(String),
    #[error(transparent)]
    Render(#[from] TemplateError),
    #[error("the rendered subject contains a line break")]
    SubjectLineBreak,
    #[error("storage failed")]
    Store(#[from] StoreError),
    #[error("a blocking task failed")]
    Join(#[from] tokio::task::JoinError),
}

/// What a caller writes: the parts and an optional description.
#[derive(Debug, Clone)]
pub struct TemplateInput {
    pub sources: TemplateSources,
    pub description: Option<String>,
}

/// A rendered template and exactly which version produced it.
#[derive(Debug, Clone)]
pub struct Rendering {
    pub template: Template,
    pub version: u32,
    pub parts: RenderedParts,
}

/// Compiled templates kept before the cache is emptied and refilled on demand.
const CACHE_CAPACITY: usize = 10_000;

#[derive(Clone)]
pub struct Templates {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    builtins: Vec<Builtin>,
    compiled: Mutex<HashMap<(TemplateId, u32), Arc<CompiledParts>>>,
    /// Serializes writes so that two updates cannot both claim the same version number.
    writes: Mutex<()>,
    limits: RenderLimits,
}

impl Templates {
    pub fn new(store: Arc<dyn Store>, limits: RenderLimits) -> Result<Self, BuiltinError> {
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                builtins: builtin::load()?,
                compiled: Mutex::new(HashMap::new()),
                writes: Mutex::new(()),
                limits,
            }),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> Result<T, TemplatesError> + Send + 'static,
    ) -> Result<T, TemplatesError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&inner)).await?
    }

    #[tracing::instrument(skip_all, fields(tenant = %tenant, template = name.as_str()))]
    pub async fn create(
        &self,
        tenant: &TenantId,
        name: TemplateName,
        input: TemplateInput,
    ) -> Result<(Template, TemplateVersion), TemplatesError> {
        let tenant = tenant.clone();
        self.blocking(move |t| t.create(&tenant, name, input)).await
    }

    #[tracing::instrument(skip_all, fields(tenant = %tenant))]
    pub async fn update(
        &self,
        tenant: &TenantId,
        key: TemplateKey,
        input: TemplateInput,
    ) -> Result<(Template, TemplateVersion), TemplatesError> {
        let tenant = tenant.clone();
        self.blocking(move |t| t.update(&tenant, &key, input)).await
    }

    /// The template and the given version (the latest when `None`).
    pub async fn get(
        &self,
        tenant: &TenantId,
        key: TemplateKey,
        version: Option<u32>,
    ) -> Result<(Template, TemplateVersion), TemplatesError> {
        let tenant = tenant.clone();
        self.blocking(move |t| {
            let template = t.resolve(&tenant, &key)?;
            let version = t.version_of(&template, version.unwrap_or(template.latest_version))?;
            Ok((template, version))
        })
        .await
    }

    /// Every version, newest first.
    pub async fn versions(
        &self,
        tenant: &TenantId,
        key: TemplateKey,
    ) -> Result<(Template, Vec<TemplateVersion>), TemplatesError> {
        let tenant = tenant.clone();
        self.blocking(move |t| {
            let template = t.resolve(&tenant, &key)?;
            let versions = match t.builtin(&template) {
                Some(b) => vec![b.version.clone()],
                None => t.store.template_versions(&template.id)?,
            };
            Ok((template, versions))
        })
        .await
    }

    /// The tenant's own templates, newest first (built-ins are not listed).
    pub async fn list(
        &self,
        tenant: &TenantId,
        before: Option<TemplateId>,
        limit: usize,
    ) -> Result<Vec<Template>, TemplatesError> {
        let tenant = tenant.clone();
        self.blocking(move |t| Ok(t.store.list_templates(&tenant, before.as_ref(), limit)?))
            .await
    }

    #[tracing::instrument(skip_all, fields(tenant = %tenant))]
    pub async fn delete(&self, tenant: &TenantId, key: TemplateKey) -> Result<(), TemplatesError> {
        let tenant = tenant.clone();
        self.blocking(move |t| {
            let template = t.resolve(&tenant, &key)?;
            if template.builtin {
                return Err(TemplatesError::ReadOnly);
            }
            Ok(t.store.delete_template(&template)?)
        })
        .await
    }

    /// Renders the given (or latest) version with `data`, strictly and within limits.
    #[tracing::instrument(skip_all, fields(tenant = %tenant))]
    pub async fn render(
        &self,
        tenant: &TenantId,
        key: TemplateKey,
        version: Option<u32>,
        data: Value,
    ) -> Result<Rendering, TemplatesError> {
        let tenant = tenant.clone();
        self.blocking(move |t| t.render(&tenant, &key, version, &data)).await
    }
}

impl Inner {
    fn builtin(&self, template: &Template) -> Option<&Builtin> {
        template
            .builtin
            .then(|| self.builtins.iter().find(|b| b.template.id == template.id))
            .flatten()
    }

    /// The tenant's template, else a shipped one with that id or name.
    fn find(&self, tenant: &TenantId, key: &TemplateKey) -> Result<Option<Template>, TemplatesError> {
        if let Some(own) = self.store.template(tenant, key)? {
            return Ok(Some(own));
        }
        Ok(self
            .builtins
            .iter()
            .find(|b| match key {
                TemplateKey::Id(id) => &b.template.id == id,
                TemplateKey::Name(name) => &b.template.name == name,
            })
            .map(|b| b.template.clone()))
    }

    fn resolve(&self, tenant: &TenantId, key: &TemplateKey) -> Result<Template, TemplatesError> {
        self.find(tenant, key)?.ok_or(TemplatesError::NotFound)
    }

    fn version_of(&self, template: &Template, version: u32) -> Result<TemplateVersion, TemplatesError> {
        let found = match self.builtin(template) {
            Some(b) => (version == b.version.version).then(|| b.version.clone()),
            None => self.store.template_version(&template.id, version)?,
        };
        found.ok_or(TemplatesError::VersionNotFound(version))
    }

    fn compiled(&self, template: &Template, version: &TemplateVersion) -> Result<Arc<CompiledParts>, TemplatesError> {
        if let Some(b) = self.builtin(template) {
            return Ok(Arc::clone(&b.compiled));
        }
        let key = (template.id.clone(), version.version);
        if let Some(hit) = self.cache().get(&key) {
            return Ok(Arc::clone(hit));
        }
        let compiled = Arc::new(compile(&version.sources)?);
        let mut cache = self.cache();
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(key, Arc::clone(&compiled));
        Ok(compiled)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<(TemplateId, u32), Arc<CompiledParts>>> {
        self.compiled.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Compiles `input` and checks its partials; returns the partial names to store.
    fn check(
        &self,
        tenant: &TenantId,
        name: &TemplateName,
        input: &TemplateInput,
    ) -> Result<Vec<TemplateName>, TemplatesError> {
        let s = &input.sources;
        if s.subject.is_none() && s.html.is_none() && s.text.is_none() {
            return Err(TemplatesError::Empty);
        }
        let compiled = compile(s)?;
        let mut partials: Vec<TemplateName> = Vec::new();
        for (part, raw) in compiled.partials() {
            let unknown = || TemplatesError::UnknownPartial {
                part,
                name: raw.clone(),
            };
            let partial = TemplateName::parse(&raw).map_err(|_| unknown())?;
            if &partial != name && self.find(tenant, &TemplateKey::Name(partial.clone()))?.is_none() {
                return Err(unknown());
            }
            if !partials.contains(&partial) {
                partials.push(partial);
            }
        }
        if self.reaches(tenant, &partials, name)? {
            return Err(TemplatesError::Cycle(name.as_str().to_owned()));
        }
        Ok(partials)
    }

    /// Whether following partials from `from` (latest versions) leads to `target`.
    fn reaches(&self, tenant: &TenantId, from: &[TemplateName], target: &TemplateName) -> Result<bool, TemplatesError> {
        let mut seen = HashSet::new();
        let mut stack: Vec<TemplateName> = from.to_vec();
        while let Some(name) = stack.pop() {
            if &name == target {
                return Ok(true);
            }
            if !seen.insert(name.clone()) {
                continue;
            }
            if let Some(template) = self.find(tenant, &TemplateKey::Name(name))? {
                let version = self.version_of(&template, template.latest_version)?;
                stack.extend(version.partials);
            }
        }
        Ok(false)
    }

    fn new_version(&self, number: u32, input: TemplateInput, partials: Vec<TemplateName>) -> TemplateVersion {
        TemplateVersion {
            version: number,
            sources: input.sources,
            description: input.description,
            partials,
            created_at: Utc::now(),
        }
    }

    fn create(
        &self,
        tenant: &TenantId,
        name: TemplateName,
        input: TemplateInput,
    ) -> Result<(Template, TemplateVersion), TemplatesError> {
        let partials = self.check(tenant, &name, &input)?;
        let now = Utc::now();
        let template = Template {
            id: TemplateId::generate(),
            tenant: tenant.clone(),
            name,
            latest_version: 1,
            created_at: now,
            updated_at: now,
            builtin: false,
        };
        let version = self.new_version(1, input, partials);
        if !self.store.create_template(&template, &version)? {
            return Err(TemplatesError::NameTaken(template.name.as_str().to_owned()));
        }
        tracing::info!(template_id = %template.id, "template created");
        Ok((template, version))
    }

    fn update(
        &self,
        tenant: &TenantId,
        key: &TemplateKey,
        input: TemplateInput,
    ) -> Result<(Template, TemplateVersion), TemplatesError> {
        let _write = self.writes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut template = self.resolve(tenant, key)?;
        if template.builtin {
            return Err(TemplatesError::ReadOnly);
        }
        let partials = self.check(tenant, &template.name, &input)?;
        template.latest_version += 1;
        template.updated_at = Utc::now();
        let version = self.new_version(template.latest_version, input, partials);
        self.store.add_template_version(&template, &version)?;
        tracing::info!(template_id = %template.id, version = version.version, "template version added");
        Ok((template, version))
    }

    fn render(
        &self,
        tenant: &TenantId,
        key: &TemplateKey,
        version: Option<u32>,
        data: &Value,
    ) -> Result<Rendering, TemplatesError> {
        let template = self.resolve(tenant, key)?;
        let chosen = self.version_of(&template, version.unwrap_or(template.latest_version))?;
        if self.reaches(tenant, &chosen.partials, &template.name)? {
            return Err(TemplatesError::Cycle(template.name.as_str().to_owned()));
        }
        let main = self.compiled(&template, &chosen)?;
        let mut partials: Vec<(String, Arc<CompiledParts>)> = Vec::new();
        let mut pending = chosen.partials.clone();
        while let Some(name) = pending.pop() {
            if partials.iter().any(|(n, _)| n == name.as_str()) {
                continue;
            }
            // A partial that has gone missing is reported by the renderer, by name.
            if let Some(partial) = self.find(tenant, &TemplateKey::Name(name.clone()))? {
                let latest = self.version_of(&partial, partial.latest_version)?;
                pending.extend(latest.partials.iter().cloned());
                partials.push((name.as_str().to_owned(), self.compiled(&partial, &latest)?));
            }
        }
        let borrowed: Vec<(String, &CompiledParts)> = partials.iter().map(|(n, c)| (n.clone(), c.as_ref())).collect();
        let parts = render(&main, &borrowed, data, self.limits)?;
        if parts.subject.as_deref().is_some_and(|s| s.contains(['\r', '\n', '\0'])) {
            return Err(TemplatesError::SubjectLineBreak);
        }
        Ok(Rendering {
            version: chosen.version,
            template,
            parts,
        })
    }
}
