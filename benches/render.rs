//! Template rendering throughput: a cached (compiled once) template versus compiling
//! on every render, using the shipped `receipt` template and its sample data.
//! Run with `cargo bench --bench render`; prints figures, asserts nothing.

use std::time::{Duration, Instant};

use mailgate::render::template::{compile, render, RenderLimits};
use mailgate::templates::builtin::SHIPPED;

fn main() {
    let limits = RenderLimits {
        max_output_bytes: 5 << 20,
        timeout: Duration::from_secs(2),
        max_iterations: 1_000_000,
    };
    for shipped in &SHIPPED {
        let sources = mailgate::domain::template::TemplateSources {
            subject: Some(shipped.subject.to_owned()),
            html: Some(shipped.html.to_owned()),
            text: Some(shipped.text.to_owned()),
        };
        let data: serde_json::Value = serde_json::from_str(shipped.sample).expect("sample data");
        let compiled = compile(&sources).expect("compiles");
        let runs = 2_000;

        let start = Instant::now();
        for _ in 0..runs {
            std::hint::black_box(render(&compiled, &[], &data, limits).expect("renders"));
        }
        let cached = runs as f64 / start.elapsed().as_secs_f64();

        let start = Instant::now();
        for _ in 0..runs {
            let compiled = compile(&sources).expect("compiles");
            std::hint::black_box(render(&compiled, &[], &data, limits).expect("renders"));
        }
        let uncached = runs as f64 / start.elapsed().as_secs_f64();
        println!(
            "{:<15} cached: {:>8.0} renders/s ({:>6.1} µs each)   compile+render: {:>8.0} renders/s",
            shipped.name,
            cached,
            1e6 / cached,
            uncached
        );
    }
}
