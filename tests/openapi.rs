//! What backend teams build on: the OpenAPI 3.1 document at `/openapi.json` covers every
//! route, `schemathesis` (property-based, from PyPI) finds no 5xx, no undocumented status and
//! no response outside its schema against a node on Redis, and a client generated from the
//! document by `openapi-python-client` round-trips every admin call. Both tools live in a
//! virtualenv the test command makes under `target/py-api`.

use std::path::{Path, PathBuf};
use std::process::Command;

use harness::*;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// A tool from the test command's virtualenv.
fn tool(name: &str) -> PathBuf {
    let path = root().join("target/py-api/bin").join(name);
    assert!(
        path.exists(),
        "{} missing: run the README's test command (bash tests/run.sh), which installs it",
        path.display()
    );
    path
}

/// `PATH` with the virtualenv's tools first.
fn venv_path() -> String {
    let venv = root().join("target/py-api/bin");
    format!(
        "{}:{}",
        venv.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

async fn document(node: &Gateway) -> Value {
    let response = harness::http::client()
        .get(node.http_url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

/// Every route of the product contract (SPEC §4, §7–§11), by method and path.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/ws/license"),
    ("get", "/sse/license"),
    ("get", "/api/license"),
    ("post", "/api/connect-ticket"),
    ("get", "/api/notifications"),
    ("post", "/api/notifications/read-all"),
    ("post", "/api/notifications/{id}/read"),
    ("post", "/api/notifications/{id}/unread"),
    ("get", "/api/notifications/preferences"),
    ("put", "/api/notifications/preferences"),
    ("get", "/api/admin/stats"),
    ("post", "/api/admin/tenants/{tenant}/events"),
    ("post", "/api/admin/tenants/{tenant}/disconnect"),
    ("put", "/api/admin/tenants/{tenant}/license"),
    ("delete", "/api/admin/tenants/{tenant}/license"),
    ("put", "/api/admin/tenants/{tenant}/usage"),
    ("get", "/api/admin/tenants/{tenant}/notifications/stats"),
    ("get", "/api/admin/tenants/{tenant}/webhooks"),
    ("put", "/api/admin/tenants/{tenant}/webhooks/{name}"),
    ("delete", "/api/admin/tenants/{tenant}/webhooks/{name}"),
    (
        "get",
        "/api/admin/tenants/{tenant}/webhooks/{name}/deliveries",
    ),
    (
        "post",
        "/api/admin/tenants/{tenant}/webhooks/{name}/deliveries/{event}/redeliver",
    ),
    ("put", "/api/admin/tenants/{tenant}/email"),
    ("get", "/api/admin/tenants/{tenant}/email"),
    ("delete", "/api/admin/tenants/{tenant}/email"),
    ("get", "/api/admin/tenants/{tenant}/email/deliveries"),
];

/// The document describes exactly the contract's routes, each with an operation id, its
/// credentials and the error schema on every refusal; the CLI prints the same document.
#[tokio::test]
async fn the_document_describes_every_route() {
    let node = Gateway::start(GatewayOptions::memory()).await;
    let doc = document(&node).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let mut documented = Vec::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            documented.push((method.clone(), path.clone()));
            let id = operation["operationId"].as_str().unwrap_or_default();
            assert!(!id.is_empty(), "{method} {path}: operationId");
            assert!(
                operation["summary"].as_str().is_some_and(|s| s.len() > 5),
                "{method} {path}: a summary"
            );
            let security = operation["security"].to_string();
            if path.starts_with("/api/admin/") {
                assert!(
                    security.contains("adminKey") && security.contains("adminApiKey"),
                    "{method} {path}: admin key"
                );
            } else if path.starts_with("/api/") {
                assert!(security.contains("tenantToken"), "{method} {path}: token");
            }
            for (status, response) in operation["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    let text = &response["content"]["text/plain"];
                    assert!(
                        schema.as_str().is_some_and(|s| s.ends_with("/ApiError"))
                            || !text.is_null()
                            || path == "/readyz",
                        "{method} {path} {status}: the error schema"
                    );
                }
            }
        }
    }
    let mut expected: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    documented.sort();
    expected.sort();
    assert_eq!(documented, expected);
    for scheme in ["adminKey", "adminApiKey", "tenantToken"] {
        assert!(
            doc["components"]["securitySchemes"][scheme].is_object(),
            "{scheme}"
        );
    }
    // Every documented path is served (none answers 404 for lack of a route).
    for (method, path) in ROUTES {
        let url = node.http_url(
            &path
                .replace("{tenant}", "acme")
                .replace("{name}", "ops")
                .replace("{id}", "1-0")
                .replace("{event}", "1-0"),
        );
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let status = harness::http::client()
            .request(method.clone(), &url)
            .send()
            .await
            .unwrap();
        let status = status.status().as_u16();
        assert!(
            status != 404 && status != 405 || path.contains('{') && status == 404,
            "{method} {path}: {status}"
        );
    }
    let printed = Command::new(binary()).arg("openapi").output().unwrap();
    assert!(printed.status.success());
    let printed: Value = serde_json::from_slice(&printed.stdout).unwrap();
    assert_eq!(
        printed, doc,
        "`license-gateway openapi` prints the served document"
    );
}

