//! What changes rarely and is read often, on sled: templates and their versions,
//! suppressions, sender domains, installation secrets, token revocations, raw reports.

use super::*;

pub(super) fn create_template(
    store: &SledStore,
    template: &Template,
    version: &TemplateVersion,
) -> Result<bool, StoreError> {
    let name_key = tenant_key(&template.tenant, template.name.as_str());
    let created = (&store.templates, &store.template_names, &store.template_versions)
        .transaction(|(templates, names, versions)| {
            if names.get(&name_key)?.is_some() {
                return Ok(false);
            }
            names.insert(name_key.as_slice(), template.id.as_str().as_bytes())?;
            templates.insert(
                tenant_key(&template.tenant, template.id.as_str()),
                encode_json(template)?,
            )?;
            versions.insert(version_key(&template.id, version.version), encode_json(version)?)?;
            Ok(true)
        })
        .map_err(flatten)?;
    if created {
        store.flush()?;
    }
    Ok(created)
}

pub(super) fn add_template_version(
    store: &SledStore,
    template: &Template,
    version: &TemplateVersion,
) -> Result<(), StoreError> {
    (&store.templates, &store.template_versions)
        .transaction(|(templates, versions)| {
            templates.insert(
                tenant_key(&template.tenant, template.id.as_str()),
                encode_json(template)?,
            )?;
            versions.insert(version_key(&template.id, version.version), encode_json(version)?)?;
            Ok(())
        })
        .map_err(flatten)?;
    store.flush()
}

pub(super) fn template(
    store: &SledStore,
    tenant: &TenantId,
    key: &TemplateKey,
) -> Result<Option<Template>, StoreError> {
    let id = match key {
        TemplateKey::Id(id) => id.clone(),
        TemplateKey::Name(name) => match store.template_names.get(tenant_key(tenant, name.as_str()))? {
            Some(raw) => TemplateId::parse(&String::from_utf8_lossy(&raw))
                .map_err(|_| StoreError::Missing(format!("template name {}", name.as_str())))?,
            None => return Ok(None),
        },
    };
    store
        .templates
        .get(tenant_key(tenant, id.as_str()))?
        .map(|raw| decode(&raw))
        .transpose()
}

pub(super) fn template_version(
    store: &SledStore,
    id: &TemplateId,
    version: u32,
) -> Result<Option<TemplateVersion>, StoreError> {
    store
        .template_versions
        .get(version_key(id, version))?
        .map(|raw| decode(&raw))
        .transpose()
}

pub(super) fn template_versions(store: &SledStore, id: &TemplateId) -> Result<Vec<TemplateVersion>, StoreError> {
    store
        .template_versions
        .scan_prefix(id.as_str().as_bytes())
        .rev()
        .map(|entry| decode(&entry?.1))
        .collect()
}

pub(super) fn list_templates(
    store: &SledStore,
    tenant: &TenantId,
    before: Option<&TemplateId>,
    limit: usize,
) -> Result<Vec<Template>, StoreError> {
    let range = tenant_range_before(tenant, before.map(|id| id.as_str()));
    store
        .templates
        .range(range)
        .rev()
        .take(limit)
        .map(|entry| decode(&entry?.1))
        .collect()
}

pub(super) fn delete_template(store: &SledStore, template: &Template) -> Result<(), StoreError> {
    let version_keys: Vec<_> = store
        .template_versions
        .scan_prefix(template.id.as_str().as_bytes())
        .keys()
        .collect::<Result<_, _>>()?;
    (&store.templates, &store.template_names, &store.template_versions)
        .transaction(|(templates, names, versions)| {
            templates.remove(tenant_key(&template.tenant, template.id.as_str()))?;
            names.remove(tenant_key(&template.tenant, template.name.as_str()))?;
            for key in &version_keys {
                versions.remove(key)?;
            }
            Ok::<(), ConflictableTransactionError<StoreError>>(())
        })
        .map_err(flatten)?;
    store.flush()
}

pub(super) fn suppressed(store: &SledStore, tenant: &TenantId, emails: &[String]) -> Result<Vec<String>, StoreError> {
    let mut hits = Vec::new();
    for email in emails {
        if store
            .suppressions
            .contains_key(tenant_key(tenant, &email.to_ascii_lowercase()))?
        {
            hits.push(email.clone());
        }
    }
    Ok(hits)
}

pub(super) fn suppression(
    store: &SledStore,
    tenant: &TenantId,
    email: &str,
) -> Result<Option<Suppression>, StoreError> {
    store
        .suppressions
        .get(tenant_key(tenant, &email.to_ascii_lowercase()))?
        .map(|raw| decode(&raw))
        .transpose()
}

