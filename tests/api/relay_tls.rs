//! Trusting a relay's certificate the ways a user configures it: the relay's own
//! self-signed `CA:TRUE` certificate as `ca_file`, its fingerprint, and what a refusal
//! tells the user. The relay is the harness Postfix's port `BASE + 5`, which presents a
//! certificate made by a plain `openssl req -x509`.

use std::process::Command;
use std::time::Duration;

use crate::helpers::{simple_message, spawn_binary, Postfix};

const WAIT: Duration = Duration::from_secs(20);

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `[[upstreams]]` entry for the self-signed port with `trust` (TOML keys) for its
/// certificate.
fn self_signed_relay(postfix: &Postfix, dir: &std::path::Path, trust: &str) -> String {
    postfix.relay(dir, "selfsigned", postfix.port + 5, "starttls", trust)
}

#[tokio::test]
async fn a_relays_own_ca_true_certificate_as_ca_file_is_pinned_and_delivers() {
    let postfix = Postfix::shared();
    let certificate = postfix.dir.join("tls/selfsigned.pem");
    let constraints = openssl(&[
        "x509",
        "-noout",
        "-ext",
        "basicConstraints",
        "-in",
        &certificate.to_string_lossy(),
    ]);
    assert!(
        constraints.contains("CA:TRUE"),
        "the harness certificate must be the kind Web PKI refuses: {constraints}"
    );
    let scratch = tempfile::tempdir().unwrap();
    let trust = format!("ca_file = \"{}\"", certificate.display());
    let app = spawn_binary(&self_signed_relay(&postfix, scratch.path(), &trust)).await;
    let id = app.send_ok(&simple_message("pinned@example.test")).await;
    postfix.wait_delivered(&id, 1, WAIT).await;
    app.wait_for(&id, WAIT, |m| m["status"] == "sent").await;
}

#[tokio::test]
async fn a_fingerprint_pins_a_relay_certificate_no_ca_file_vouches_for() {
    let postfix = Postfix::shared();
    let certificate = postfix.dir.join("tls/selfsigned.pem");
    let printed = openssl(&[
        "x509",
        "-noout",
        "-fingerprint",
        "-sha256",
        "-in",
        &certificate.to_string_lossy(),
    ]);
    let fingerprint = printed.trim().rsplit('=').next().unwrap().to_owned();
    let scratch = tempfile::tempdir().unwrap();
    // The relay's `ca_file` stays the harness CA, which did not sign this certificate:
    // only the fingerprint vouches for it.
    let trust = format!("tls_fingerprint_sha256 = \"{fingerprint}\"");
    let app = spawn_binary(&self_signed_relay(&postfix, scratch.path(), &trust)).await;
    let id = app.send_ok(&simple_message("fingerprint@example.test")).await;
    postfix.wait_delivered(&id, 1, WAIT).await;
}

#[tokio::test]
async fn another_self_signed_certificate_is_refused_with_a_diagnostic_that_names_the_fix() {
    let postfix = Postfix::shared();
    let scratch = tempfile::tempdir().unwrap();
    let other = scratch.path().join("other.pem");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &scratch.path().join("other.key").to_string_lossy(),
        "-out",
        &other.to_string_lossy(),
    ]);
    let trust = format!("ca_file = \"{}\"", other.display());
    let app = spawn_binary(&self_signed_relay(&postfix, scratch.path(), &trust)).await;
    let id = app.send_ok(&simple_message("refused@example.test")).await;
    let message = app.wait_for(&id, WAIT, |m| m["status"] == "deferred").await;
    let diagnostic = message["recipients"][0]["diagnostic"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for fix in ["ca_file", "tls_fingerprint_sha256", "not trusted"] {
        assert!(
            diagnostic.contains(fix),
            "the diagnostic should name `{fix}`: {diagnostic}"
        );
    }
    assert!(
        postfix.delivered(&id).is_empty(),
        "nothing is sent to an untrusted relay"
    );
    assert!(
        app.stderr().contains("tls_fingerprint_sha256"),
        "the log says what to configure too: {}",
        app.stderr()
    );
}
