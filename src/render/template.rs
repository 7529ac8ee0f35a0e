//! Handlebars templates, strict: a variable the template uses and the data lacks is an
//! error naming its path, never an empty string. The html part is HTML-escaped
//! (`{{{triple}}}` opts out); subject and text are not. Partials (`{{> footer}}`) and
//! layouts (`{{#> layout}}…{{/layout}}` with `{{> @partial-block}}` inside the layout)
//! are other templates of the same tenant, rendering the same part.
//!
//! Everything here is pure CPU: callers resolve partials from storage first and run
//! [`render`] on a blocking thread. Output size and render time are bounded.

use std::io::Write;
use std::time::{Duration, Instant};

use handlebars::template::{Parameter, Template as Compiled, TemplateElement};
use handlebars::{Handlebars, RenderError, RenderErrorReason};
use serde_json::Value;

use super::helpers;
use crate::domain::template::{Part, TemplateSources};

/// A part that does not compile, with the position handlebars reported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {} part does not compile at line {line}, column {column}: {message}", part.as_str())]
pub struct CompileError {
    pub part: Part,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// A variable a part uses that the data lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {} part uses `{}`, which the data does not have", part.as_str(), path.trim_start_matches('/').replace('/', "."))]
pub struct MissingVariable {
    pub part: Part,
    /// A JSON Pointer into the data, e.g. `/order/total`.
    pub path: String,
    /// Where handlebars met it in the part's source, when it says (1-based).
    pub line: Option<usize>,
    pub column: Option<usize>,
}

/// Why rendering stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Every variable the template uses that the data lacks (at least one, at most
    /// [`MAX_MISSING`]), each once, in the order rendering meets them.
    #[error("{}", missing_summary(.0))]
    MissingVariables(Vec<MissingVariable>),
    #[error("the {} part includes the partial `{name}`, which does not exist", part.as_str())]
    MissingPartial { part: Part, name: String },
    #[error("the rendered output is larger than {limit} bytes")]
    OutputTooLarge { limit: usize },
    #[error("rendering took longer than {limit:?}")]
    TooSlow { limit: Duration },
    /// The loops over this data could run more than `limit` iterations.
    #[error("the template's loops over this data could run more than {limit} iterations")]
    TooComplex { limit: u64 },
    #[error("the {} part failed to render: {message}", part.as_str())]
    Failed { part: Part, message: String },
}

fn missing_summary(missing: &[MissingVariable]) -> String {
    match missing {
        [one] => one.to_string(),
        many => {
            let names: Vec<String> = many
                .iter()
                .map(|m| format!("`{}`", m.path.trim_start_matches('/').replace('/', ".")))
                .collect();
            format!(
                "the data lacks {} variables the template uses: {}",
                many.len(),
                names.join(", ")
            )
        }
    }
}

/// The three parts, each compiled once and cached by the caller per template version.
#[derive(Debug, Clone, Default)]
pub struct CompiledParts {
    pub subject: Option<Compiled>,
    pub html: Option<Compiled>,
    pub text: Option<Compiled>,
}

impl CompiledParts {
    pub fn get(&self, part: Part) -> Option<&Compiled> {
        match part {
            Part::Subject => self.subject.as_ref(),
            Part::Html => self.html.as_ref(),
            Part::Text => self.text.as_ref(),
        }
    }

    /// Every partial each part includes, as (part, name), sorted and unique.
    pub fn partials(&self) -> Vec<(Part, String)> {
        let mut found = Vec::new();
        for part in Part::ALL {
            let mut names = Vec::new();
            if let Some(template) = self.get(part) {
                collect_partials(template, &mut names);
            }
            names.sort();
            names.dedup();
            found.extend(names.into_iter().map(|name| (part, name)));
        }
        found
    }
}

