//! What changes rarely and is read often: templates and their versions, suppressions,
//! sender domains, installation secrets, token revocations, raw reports.

use std::collections::HashSet;

use chrono::Utc;

use super::pool::Pool;
use super::{decode, encode};
use crate::domain::auth::TenantId;
use crate::domain::ids::{DomainId, TemplateId};
use crate::domain::sender_domain::SenderDomain;
use crate::domain::suppression::Suppression;
use crate::domain::template::{Template, TemplateKey, TemplateVersion};
use crate::store::StoreError;

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn version_of(version: u32) -> i32 {
    i32::try_from(version).unwrap_or(i32::MAX)
}

pub(super) fn create_template(pool: &Pool, template: &Template, version: &TemplateVersion) -> Result<bool, StoreError> {
    let mut client = pool.get()?;
    let mut tx = client.transaction()?;
    let created = tx.execute(
        "INSERT INTO templates (tenant, id, name, record) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        &[
            &template.tenant.as_str(),
            &template.id.as_str(),
            &template.name.as_str(),
            &encode(template)?,
        ],
    )? > 0;
    if !created {
        return Ok(false);
    }
    tx.execute(
        "INSERT INTO template_versions (template_id, version, record) VALUES ($1, $2, $3)",
        &[&template.id.as_str(), &version_of(version.version), &encode(version)?],
    )?;
    tx.commit()?;
    Ok(true)
}

pub(super) fn add_template_version(
    pool: &Pool,
    template: &Template,
    version: &TemplateVersion,
) -> Result<(), StoreError> {
    let mut client = pool.get()?;
    let mut tx = client.transaction()?;
    tx.execute(
        "UPDATE templates SET record = $3 WHERE tenant = $1 AND id = $2",
        &[&template.tenant.as_str(), &template.id.as_str(), &encode(template)?],
    )?;
    tx.execute(
        "INSERT INTO template_versions (template_id, version, record) VALUES ($1, $2, $3)
         ON CONFLICT (template_id, version) DO UPDATE SET record = excluded.record",
        &[&template.id.as_str(), &version_of(version.version), &encode(version)?],
    )?;
    tx.commit()?;
    Ok(())
}

pub(super) fn template(pool: &Pool, tenant: &TenantId, key: &TemplateKey) -> Result<Option<Template>, StoreError> {
    let mut client = pool.get()?;
    let row = match key {
        TemplateKey::Id(id) => client.query_opt(
            "SELECT record FROM templates WHERE tenant = $1 AND id = $2",
            &[&tenant.as_str(), &id.as_str()],
        )?,
        TemplateKey::Name(name) => client.query_opt(
            "SELECT record FROM templates WHERE tenant = $1 AND name = $2",
            &[&tenant.as_str(), &name.as_str()],
        )?,
    };
    row.map(|row| decode(row.get(0))).transpose()
}

pub(super) fn template_version(
    pool: &Pool,
    id: &TemplateId,
    version: u32,
) -> Result<Option<TemplateVersion>, StoreError> {
    pool.get()?
        .query_opt(
            "SELECT record FROM template_versions WHERE template_id = $1 AND version = $2",
            &[&id.as_str(), &version_of(version)],
        )?
        .map(|row| decode(row.get(0)))
        .transpose()
}

pub(super) fn template_versions(pool: &Pool, id: &TemplateId) -> Result<Vec<TemplateVersion>, StoreError> {
    pool.get()?
        .query(
            "SELECT record FROM template_versions WHERE template_id = $1 ORDER BY version DESC",
            &[&id.as_str()],
        )?
        .iter()
        .map(|row| decode(row.get(0)))
        .collect()
}

pub(super) fn list_templates(
    pool: &Pool,
    tenant: &TenantId,
    before: Option<&TemplateId>,
    limit: usize,
) -> Result<Vec<Template>, StoreError> {
    let before = before.map_or("tpl_g", |id| id.as_str());
    pool.get()?
        .query(
            "SELECT record FROM templates WHERE tenant = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
            &[&tenant.as_str(), &before, &limit_of(limit)],
        )?
        .iter()
        .map(|row| decode(row.get(0)))
        .collect()
}