pub(super) fn list_suppressions(
    store: &SledStore,
    tenant: &TenantId,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Suppression>, StoreError> {
    let mut start = tenant_key(tenant, after.unwrap_or(""));
    if after.is_some() {
        start.push(0);
    }
    store
        .suppressions
        .range(start..tenant_end(tenant))
        .take(limit)
        .map(|entry| decode(&entry?.1))
        .collect()
}

pub(super) fn put_suppression(
    store: &SledStore,
    tenant: &TenantId,
    suppression: &Suppression,
) -> Result<(), StoreError> {
    store
        .suppressions
        .insert(tenant_key(tenant, &suppression.email), serde_json::to_vec(suppression)?)?;
    store.flush()
}

pub(super) fn delete_suppression(store: &SledStore, tenant: &TenantId, email: &str) -> Result<bool, StoreError> {
    let removed = store
        .suppressions
        .remove(tenant_key(tenant, &email.to_ascii_lowercase()))?
        .is_some();
    store.flush()?;
    Ok(removed)
}

pub(super) fn put_domain(store: &SledStore, domain: &SenderDomain, create: bool) -> Result<bool, StoreError> {
    let key = tenant_key(&domain.tenant, domain.id.as_str());
    let name = tenant_key(&domain.tenant, domain.name.as_str());
    let value = serde_json::to_vec(domain)?;
    let written = (&store.domains, &store.domain_names)
        .transaction(|(domains, names)| {
            match names.get(name.as_slice())? {
                Some(holder) if holder.as_ref() != domain.id.as_str().as_bytes() => return Ok(false),
                Some(_) if create => return Ok(false),
                // An update of a domain deleted meanwhile does not bring it back.
                None if !create => return Ok(false),
                _ => {}
            }
            names.insert(name.as_slice(), domain.id.as_str().as_bytes())?;
            domains.insert(key.as_slice(), value.as_slice())?;
            Ok::<_, ConflictableTransactionError<StoreError>>(true)
        })
        .map_err(flatten)?;
    store.flush()?;
    Ok(written)
}

pub(super) fn domain(
    store: &SledStore,
    tenant: &TenantId,
    id_or_name: &str,
) -> Result<Option<SenderDomain>, StoreError> {
    let id = match store
        .domain_names
        .get(tenant_key(tenant, &id_or_name.to_ascii_lowercase()))?
    {
        Some(id) => String::from_utf8_lossy(&id).into_owned(),
        None => id_or_name.to_owned(),
    };
    store
        .domains
        .get(tenant_key(tenant, &id))?
        .map(|raw| decode(&raw))
        .transpose()
}

pub(super) fn domains(store: &SledStore, tenant: Option<&TenantId>) -> Result<Vec<SenderDomain>, StoreError> {
    let prefix = tenant.map(|t| tenant_key(t, "")).unwrap_or_default();
    store
        .domains
        .scan_prefix(prefix)
        .map(|entry| decode(&entry?.1))
        .collect()
}

pub(super) fn delete_domain(store: &SledStore, tenant: &TenantId, id: &DomainId) -> Result<bool, StoreError> {
    let Some(domain) = store.domain(tenant, id.as_str())? else {
        return Ok(false);
    };
    let key = tenant_key(tenant, id.as_str());
    let name = tenant_key(tenant, domain.name.as_str());
    (&store.domains, &store.domain_names)
        .transaction(|(domains, names)| {
            domains.remove(key.as_slice())?;
            names.remove(name.as_slice())?;
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        })
        .map_err(flatten)?;
    store.flush()?;
    Ok(true)
}

pub(super) fn secret(store: &SledStore, name: &str) -> Result<Vec<u8>, StoreError> {
    let mut fresh = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut fresh);
    // Compare-and-swap from nothing: two nodes (or threads) asking at once agree
    // on whichever was written first.
    let key = format!("secret/{name}");
    match store
        .meta
        .compare_and_swap(key.as_bytes(), None::<&[u8]>, Some(&fresh[..]))?
    {
        Ok(()) => {
            store.flush()?;
            Ok(fresh.to_vec())
        }
        Err(existing) => Ok(existing.current.map(|v| v.to_vec()).unwrap_or_default()),
    }
}

pub(super) fn save_report(
    store: &SledStore,
    tenant: &TenantId,
    source: &str,
    matched: bool,
    raw: &[u8],
) -> Result<String, StoreError> {
    let id = format!("rpt_{}", uuid::Uuid::now_v7().simple());
    let record = serde_json::json!({
        "id": id, "source": source, "matched": matched, "received_at": Utc::now(),
        "raw": String::from_utf8_lossy(raw),
    });
    store
        .reports
        .insert(tenant_key(tenant, &id), serde_json::to_vec(&record)?)?;
    store.flush()?;
    Ok(id)
}

pub(super) fn revoke_token(store: &SledStore, jti: &str, until: u64) -> Result<(), StoreError> {
    store.revocations.insert(jti.as_bytes(), &until.to_be_bytes())?;
    store.flush()
}

pub(super) fn revoked_tokens(store: &SledStore, now: u64) -> Result<Vec<(String, u64)>, StoreError> {
    let mut live = Vec::new();
    for entry in store.revocations.iter() {
        let (jti, until) = entry?;
        let until = until.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
        if until >= now {
            live.push((String::from_utf8_lossy(&jti).into_owned(), until));
        } else {
            store.revocations.remove(&jti)?;
        }
    }
    Ok(live)
}