fn collect_partials(template: &Compiled, names: &mut Vec<String>) {
    for element in &template.elements {
        match element {
            TemplateElement::PartialExpression(d) | TemplateElement::PartialBlock(d) => {
                if let Some(name) = d.name.as_name().filter(|n| !n.starts_with('@')) {
                    names.push(name.to_owned());
                }
                if let Some(inner) = &d.template {
                    collect_partials(inner, names);
                }
            }
            TemplateElement::HelperBlock(h) => {
                for inner in h.template.iter().chain(&h.inverse) {
                    collect_partials(inner, names);
                }
            }
            TemplateElement::DecoratorBlock(d) => {
                if let Some(inner) = &d.template {
                    collect_partials(inner, names);
                }
            }
            _ => {}
        }
    }
}

/// Compiles every present part, or reports the first part that does not compile.
pub fn compile(sources: &TemplateSources) -> Result<CompiledParts, CompileError> {
    let compile_part = |part: Part| -> Result<Option<Compiled>, CompileError> {
        let Some(source) = sources.get(part) else {
            return Ok(None);
        };
        let refuse = |message: String| CompileError {
            part,
            line: 1,
            column: 1,
            message,
        };
        if source.len() > MAX_SOURCE_BYTES {
            return Err(refuse(format!("a part is at most {MAX_SOURCE_BYTES} bytes")));
        }
        // The parser recurses per nested block: refuse absurd nesting before it can
        // exhaust the stack.
        if block_depth(source) > MAX_BLOCK_DEPTH {
            return Err(refuse(format!("blocks nest at most {MAX_BLOCK_DEPTH} deep")));
        }
        let template = Compiled::compile(source).map_err(|err| {
            let (line, column) = err.pos().unwrap_or((1, 1));
            CompileError {
                part,
                line,
                column,
                message: err.reason().to_string(),
            }
        })?;
        check_supported(&template).map_err(refuse)?;
        Ok(Some(template))
    };
    Ok(CompiledParts {
        subject: compile_part(Part::Subject)?,
        html: compile_part(Part::Html)?,
        text: compile_part(Part::Text)?,
    })
}

const MAX_SOURCE_BYTES: usize = 1 << 20;
const MAX_BLOCK_DEPTH: usize = 64;

/// The deepest nesting of `{{#…}}` blocks, counted without parsing.
fn block_depth(source: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut rest = source;
    while let Some(at) = rest.find("{{") {
        rest = &rest[at + 2..];
        let tag = rest.trim_start_matches(['~', '{']);
        if tag.starts_with('#') {
            depth += 1;
            deepest = deepest.max(depth);
        } else if tag.starts_with('/') {
            depth = depth.saturating_sub(1);
        }
    }
    deepest
}

