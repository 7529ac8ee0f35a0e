//! Template compilation and strict rendering: the first input line is the template
//! source, the rest the JSON data. Never panics, never overflows the stack (handlebars
//! recursion is refused at compile time), and always stops within its output bound.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mailgate::domain::template::TemplateSources;
use mailgate::render::template::{compile, render, RenderLimits};

const LIMITS: RenderLimits = RenderLimits {
    max_output_bytes: 64 * 1024,
    timeout: Duration::from_millis(200),
    max_iterations: 10_000,
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (source, json) = text.split_once('\n').unwrap_or((&text, "{}"));
    let Ok(data) = serde_json::from_str::<serde_json::Value>(json) else {
        return;
    };
    let sources = TemplateSources {
        subject: Some(source.replace(['\r', '\n'], " ")),
        html: Some(source.to_owned()),
        text: Some(source.to_owned()),
    };
    let Ok(compiled) = compile(&sources) else {
        return;
    };
    if let Ok(rendered) = render(&compiled, &[], &data, LIMITS) {
        let size: usize = [&rendered.subject, &rendered.html, &rendered.text]
            .iter()
            .map(|part| part.as_ref().map_or(0, String::len))
            .sum();
        assert!(size <= LIMITS.max_output_bytes, "{size} bytes rendered");
    }
});
