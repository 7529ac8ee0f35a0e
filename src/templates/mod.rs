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
    #[error("the {} part includes `{name}`, which is not a template of this tenant with a {} part", part.as_str(), part.as_str())]
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
    /// Serializes writes: two updates cannot claim the same version number, and a
    /// cycle cannot slip between two concurrent checks.
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

    /// Up to `limit` templates the tenant can use, before the id `before` when given:
    /// its own, newest first, then the shipped ones it has not replaced with its own of
    /// the same name. Shipped ids sort below every generated one, so this is a single
    /// order by descending id and `before` pages through both kinds alike.
    pub async fn list(
        &self,
        tenant: &TenantId,
        before: Option<TemplateId>,
        limit: usize,
    ) -> Result<Vec<Template>, TemplatesError> {
        let tenant = tenant.clone();
        self.blocking(move |t| {
            let mut page = t.store.list_templates(&tenant, before.as_ref(), limit)?;
            // `load` numbers the shipped templates in ascending id order.
            for builtin in t.builtins.iter().rev() {
                if page.len() >= limit {
                    break;
                }
                let shipped = &builtin.template;
                if before.as_ref().is_some_and(|before| shipped.id >= *before) {
                    continue;
                }
                let replaced = t.store.template(&tenant, &TemplateKey::Name(shipped.name.clone()))?;
                if replaced.is_none() {
                    page.push(shipped.clone());
                }
            }
            Ok(page)
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(tenant = %tenant))]
    pub async fn delete(&self, tenant: &TenantId, key: TemplateKey) -> Result<(), TemplatesError> {
        let tenant = tenant.clone();
        self.blocking(move |t| {
            let _write = t.lock_writes();
            let template = t.resolve(&tenant, &key)?;
            if template.builtin {
                return Err(TemplatesError::ReadOnly);
            }
            Ok(t.store.delete_template(&template)?)
        })
        .await
    }

    /// Renders sources that are not saved (the console's live preview) exactly as a
    /// send of them would be rendered once saved as `name`: compiled the same way,
    /// with the tenant's partials, strictly and within limits.
    pub async fn render_draft(
        &self,
        tenant: &TenantId,
        name: TemplateName,
        sources: TemplateSources,
        data: Value,
    ) -> Result<RenderedParts, TemplatesError> {
        let tenant = tenant.clone();
        self.blocking(move |t| {
            let main = Arc::new(compile(&sources)?);
            let partials = t.partial_closure(&tenant, &name, &main)?;
            let borrowed: Vec<(String, &CompiledParts)> =
                partials.iter().map(|(n, c)| (n.clone(), c.as_ref())).collect();
            checked_subject(render(&main, &borrowed, &data, t.limits)?)
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

    /// Holds off every other create, update and delete, so that each sees the
    /// partials as the previous one left them (cycle checks depend on it).
    fn lock_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
            if &partial != name {
                let template = self
                    .find(tenant, &TemplateKey::Name(partial.clone()))?
                    .ok_or_else(unknown)?;
                let latest = self.version_of(&template, template.latest_version)?;
                if latest.sources.get(part).is_none() {
                    return Err(unknown());
                }
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
        let _write = self.lock_writes();
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
        let _write = self.lock_writes();
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

    /// Every template `main` can reach through partials (latest versions), checked on
    /// the way: each exists, has the part that includes it, and none includes itself.
    /// Saves already refuse all three; this guards against what concurrent changes or
    /// deletions left behind, because handlebars would recurse without end on a cycle.
    fn partial_closure(
        &self,
        tenant: &TenantId,
        main_name: &TemplateName,
        main: &Arc<CompiledParts>,
    ) -> Result<Vec<(String, Arc<CompiledParts>)>, TemplatesError> {
        let mut found: Vec<(String, Arc<CompiledParts>)> = Vec::new();
        let mut edges: HashMap<String, Vec<String>> = HashMap::new();
        let mut pending = vec![(main_name.as_str().to_owned(), Arc::clone(main))];
        while let Some((name, compiled)) = pending.pop() {
            if edges.contains_key(&name) {
                continue;
            }
            let uses = compiled.partials();
            edges.insert(name.clone(), uses.iter().map(|(_, n)| n.clone()).collect());
            for (part, used) in uses {
                let missing = || {
                    TemplatesError::Render(TemplateError::MissingPartial {
                        part,
                        name: used.clone(),
                    })
                };
                let partial = match found.iter().find(|(n, _)| *n == used) {
                    Some((_, partial)) => Arc::clone(partial),
                    None => {
                        let key = TemplateName::parse(&used).map_err(|_| missing())?;
                        let template = self.find(tenant, &TemplateKey::Name(key))?.ok_or_else(missing)?;
                        let latest = self.version_of(&template, template.latest_version)?;
                        let partial = self.compiled(&template, &latest)?;
                        found.push((used.clone(), Arc::clone(&partial)));
                        partial
                    }
                };
                if partial.get(part).is_none() {
                    return Err(missing());
                }
                pending.push((used.clone(), partial));
            }
        }
        if let Some(name) = first_cycle(&edges) {
            return Err(TemplatesError::Cycle(name));
        }
        Ok(found)
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
        let main = self.compiled(&template, &chosen)?;
        let partials = self.partial_closure(tenant, &template.name, &main)?;
        let borrowed: Vec<(String, &CompiledParts)> = partials.iter().map(|(n, c)| (n.clone(), c.as_ref())).collect();
        let parts = checked_subject(render(&main, &borrowed, data, self.limits)?)?;
        Ok(Rendering {
            version: chosen.version,
            template,
            parts,
        })
    }
}

/// Refuses a rendering whose subject would break the header it goes into.
fn checked_subject(parts: RenderedParts) -> Result<RenderedParts, TemplatesError> {
    if parts.subject.as_deref().is_some_and(|s| s.contains(['\r', '\n', '\0'])) {
        return Err(TemplatesError::SubjectLineBreak);
    }
    Ok(parts)
}

/// A template name on a cycle of `edges` (name → names it includes), if any.
fn first_cycle(edges: &HashMap<String, Vec<String>>) -> Option<String> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(name: &str, edges: &HashMap<String, Vec<String>>, marks: &mut HashMap<String, Mark>) -> Option<String> {
        match marks.get(name) {
            Some(Mark::Open) => return Some(name.to_owned()),
            Some(Mark::Done) => return None,
            None => {}
        }
        marks.insert(name.to_owned(), Mark::Open);
        for next in edges.get(name).into_iter().flatten() {
            if let Some(hit) = visit(next, edges, marks) {
                return Some(hit);
            }
        }
        marks.insert(name.to_owned(), Mark::Done);
        None
    }
    let mut marks = HashMap::new();
    edges.keys().find_map(|name| visit(name, edges, &mut marks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_are_found_anywhere_in_the_graph() {
        let graph = |pairs: &[(&str, &[&str])]| -> HashMap<String, Vec<String>> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect()
        };
        assert!(first_cycle(&graph(&[("main", &["b"]), ("b", &["c"]), ("c", &["b"])])).is_some());
        assert!(first_cycle(&graph(&[("main", &["main"])])).is_some());
        assert!(first_cycle(&graph(&[("main", &["b", "c"]), ("b", &["c"]), ("c", &[])])).is_none());
    }
}