/// Refuses what would escape the save-time checks: inline partials and other
/// decorators, `@`-partials other than `@partial-block`, computed partial names, and
/// arguments to partials (strict mode does not apply to them).
fn check_supported(template: &Compiled) -> Result<(), String> {
    for element in &template.elements {
        match element {
            TemplateElement::DecoratorExpression(_) | TemplateElement::DecoratorBlock(_) => {
                return Err(
                    "inline partials and decorators (`{{*…}}`, `{{#*…}}`) are not supported; \
                            make the partial a template of its own"
                        .into(),
                );
            }
            TemplateElement::PartialExpression(d) | TemplateElement::PartialBlock(d) => {
                match d.name.as_name() {
                    Some("@partial-block") => {}
                    Some(name)
                        if !name.starts_with('@') && matches!(d.name, Parameter::Name(_) | Parameter::Path(_)) => {}
                    _ => return Err("a partial must be named literally (`{{> footer}}`)".into()),
                }
                if !d.params.is_empty() || !d.hash.is_empty() {
                    return Err("partials take no arguments; they see the same data as the template".into());
                }
                if let Some(inner) = &d.template {
                    check_supported(inner)?;
                }
            }
            TemplateElement::HelperBlock(h) => {
                for inner in h.template.iter().chain(&h.inverse) {
                    check_supported(inner)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Bounds on one render (all three parts together).
#[derive(Debug, Clone, Copy)]
pub struct RenderLimits {
    pub max_output_bytes: usize,
    pub timeout: Duration,
    /// Upper bound on `#each` iterations, estimated before rendering. Output size and
    /// time are checked as bytes are written; loops that write nothing are not, so
    /// their cost is bounded up front.
    pub max_iterations: u64,
}

/// The rendered parts; a part absent from the template is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderedParts {
    pub subject: Option<String>,
    pub html: Option<String>,
    pub text: Option<String>,
}

const MAIN: &str = "@main";

/// Counts bytes and time as handlebars writes, and stops it past either limit.
struct BoundedWriter {
    buffer: Vec<u8>,
    budget: usize,
    deadline: Instant,
    tripped: Option<TemplateError>,
    limits: RenderLimits,
}

impl Write for BoundedWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.buffer.len() + bytes.len() > self.budget {
            self.tripped = Some(TemplateError::OutputTooLarge {
                limit: self.limits.max_output_bytes,
            });
        } else if Instant::now() > self.deadline {
            self.tripped = Some(TemplateError::TooSlow {
                limit: self.limits.timeout,
            });
        }
        if self.tripped.is_some() {
            return Err(std::io::Error::other("render limit reached"));
        }
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Renders `main` with `data`; `partials` are the templates it may include by name.
/// When variables are missing, the error names every one of them, so a caller fixes
/// the data in one round trip.
pub fn render(
    main: &CompiledParts,
    partials: &[(String, &CompiledParts)],
    data: &Value,
    limits: RenderLimits,
) -> Result<RenderedParts, TemplateError> {
    let deadline = Instant::now() + limits.timeout;
    let widest = widest_collection(data);
    for part in Part::ALL {
        if let Some(template) = main.get(part) {
            if loop_cost(template, part, partials, widest, 1, 0) > limits.max_iterations {
                return Err(TemplateError::TooComplex {
                    limit: limits.max_iterations,
                });
            }
        }
    }
    match render_parts(main, partials, data, limits, deadline) {
        Err(TemplateError::MissingVariables(first)) => Err(TemplateError::MissingVariables(every_missing(
            main, partials, data, limits, deadline, first,
        ))),
        rendered => rendered,
    }
}

/// The most missing variables one error lists.
pub const MAX_MISSING: usize = 50;

/// Strict rendering stops at the first missing variable. To find the others, render
/// again with a stand-in at each one found, until no new one appears. The search
/// shares the render's deadline and is capped at [`MAX_MISSING`]; it ends early when a
/// stand-in cannot be placed or itself breaks the render (a helper refusing it), and
/// every variable found until then is still genuinely missing.
fn every_missing(
    main: &CompiledParts,
    partials: &[(String, &CompiledParts)],
    data: &Value,
    limits: RenderLimits,
    deadline: Instant,
    mut found: Vec<MissingVariable>,
) -> Vec<MissingVariable> {
    let mut probe = data.clone();
    while found.len() < MAX_MISSING {
        let placed = found.last().is_some_and(|last| place_stand_in(&mut probe, &last.path));
        if !placed {
            break;
        }
        let Err(TemplateError::MissingVariables(more)) = render_parts(main, partials, &probe, limits, deadline) else {
            break;
        };
        match more.into_iter().next() {
            Some(next) if !found.iter().any(|f| f.path == next.path) => found.push(next),
            _ => break,
        }
    }
    found
}

/// Puts a stand-in value at `pointer` in `data`, creating objects on the way; false
/// when the path runs through a value that is not an object or when something is
/// there already (the variable was missing for another reason, e.g. it is relative to
/// an `#each` item). `0` because every helper takes it: it is a number, a date and text.
fn place_stand_in(data: &mut Value, pointer: &str) -> bool {
    let mut segments: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    let Some(last) = segments.pop() else {
        return false;
    };
    let mut at = data;
    for segment in segments {
        at = match at {
            Value::Object(map) => map.entry(segment).or_insert_with(|| Value::Object(Default::default())),
            Value::Array(items) => match segment.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                Some(item) => item,
                None => return false,
            },
            _ => return false,
        };
    }
    match at {
        Value::Object(map) if !map.contains_key(&last) => {
            map.insert(last, Value::from(0));
            true
        }
        _ => false,
    }
}

/// Renders every part of `main`, stopping at the first error.
fn render_parts(
    main: &CompiledParts,
    partials: &[(String, &CompiledParts)],
    data: &Value,
    limits: RenderLimits,
    deadline: Instant,
) -> Result<RenderedParts, TemplateError> {
    let mut used = 0;
    let mut rendered = RenderedParts::default();
    for part in Part::ALL {
        let Some(template) = main.get(part) else {
            continue;
        };
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        if part != Part::Html {
            registry.register_escape_fn(handlebars::no_escape);
        }
        helpers::register(&mut registry);
        registry.register_template(MAIN, template.clone());
        for (name, compiled) in partials {
            if let Some(partial) = compiled.get(part) {
                registry.register_template(name, partial.clone());
            }
        }
        let mut writer = BoundedWriter {
            buffer: Vec::new(),
            budget: limits.max_output_bytes.saturating_sub(used),
            deadline,
            tripped: None,
            limits,
        };
        let result = registry.render_to_write(MAIN, data, &mut writer);
        if let Some(tripped) = writer.tripped {
            return Err(tripped);
        }
        result.map_err(|err| classify(part, &err))?;
        used += writer.buffer.len();
        let text = String::from_utf8(writer.buffer).map_err(|_| TemplateError::Failed {
            part,
            message: "the output is not UTF-8".into(),
        })?;
        match part {
            Part::Subject => rendered.subject = Some(text),
            Part::Html => rendered.html = Some(text),
            Part::Text => rendered.text = Some(text),
        }
    }
    Ok(rendered)
}

/// The length of the longest array or object anywhere in `data`: no `#each` can
/// iterate more often than that.
fn widest_collection(data: &Value) -> u64 {
    match data {
        Value::Array(items) => items.iter().map(widest_collection).fold(items.len() as u64, u64::max),
        Value::Object(map) => map.values().map(widest_collection).fold(map.len() as u64, u64::max),
        _ => 0,
    }
}

/// Partials nest at most this deep in the estimate (cycles are refused at save).
const MAX_PARTIAL_DEPTH: usize = 16;

/// An upper bound on the iterations of every `#each` in `template` when each loop
/// runs `widest` times and the template itself runs `runs` times. Saturating.
fn loop_cost(
    template: &Compiled,
    part: Part,
    partials: &[(String, &CompiledParts)],
    widest: u64,
    runs: u64,
    depth: usize,
) -> u64 {
    let mut cost: u64 = 0;
    for element in &template.elements {
        let add = match element {
            TemplateElement::HelperBlock(h) => {
                let inner_runs = if h.name.as_name() == Some("each") {
                    runs.saturating_mul(widest)
                } else {
                    runs
                };
                let own = if h.name.as_name() == Some("each") {
                    inner_runs
                } else {
                    0
                };
                h.template
                    .iter()
                    .chain(&h.inverse)
                    .map(|t| loop_cost(t, part, partials, widest, inner_runs, depth))
                    .fold(own, u64::saturating_add)
            }
            TemplateElement::PartialExpression(d) | TemplateElement::PartialBlock(d) if depth < MAX_PARTIAL_DEPTH => {
                let included = d
                    .name
                    .as_name()
                    .and_then(|name| partials.iter().find(|(n, _)| n == name))
                    .and_then(|(_, compiled)| compiled.get(part))
                    .map_or(0, |t| loop_cost(t, part, partials, widest, runs, depth + 1));
                let block = d
                    .template
                    .as_ref()
                    .map_or(0, |t| loop_cost(t, part, partials, widest, runs, depth + 1));
                included.saturating_add(block)
            }
            _ => 0,
        };
        cost = cost.saturating_add(add);
    }
    cost
}

fn classify(part: Part, err: &RenderError) -> TemplateError {
    match err.reason() {
        RenderErrorReason::MissingVariable(path) => TemplateError::MissingVariables(vec![MissingVariable {
            part,
            path: pointer_of(path.as_deref().unwrap_or("?")),
            line: err.line_no,
            column: err.column_no,
        }]),
        RenderErrorReason::PartialNotFound(name) => TemplateError::MissingPartial {
            part,
            name: name.clone(),
        },
        reason => TemplateError::Failed {
            part,
            message: match (err.line_no, err.column_no) {
                (Some(line), Some(column)) => format!("{reason} (line {line}, column {column})"),
                _ => reason.to_string(),
            },
        },
    }
}

/// `order.items.[0].price` → `/order/items/0/price`.
fn pointer_of(path: &str) -> String {
    path.split(['.', '/'])
        .filter(|seg| !seg.is_empty() && *seg != "this" && *seg != "..")
        .map(|seg| seg.trim_start_matches('[').trim_end_matches(']'))
        .fold(String::new(), |mut acc, seg| {
            acc.push('/');
            acc.push_str(&seg.replace('~', "~0"));
            acc
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const LIMITS: RenderLimits = RenderLimits {
        max_output_bytes: 10_000,
        timeout: Duration::from_secs(2),
        max_iterations: 100_000,
    };

    fn sources(subject: &str, html: &str, text: &str) -> TemplateSources {
        TemplateSources {
            subject: Some(subject.into()),
            html: Some(html.into()),
            text: Some(text.into()),
        }
    }

    fn render_one(s: &TemplateSources, data: Value) -> Result<RenderedParts, TemplateError> {
        render(&compile(s).unwrap(), &[], &data, LIMITS)
    }

    #[test]
    fn html_is_escaped_and_subject_and_text_are_not() {
        let s = sources("Hi {{name}}", "<p>{{name}} {{{name}}}</p>", "{{name}}");
        let out = render_one(&s, json!({"name": "<Tom & \"Jerry\">"})).unwrap();
        assert_eq!(out.subject.unwrap(), "Hi <Tom & \"Jerry\">");
        assert_eq!(
            out.html.unwrap(),
            "<p>&lt;Tom &amp; &quot;Jerry&quot;&gt; <Tom & \"Jerry\"></p>"
        );
        assert_eq!(out.text.unwrap(), "<Tom & \"Jerry\">");
    }

    #[test]
    fn a_missing_variable_is_an_error_naming_its_path_never_a_blank() {
        let s = sources("Order", "<p>{{order.total}}</p>", "ok");
        let err = render_one(&s, json!({"order": {"id": 1}})).unwrap_err();
        assert_eq!(
            err,
            TemplateError::MissingVariables(vec![MissingVariable {
                part: Part::Html,
                path: "/order/total".into(),
                line: Some(1),
                column: Some(4),
            }])
        );
        let each = sources("x", "{{#each items}}{{price}}{{/each}}", "x");
        let err = render_one(&each, json!({"items": [{"price": 1}, {"name": "b"}]})).unwrap_err();
        assert!(matches!(err, TemplateError::MissingVariables(_)), "{err:?}");
    }

    #[test]
    fn every_missing_variable_is_named_once_with_the_part_that_first_uses_it() {
        let s = sources(
            "{{uppercase who.name}}",
            "<p>{{format_number total}} {{format_date due}} {{who.name}}</p>",
            "{{#each items}}{{price}}{{/each}} {{note}}",
        );
        let err = render_one(&s, json!({"items": [{"name": "a"}]})).unwrap_err();
        let TemplateError::MissingVariables(missing) = err else {
            panic!("{err:?}");
        };
        let found: Vec<(Part, &str)> = missing.iter().map(|m| (m.part, m.path.as_str())).collect();
        assert_eq!(
            found,
            [
                (Part::Subject, "/who/name"),
                (Part::Html, "/total"),
                (Part::Html, "/due"),
                (Part::Text, "/price"),
            ],
            "stops at a variable it cannot stand in for (inside `#each`)"
        );
        let wide: String = (0..MAX_MISSING + 10).map(|i| format!("{{{{v{i}}}}}")).collect();
        let err = render_one(&sources("s", &wide, "t"), json!({})).unwrap_err();
        assert!(matches!(err, TemplateError::MissingVariables(m) if m.len() == MAX_MISSING));
    }

    #[test]
    fn if_on_a_missing_key_is_allowed() {
        let s = sources("x", "{{#if coupon}}{{coupon}}{{else}}none{{/if}}", "x");
        assert_eq!(render_one(&s, json!({})).unwrap().html.unwrap(), "none");
    }

    #[test]
    fn compile_errors_carry_part_line_and_column() {
        let err = compile(&sources("ok", "<p>\n  {{#if x}}\n</p>", "ok")).unwrap_err();
        assert_eq!(err.part, Part::Html);
        assert!(err.line >= 2, "{err}");
    }

    #[test]
    fn constructs_that_escape_the_save_checks_are_refused() {
        for html in [
            "{{> @main}}",
            "{{#*inline \"x\"}}{{> x}}{{/inline}}{{> x}}",
            "{{> (lookup . \"p\")}}",
            "{{> footer company=missing}}",
            "{{> footer this}}",
        ] {
            assert!(compile(&sources("s", html, "t")).is_err(), "{html} must be refused");
        }
        let deep = "{{#if a}}".repeat(100) + &"{{/if}}".repeat(100);
        assert!(compile(&sources("s", &deep, "t")).is_err());
        assert!(compile(&sources("s", "{{#> layout}}{{> footer}}{{/layout}}", "t")).is_ok());
    }

    #[test]
    fn partial_and_layout_names_are_collected() {
        let compiled = compile(&sources(
            "x",
            "{{#> layout}}{{> footer}}{{/layout}}{{#if a}}{{> aside}}{{/if}}",
            "x",
        ))
        .unwrap();
        let names: Vec<String> = compiled.partials().into_iter().map(|(_, name)| name).collect();
        assert_eq!(names, ["aside", "footer", "layout"]);
    }

    #[test]
    fn layouts_wrap_content_through_the_partial_block() {
        let layout = compile(&sources(
            "x",
            "<main>{{> @partial-block}}</main>",
            "[{{> @partial-block}}]",
        ))
        .unwrap();
        let page = compile(&sources(
            "s",
            "{{#> layout}}<p>{{n}}</p>{{/layout}}",
            "{{#> layout}}{{n}}{{/layout}}",
        ))
        .unwrap();
        let out = render(&page, &[("layout".into(), &layout)], &json!({"n": 1}), LIMITS).unwrap();
        assert_eq!(out.html.unwrap(), "<main><p>1</p></main>");
        assert_eq!(out.text.unwrap(), "[1]");
    }

    #[test]
    fn nested_loops_that_write_nothing_are_bounded_before_rendering() {
        let s = sources(
            "x",
            "{{#each a}}{{#each ../a}}{{#each ../../a}}{{/each}}{{/each}}{{/each}}",
            "x",
        );
        let wide: Vec<u32> = (0..100).collect();
        let err = render_one(&s, json!({"a": wide})).unwrap_err();
        assert_eq!(err, TemplateError::TooComplex { limit: 100_000 });
        let ok = sources("x", "{{#each a}}{{this}}{{/each}}", "x");
        assert!(render_one(&ok, json!({"a": wide})).is_ok());
    }

    #[test]
    fn output_size_is_bounded() {
        let s = sources("x", "{{#each items}}{{this}}{{/each}}", "x");
        let items: Vec<String> = (0..1000).map(|_| "0123456789".into()).collect();
        let err = render_one(&s, json!({"items": items})).unwrap_err();
        assert_eq!(err, TemplateError::OutputTooLarge { limit: 10_000 });
    }
}