/// schemathesis against a node on Redis: the admin operations with an admin key, the tenant
/// ones with a user's token. Its checks: no 5xx, every status documented, content types,
/// headers and bodies as documented. The stream routes are left out: a valid token opens a
/// stream that never ends (they are covered by tests/conformance.rs and tests/sse.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure() {
    let redis = Redis::start();
    // Private webhook URLs are allowed so that generated ones are stored without a DNS lookup
    // per case (nothing delivers them: no worker runs).
    let node =
        Gateway::start(GatewayOptions::redis(&redis).env("WEBHOOK_ALLOW_PRIVATE", "true")).await;
    // The examples' tenant `acme` and endpoint `ops` exist, so the examples reach the full
    // answers (a license view, a notification page, a delivery log) and not only 404s.
    let license = serde_json::json!({
        "tenantId": "acme", "plan": "pro", "expiresAt": "2031-01-31T00:00:00Z",
        "modules": {"analytics": {"enabled": true}, "payroll": {"enabled": false}},
        "limits": {"users": 100}
    });
    let seeds = [
        ("PUT", "/api/admin/tenants/acme/license", license),
        (
            "PUT",
            "/api/admin/tenants/acme/usage",
            serde_json::json!({"users": 90}),
        ),
        (
            "PUT",
            "/api/admin/tenants/acme/webhooks/ops",
            serde_json::json!({"url": "http://127.0.0.1:9/hook",
                               "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}),
        ),
        (
            "PUT",
            "/api/admin/tenants/acme/email",
            serde_json::json!({"recipients": ["ops@acme.example"]}),
        ),
    ];
    for (method, path, body) in seeds {
        let (status, answer) = admin_json(node.port, method, path, Some(body)).await;
        assert!(status < 300, "{path}: {status} {answer}");
    }
    let schema = node.http_url("/openapi.json");
    let base = node.http_url("");
    let runs = [
        ("admin", admin_key(), "^/api/admin/"),
        (
            "tenant",
            user_token("acme", "alice"),
            "^/(api/(license|connect-ticket|notifications)|healthz|readyz|metrics|openapi.json)",
        ),
    ];
    for (name, credential, paths) in runs {
        let header = format!("Authorization: Bearer {credential}");
        let out = Command::new(tool("schemathesis"))
            .args(["run", &schema, "--url", &base, "--header", &header])
            .args(["--include-path-regex", paths])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_headers_conformance,response_schema_conformance",
            ])
            .args(["--phases", "examples,coverage,fuzzing"])
            .args([
                "--max-examples",
                "60",
                "--seed",
                "20261202",
                "--workers",
                "2",
            ])
            .args(["--request-timeout", "10", "--no-color"])
            .env("SCHEMATHESIS_HOOKS", "")
            .current_dir(std::env::temp_dir())
            .output()
            .expect("schemathesis runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        // The summary in the test output: operations, cases tried, failures.
        let summary: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.contains("SUMMARY"))
            .collect();
        println!("schemathesis, {name} operations:\n{}", summary.join("\n"));
        assert!(
            out.status.success(),
            "schemathesis found failures in the {name} operations:\n{text}\n{}",
            node.log_tail()
        );
        let tried = summary
            .iter()
            .find_map(|l| l.trim().strip_suffix(" passed"))
            .and_then(|l| l.split_once(" generated, "))
            .filter(|(generated, passed)| generated == passed)
            .and_then(|(generated, _)| generated.parse::<u64>().ok());
        assert!(
            tried.is_some_and(|n| n > 300),
            "{name}: no summary of a clean run:\n{text}"
        );
        // Cases that only ever met 401 would test nothing behind the credentials.
        assert!(
            !text.contains("Authentication failed"),
            "{name}: the credential was refused:\n{text}"
        );
        println!(
            "schemathesis, {name} operations: {} cases tried, failures 0",
            tried.unwrap_or_default()
        );
    }
    let log = node.log();
    assert!(!log.contains("panicked"), "the node panicked");
}

/// `openapi-python-client` generates a client from the served document; a script calls every
/// admin operation through it and checks what the typed models read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_client_round_trips_every_admin_call() {
    let redis = Redis::start();
    let node =
        Gateway::start(GatewayOptions::redis(&redis).env("WEBHOOK_ALLOW_PRIVATE", "true")).await;
    let dir = TempDir::new("lgw-openapi-client");
    let doc = document(&node).await;
    std::fs::write(dir.0.join("openapi.json"), doc.to_string()).unwrap();
    let generated = Command::new(tool("openapi-python-client"))
        .args(["generate", "--path", "openapi.json", "--meta", "none"])
        .args(["--output-path", "lgw_client"])
        .current_dir(&dir.0)
        // Its post-generation formatter (ruff) is in the same virtualenv.
        .env("PATH", venv_path())
        .output()
        .expect("openapi-python-client runs");
    let text = String::from_utf8_lossy(&generated.stdout).to_string()
        + &String::from_utf8_lossy(&generated.stderr);
    assert!(generated.status.success(), "generation failed:\n{text}");
    assert!(
        !text.contains("Warning"),
        "the generator skipped part of the document:\n{text}"
    );
    let script = root().join("tests/api_client.py");
    let out = Command::new(tool("python"))
        .arg(&script)
        .arg(node.http_url(""))
        .arg(admin_key())
        .env("PYTHONPATH", &dir.0)
        .output()
        .expect("python runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    println!("{text}");
    assert!(
        out.status.success(),
        "round trip failed:\n{text}\n{}",
        node.log_tail()
    );
    let admin_operations = ROUTES
        .iter()
        .filter(|(_, p)| p.starts_with("/api/admin/"))
        .count();
    assert!(
        text.contains(&format!(
            "every admin operation round-tripped: {admin_operations}"
        )),
        "{text}"
    );
}