pub(super) fn delete_template(pool: &Pool, template: &Template) -> Result<(), StoreError> {
    let mut client = pool.get()?;
    let mut tx = client.transaction()?;
    tx.execute(
        "DELETE FROM templates WHERE tenant = $1 AND id = $2",
        &[&template.tenant.as_str(), &template.id.as_str()],
    )?;
    tx.execute(
        "DELETE FROM template_versions WHERE template_id = $1",
        &[&template.id.as_str()],
    )?;
    tx.commit()?;
    Ok(())
}

pub(super) fn suppressed(pool: &Pool, tenant: &TenantId, emails: &[String]) -> Result<Vec<String>, StoreError> {
    let lower: Vec<String> = emails.iter().map(|e| e.to_ascii_lowercase()).collect();
    let held: std::collections::HashSet<String> = pool
        .get()?
        .query(
            "SELECT email FROM suppressions WHERE tenant = $1 AND email = ANY($2)",
            &[&tenant.as_str(), &lower],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect();
    Ok(emails
        .iter()
        .zip(&lower)
        .filter(|(_, low)| held.contains(*low))
        .map(|(email, _)| email.clone())
        .collect())
}

/// [`crate::store::Store::suppressed_among`] in one query.
pub(super) fn suppressed_among(
    pool: &Pool,
    asked: &[(TenantId, String)],
) -> Result<HashSet<(TenantId, String)>, StoreError> {
    let tenants: Vec<&str> = asked.iter().map(|(t, _)| t.as_str()).collect();
    let emails: Vec<String> = asked.iter().map(|(_, e)| e.to_ascii_lowercase()).collect();
    let mut conn = pool.get()?;
    let (client, st) = conn.parts();
    let held: HashSet<(String, String)> = st
        .query(
            client,
            "SELECT s.tenant, s.email FROM suppressions s
               JOIN unnest($1::text[], $2::text[]) AS a(tenant, email)
                 ON s.tenant = a.tenant AND s.email = a.email",
            &[&tenants, &emails],
        )?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    Ok(asked
        .iter()
        .filter(|(t, e)| held.contains(&(t.as_str().to_owned(), e.to_ascii_lowercase())))
        .cloned()
        .collect())
}

pub(super) fn suppression(pool: &Pool, tenant: &TenantId, email: &str) -> Result<Option<Suppression>, StoreError> {
    pool.get()?
        .query_opt(
            "SELECT record FROM suppressions WHERE tenant = $1 AND email = $2",
            &[&tenant.as_str(), &email.to_ascii_lowercase()],
        )?
        .map(|row| decode(row.get(0)))
        .transpose()
}

pub(super) fn list_suppressions(
    pool: &Pool,
    tenant: &TenantId,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Suppression>, StoreError> {
    pool.get()?
        .query(
            "SELECT record FROM suppressions WHERE tenant = $1 AND email > $2 ORDER BY email LIMIT $3",
            &[&tenant.as_str(), &after.unwrap_or(""), &limit_of(limit)],
        )?
        .iter()
        .map(|row| decode(row.get(0)))
        .collect()
}

pub(super) fn put_suppression(pool: &Pool, tenant: &TenantId, suppression: &Suppression) -> Result<(), StoreError> {
    pool.get()?.execute(
        "INSERT INTO suppressions (tenant, email, record) VALUES ($1, $2, $3)
         ON CONFLICT (tenant, email) DO UPDATE SET record = excluded.record",
        &[&tenant.as_str(), &suppression.email, &encode(suppression)?],
    )?;
    Ok(())
}

pub(super) fn delete_suppression(pool: &Pool, tenant: &TenantId, email: &str) -> Result<bool, StoreError> {
    Ok(pool.get()?.execute(
        "DELETE FROM suppressions WHERE tenant = $1 AND email = $2",
        &[&tenant.as_str(), &email.to_ascii_lowercase()],
    )? > 0)
}

pub(super) fn put_domain(pool: &Pool, domain: &SenderDomain, create: bool) -> Result<bool, StoreError> {
    let params: [&(dyn postgres::types::ToSql + Sync); 4] = [
        &domain.tenant.as_str(),
        &domain.id.as_str(),
        &domain.name.as_str(),
        &encode(domain)?,
    ];
    let mut client = pool.get()?;
    let written = if create {
        client.execute(
            "INSERT INTO domains (tenant, id, name, record) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &params,
        )?
    } else {
        // An update of a domain deleted meanwhile does not bring it back.
        client.execute(
            "UPDATE domains SET record = $4 WHERE tenant = $1 AND id = $2 AND name = $3",
            &params,
        )?
    };
    Ok(written > 0)
}

pub(super) fn domain(pool: &Pool, tenant: &TenantId, id_or_name: &str) -> Result<Option<SenderDomain>, StoreError> {
    pool.get()?
        .query_opt(
            "SELECT record FROM domains WHERE tenant = $1 AND (name = $2 OR id = $3)
              ORDER BY name = $2 DESC LIMIT 1",
            &[&tenant.as_str(), &id_or_name.to_ascii_lowercase(), &id_or_name],
        )?
        .map(|row| decode(row.get(0)))
        .transpose()
}

pub(super) fn domains(pool: &Pool, tenant: Option<&TenantId>) -> Result<Vec<SenderDomain>, StoreError> {
    pool.get()?
        .query(
            "SELECT record FROM domains WHERE $1::text IS NULL OR tenant = $1 ORDER BY tenant, id",
            &[&tenant.map(|t| t.as_str())],
        )?
        .iter()
        .map(|row| decode(row.get(0)))
        .collect()
}

pub(super) fn delete_domain(pool: &Pool, tenant: &TenantId, id: &DomainId) -> Result<bool, StoreError> {
    Ok(pool.get()?.execute(
        "DELETE FROM domains WHERE tenant = $1 AND id = $2",
        &[&tenant.as_str(), &id.as_str()],
    )? > 0)
}

/// Made on first use: the first node to insert wins, every later call reads its value.
pub(super) fn secret(pool: &Pool, name: &str) -> Result<Vec<u8>, StoreError> {
    let mut fresh = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut fresh);
    let mut client = pool.get()?;
    client.execute(
        "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&name, &fresh.as_slice()],
    )?;
    Ok(client
        .query_one("SELECT value FROM secrets WHERE name = $1", &[&name])?
        .get(0))
}

pub(super) fn revoke_token(pool: &Pool, jti: &str, until: u64) -> Result<(), StoreError> {
    let until = i64::try_from(until).unwrap_or(i64::MAX);
    pool.get()?.execute(
        "INSERT INTO revocations (jti, until) VALUES ($1, $2) ON CONFLICT (jti) DO UPDATE SET until = excluded.until",
        &[&jti, &until],
    )?;
    Ok(())
}

pub(super) fn revoked_tokens(pool: &Pool, now: u64) -> Result<Vec<(String, u64)>, StoreError> {
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let mut client = pool.get()?;
    client.execute("DELETE FROM revocations WHERE until < $1", &[&now])?;
    Ok(client
        .query("SELECT jti, until FROM revocations ORDER BY jti", &[])?
        .iter()
        .map(|row| (row.get(0), u64::try_from(row.get::<_, i64>(1)).unwrap_or(0)))
        .collect())
}

pub(super) fn save_report(
    pool: &Pool,
    tenant: &TenantId,
    source: &str,
    matched: bool,
    raw: &[u8],
) -> Result<String, StoreError> {
    let id = format!("rpt_{}", uuid::Uuid::now_v7().simple());
    let received_at = Utc::now();
    let record = serde_json::json!({
        "id": id, "source": source, "matched": matched, "received_at": received_at,
        "raw": String::from_utf8_lossy(raw),
    });
    pool.get()?.execute(
        "INSERT INTO reports (tenant, id, day, body) VALUES ($1, $2, $3, $4)",
        &[&tenant.as_str(), &id, &received_at.date_naive(), &encode(&record)?],
    )?;
    Ok(id)
}
