//! The helpers templates may call, beyond handlebars' built-ins (`if`, `unless`,
//! `each`, `with`, `lookup`, `eq`, `ne`, `gt`, `gte`, `lt`, `lte`, `and`, `or`, `not`,
//! `len`). Every one is a pure function of its arguments: none can read files, the
//! environment or the network. Their results go through the part's escaping like any
//! other value.

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, NaiveDate, Utc};
use handlebars::{Context, Handlebars, Helper, HelperDef, RenderContext, RenderError, RenderErrorReason, ScopedJson};
use serde_json::Value;

/// Computes a helper's value from its arguments.
type HelperFn = fn(&Helper<'_>) -> Result<Value, RenderError>;

/// A helper that computes one value from its arguments.
struct ValueHelper(HelperFn);

impl HelperDef for ValueHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        (self.0)(h).map(ScopedJson::Derived)
    }
}

pub fn register(registry: &mut Handlebars<'_>) {
    let helpers: [(&str, HelperFn); 5] = [
        ("default", default),
        ("uppercase", |h| Ok(Value::String(text(param(h, 0)?).to_uppercase()))),
        ("lowercase", |h| Ok(Value::String(text(param(h, 0)?).to_lowercase()))),
        ("format_number", format_number),
        ("format_date", format_date),
    ];
    for (name, f) in helpers {
        registry.register_helper(name, Box::new(ValueHelper(f)));
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct HelperError(String);

fn fail(message: String) -> RenderError {
    RenderErrorReason::NestedError(Box::new(HelperError(message))).into()
}

/// Argument `index`; in strict mode a missing variable is reported with its path.
fn param<'a>(h: &'a Helper<'_>, index: usize) -> Result<&'a Value, RenderError> {
    let p = h
        .param(index)
        .ok_or_else(|| fail(format!("`{}` needs argument {}", h.name(), index + 1)))?;
    if p.is_value_missing() {
        return Err(RenderError::strict_error(p.relative_path()));
    }
    Ok(p.value())
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `{{default value "fallback"}}`: `value` unless it is missing, null or "".
fn default(h: &Helper<'_>) -> Result<Value, RenderError> {
    let value = h
        .param(0)
        .filter(|p| !p.is_value_missing())
        .map(|p| p.value())
        .filter(|v| !v.is_null() && v.as_str() != Some(""));
    match value {
        Some(v) => Ok(v.clone()),
        None => param(h, 1).cloned(),
    }
}

/// `{{format_number 1234.5 decimals=2}}` → `1,234.50`.
fn format_number(h: &Helper<'_>) -> Result<Value, RenderError> {
    let raw = param(h, 0)?;
    let number = match raw {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|n| n.is_finite())
    .ok_or_else(|| fail(format!("format_number: `{raw}` is not a number")))?;
    let decimals = h
        .hash_get("decimals")
        .and_then(|d| d.value().as_u64())
        .unwrap_or(2)
        .min(10) as usize;
    let fixed = format!("{:.*}", decimals, number.abs());
    let (int, frac) = fixed.split_once('.').unwrap_or((&fixed, ""));
    let mut grouped = String::new();
    for (i, digit) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let sign = if number < 0.0 && fixed.bytes().any(|b| (b'1'..=b'9').contains(&b)) {
        "-"
    } else {
        ""
    };
    let dot = if frac.is_empty() { "" } else { "." };
    Ok(Value::String(format!("{sign}{grouped}{dot}{frac}")))
}

/// `{{format_date "2026-11-28T10:00:00Z" "%B %-d, %Y"}}` (strftime; default
/// `%Y-%m-%d`). Accepts RFC 3339 strings, `YYYY-MM-DD` and Unix seconds.
fn format_date(h: &Helper<'_>) -> Result<Value, RenderError> {
    let raw = param(h, 0)?;
    let when: DateTime<Utc> = match raw {
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|d| d.with_timezone(&Utc))
            .ok()
            .or_else(|| {
                NaiveDate::parse_from_str(s, "%Y-%m-%d")
                    .ok()?
                    .and_hms_opt(0, 0, 0)
                    .map(|d| d.and_utc())
            }),
        Value::Number(n) => n.as_i64().and_then(|secs| DateTime::from_timestamp(secs, 0)),
        _ => None,
    }
    .ok_or_else(|| {
        fail(format!(
            "format_date: `{raw}` is not an RFC 3339 time, a date or Unix seconds"
        ))
    })?;
    let pattern = match h.param(1) {
        Some(p) => p
            .value()
            .as_str()
            .ok_or_else(|| fail("format_date: the format must be a string".into()))?,
        None => "%Y-%m-%d",
    };
    let items: Vec<Item<'_>> = StrftimeItems::new(pattern).collect();
    if items.iter().any(|i| matches!(i, Item::Error)) {
        return Err(fail(format!("format_date: `{pattern}` is not a valid strftime format")));
    }
    Ok(Value::String(when.format_with_items(items.into_iter()).to_string()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    fn render(template: &str, data: serde_json::Value) -> Result<String, handlebars::RenderError> {
        let mut registry = handlebars::Handlebars::new();
        registry.set_strict_mode(true);
        super::register(&mut registry);
        registry.render_template(template, &data)
    }

    #[test]
    fn default_fills_missing_null_and_empty_values() {
        let t = "{{default name \"friend\"}}";
        assert_eq!(render(t, json!({})).unwrap(), "friend");
        assert_eq!(render(t, json!({"name": ""})).unwrap(), "friend");
        assert_eq!(render(t, json!({"name": "Ana"})).unwrap(), "Ana");
    }

    #[test]
    fn numbers_and_dates_format_without_panicking_on_bad_input() {
        assert_eq!(
            render("{{format_number n}}", json!({"n": 1234567.891})).unwrap(),
            "1,234,567.89"
        );
        assert_eq!(
            render("{{format_number n decimals=0}}", json!({"n": -999.6})).unwrap(),
            "-1,000"
        );
        assert_eq!(render("{{format_number n}}", json!({"n": "12.5"})).unwrap(), "12.50");
        assert!(render("{{format_number n}}", json!({"n": "abc"})).is_err());
        let d = json!({"d": "2026-11-28T10:00:00Z"});
        assert_eq!(
            render("{{format_date d \"%B %-d, %Y\"}}", d.clone()).unwrap(),
            "November 28, 2026"
        );
        assert_eq!(render("{{format_date d}}", d.clone()).unwrap(), "2026-11-28");
        assert!(render("{{format_date d \"%Q %\"}}", d).is_err());
        assert_eq!(render("{{uppercase s}}", json!({"s": "ab"})).unwrap(), "AB");
        assert!(render("{{uppercase missing}}", json!({})).is_err());
    }
}
