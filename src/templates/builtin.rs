//! The templates shipped in `templates/`: compiled into the binary (so they work from
//! any directory and in the container), readable by every tenant by name, never
//! writable. A tenant's own template of the same name takes precedence.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::domain::auth::TenantId;
use crate::domain::ids::TemplateId;
use crate::domain::template::{Template, TemplateName, TemplateSources, TemplateVersion};
use crate::render::template::{compile, CompileError, CompiledParts};

macro_rules! shipped {
    ($name:literal) => {
        Shipped {
            name: $name,
            subject: include_str!(concat!("../../templates/", $name, "/subject.hbs")),
            html: include_str!(concat!("../../templates/", $name, "/html.hbs")),
            text: include_str!(concat!("../../templates/", $name, "/text.hbs")),
            description: include_str!(concat!("../../templates/", $name, "/description.txt")),
            sample: include_str!(concat!("../../templates/", $name, "/sample.json")),
        }
    };
}

/// One shipped template's sources, as embedded at build time.
pub struct Shipped {
    pub name: &'static str,
    pub subject: &'static str,
    pub html: &'static str,
    pub text: &'static str,
    pub description: &'static str,
    /// Data that renders every part, documented next to the template.
    pub sample: &'static str,
}

pub const SHIPPED: [Shipped; 4] = [
    shipped!("welcome"),
    shipped!("password-reset"),
    shipped!("receipt"),
    shipped!("magic-link"),
];

/// A shipped template, ready to use.
pub struct Builtin {
    pub template: Template,
    pub version: TemplateVersion,
    pub compiled: Arc<CompiledParts>,
}

/// The tenant that owns built-in templates in API responses.
const BUILTIN_TENANT: &str = "builtin";

#[derive(Debug, thiserror::Error)]
pub enum BuiltinError {
    #[error("shipped template `{0}` has an invalid name or tenant")]
    Name(&'static str),
    #[error("shipped template `{name}` does not compile: {source}")]
    Compile {
        name: &'static str,
        #[source]
        source: CompileError,
    },
}

/// Compiles every shipped template; a broken one fails start-up (and the tests). They
/// are numbered in [`SHIPPED`] order, so ids ascend through the list.
///
/// Their `created_at` is now, the moment this process loads them: a shipped template
/// is part of the binary, so it has existed for this service exactly as long as the
/// process has run. (The build time would need a build script and would differ
/// between identical sources built twice.)
pub fn load() -> Result<Vec<Builtin>, BuiltinError> {
    let loaded_at: DateTime<Utc> = Utc::now();
    let tenant = TenantId::parse(BUILTIN_TENANT).map_err(|_| BuiltinError::Name(BUILTIN_TENANT))?;
    SHIPPED
        .iter()
        .zip(1u32..)
        .map(|(shipped, n)| {
            let name = TemplateName::parse(shipped.name).map_err(|_| BuiltinError::Name(shipped.name))?;
            let sources = TemplateSources {
                subject: Some(shipped.subject.trim_end_matches(['\r', '\n']).to_owned()),
                html: Some(shipped.html.to_owned()),
                text: Some(shipped.text.to_owned()),
            };
            let compiled = compile(&sources).map_err(|source| BuiltinError::Compile {
                name: shipped.name,
                source,
            })?;
            Ok(Builtin {
                template: Template {
                    id: TemplateId::fixed(n),
                    tenant: tenant.clone(),
                    name,
                    latest_version: 1,
                    created_at: loaded_at,
                    updated_at: loaded_at,
                    builtin: true,
                },
                version: TemplateVersion {
                    version: 1,
                    sources,
                    description: Some(shipped.description.trim().to_owned()),
                    partials: Vec::new(),
                    created_at: loaded_at,
                },
                compiled: Arc::new(compiled),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::render::template::{render, RenderLimits};

    #[test]
    fn every_shipped_template_renders_its_sample_data_in_strict_mode() {
        let limits = RenderLimits {
            max_output_bytes: 1 << 20,
            timeout: Duration::from_secs(5),
            max_iterations: 1_000_000,
        };
        for (builtin, shipped) in load().unwrap().iter().zip(&SHIPPED) {
            let data: serde_json::Value = serde_json::from_str(shipped.sample).unwrap();
            let out = render(&builtin.compiled, &[], &data, limits).unwrap_or_else(|e| panic!("{}: {e}", shipped.name));
            let subject = out.subject.unwrap();
            assert!(
                !subject.is_empty() && !subject.contains('\n'),
                "{}: {subject:?}",
                shipped.name
            );
            let html = out.html.unwrap();
            assert!(
                html.contains("<table") && html.contains("role=\"presentation\""),
                "{}",
                shipped.name
            );
            assert!(
                !html.contains("{{") && !out.text.unwrap().contains("{{"),
                "{}",
                shipped.name
            );
        }
    }
}
