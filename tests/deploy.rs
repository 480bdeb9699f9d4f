//! What CI cannot run, it validates: the Kubernetes manifests against the Kubernetes schemas
//! (offline, `kubernetes-validate --strict`), docker-compose.yml against the Compose schema, and
//! the nginx config with `nginx -t`. Then the compose topology runs natively, without Docker:
//! redis-server, three gateway nodes, one looping worker, and nginx with deploy/'s config.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::*;
use serde_json::json;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn manifests(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            manifests(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml")
            && path.file_name().is_some_and(|n| n != "kustomization.yaml")
        {
            out.push(path);
        }
    }
}

fn kubernetes_validate(path: &Path) -> (bool, String) {
    // As a module: works right after `pip install`, whatever the PATH shims (pyenv) say.
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .arg(path)
        .output()
        .expect("kubernetes-validate must be installed (the README's test command installs it)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn kubernetes_manifests_match_the_schemas() {
    let mut files = Vec::new();
    manifests(&root().join("deploy/k8s"), &mut files);
    assert!(files.len() >= 9, "{files:?}");
    for file in &files {
        let (ok, output) = kubernetes_validate(file);
        assert!(ok, "{}: {output}", file.display());
    }
    // The validator does reject a typo.
    let dir = TempDir::new("lgw-k8s");
    let broken = dir.0.join("broken.yaml");
    let text =
        std::fs::read_to_string(root().join("deploy/k8s/base/gateway-deployment.yaml")).unwrap();
    std::fs::write(
        &broken,
        text.replace("terminationGracePeriodSeconds", "terminationGracePeriod"),
    )
    .unwrap();
    assert!(
        !kubernetes_validate(&broken).0,
        "a misspelt field must fail"
    );
    // Every resource a kustomization names exists.
    for kustomization in [
        "deploy/k8s/base/kustomization.yaml",
        "deploy/k8s/overlays/production/kustomization.yaml",
        "deploy/k8s/overlays/cluster/kustomization.yaml",
    ] {
        let path = root().join(kustomization);
        let text = std::fs::read_to_string(&path).unwrap();
        let resources = text
            .lines()
            .skip_while(|l| !l.starts_with("resources:"))
            .skip(1)
            .take_while(|l| l.starts_with("  - "));
        for resource in resources {
            let target = path
                .parent()
                .unwrap()
                .join(resource.trim_start_matches("  - ").trim());
            assert!(
                target.exists(),
                "{kustomization} names {}",
                target.display()
            );
        }
    }
}

/// The secrets compose requires from the environment.
const COMPOSE_SECRETS: [&str; 3] = ["JWT_SECRET", "ADMIN_API_KEYS", "REDIS_PASSWORD"];

fn compose_config_without(path: &Path, missing: Option<&str>) -> (bool, String) {
    let mut command = Command::new("docker-compose");
    command.arg("-f").arg(path).args(["config", "-q"]);
    for var in COMPOSE_SECRETS {
        command.env_remove(var);
        if Some(var) != missing {
            command.env(var, "validate-0123456789-0123456789-0123");
        }
    }
    let out = command
        .output()
        .expect("docker-compose must be installed (the README's test command installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn compose_config(path: &Path) -> (bool, String) {
    compose_config_without(path, None)
}

/// Compose keeps no secret: each one missing from the environment stops it with a message
/// naming it. Every published port listens on loopback only, and Redis requires a password.
#[test]
fn compose_asks_for_its_secrets_and_publishes_on_loopback_only() {
    let path = root().join("docker-compose.yml");
    for var in COMPOSE_SECRETS {
        let (ok, output) = compose_config_without(&path, Some(var));
        assert!(!ok && output.contains(var), "{var} missing: {output}");
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let mut published = 0;
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "ports:" {
            while let Some(port) = lines.next_if(|l| l.trim_start().starts_with("- ")) {
                assert!(
                    port.contains("\"127.0.0.1:"),
                    "published beyond loopback: {port}"
                );
                published += 1;
            }
        }
    }
    assert!(published >= 4, "{published} published ports found");
    assert!(text.contains("\"--requirepass\", \"${REDIS_PASSWORD:?"));
}

#[test]
fn docker_compose_file_matches_the_compose_schema() {
    let (ok, output) = compose_config(&root().join("docker-compose.yml"));
    assert!(ok, "{output}");
    let dir = TempDir::new("lgw-compose");
    let broken = dir.0.join("docker-compose.yml");
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    std::fs::write(&broken, text.replace("\nvolumes:\n", "\nvolumez:\n")).unwrap();
    assert!(
        !compose_config(&broken).0,
        "a misspelt top-level key must fail"
    );
}

/// deploy/nginx/nginx.conf with the compose host names replaced by local nodes.
fn nginx_config(dir: &Path, listen: u16, upstreams: &[u16]) -> PathBuf {
    let mut text = std::fs::read_to_string(root().join("deploy/nginx/nginx.conf")).unwrap();
    for (i, port) in upstreams.iter().enumerate() {
        text = text.replace(
            &format!("gateway-{}:5000", i + 1),
            &format!("127.0.0.1:{port}"),
        );
    }
    text = text
        .replace("listen 8080;", &format!("listen 127.0.0.1:{listen};"))
        .replace(
            "pid /tmp/nginx.pid;",
            &format!("pid {}/nginx.pid;", dir.display()),
        )
        .replace("worker_processes auto;", "worker_processes 1;\ndaemon off;")
        .replace("/tmp/nginx-", &format!("{}/nginx-", dir.display()));
    let path = dir.join("nginx.conf");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn nginx_config_passes_nginx_t() {
    let dir = TempDir::new("lgw-nginx-t");
    let conf = nginx_config(
        &dir.0,
        free_port(),
        &[free_port(), free_port(), free_port()],
    );
    let out = Command::new("nginx")
        .arg("-t")
        .arg("-c")
        .arg(&conf)
        .output()
        .expect("nginx");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_topology_runs_natively() {
    let redis = Redis::start_with_aof();
    let nodes = [
        Gateway::start(GatewayOptions::redis(&redis)).await,
        Gateway::start(GatewayOptions::redis(&redis)).await,
        Gateway::start(GatewayOptions::redis(&redis)).await,
    ];
    let _worker = Gateway::worker(&redis, &["--interval", "60"]);
    let dir = TempDir::new("lgw-topology");
    let port = free_port();
    let conf = nginx_config(
        &dir.0,
        port,
        &nodes.iter().map(|n| n.port).collect::<Vec<_>>(),
    );
    // Stopped gracefully on drop (SIGQUIT), so no worker process outlives the test.
    let _nginx = Nginx::start_with_config(dir, conf, port).await;

    // Everything through the one published port.
    let doc = json!({"tenantId": "acme", "plan": "pro", "expiresAt": rfc3339_in(3), "limits": {"users": 100}});
    let (status, body) = http(
        port,
        "PUT",
        "/api/admin/tenants/acme/license",
        Some(&admin_key()),
        Some(&doc.to_string()),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let (mut client, hello) = WsClient::connected(
        &format!("ws://127.0.0.1:{port}/ws/license"),
        &tenant_token("acme"),
    )
    .await;
    assert!(nodes.iter().any(|n| hello["node"] == n.node_id.as_str()));
    let usage = json!({"users": 120}).to_string();
    let (status, _) = http(
        port,
        "PUT",
        "/api/admin/tenants/acme/usage",
        Some(&admin_key()),
        Some(&usage),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(client.next_json().await["type"], "usage_limit_exceeded");
    // An SSE stream through the same port, unbuffered by nginx's /sse/ location.
    let (mut stream, _) = SseClient::connected(port, &tenant_token("acme")).await;
    let sent = publish(
        port,
        "acme",
        "license_updated",
        json!({"changes": ["plan"]}),
    )
    .await;
    assert_eq!(stream.next_json().await, sent);
    assert_eq!(client.next_json().await, sent);
    // The looping worker fires the expiry through whichever node holds the client.
    let expired = loop {
        let e = tokio::time::timeout(Duration::from_secs(8), client.next_json())
            .await
            .expect("license_expired in time");
        if e["type"] == "license_expired" {
            break e;
        }
    };
    assert_eq!(expired["data"]["expiredAt"], doc["expiresAt"]);
}

/// The kustomizations with deploy/k8s copied to `dir`, secrets files written when `secrets`.
fn kustomize(dir: &Path, overlay: &str) -> (bool, String) {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir.join(overlay))
        .output()
        .expect("kubectl (with its built-in kustomize) must be installed");
    let text = if out.status.success() {
        &out.stdout
    } else {
        &out.stderr
    };
    (
        out.status.success(),
        String::from_utf8_lossy(text).into_owned(),
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// The shipped manifests hold no secret: every kustomization stops, naming the file to create,
/// until its secrets exist. Rendered with them, they validate, serve only the public paths over
/// TLS on the Ingress, let only gateway and worker pods reach a password-protected Redis, and
/// set the production settings a public deployment needs.
#[test]
fn kubernetes_deployment_holds_no_secret_and_is_safe_by_default() {
    let dir = TempDir::new("lgw-kustomize");
    copy_dir(&root().join("deploy/k8s"), &dir.0);
    for (overlay, file) in [
        ("base", "secrets.env"),
        ("overlays/production", "secrets.env"),
        ("redis", "redis.env"),
    ] {
        let (ok, output) = kustomize(&dir.0, overlay);
        assert!(
            !ok && output.contains(file),
            "{overlay} without {file}: {output}"
        );
    }
    let secrets = [
        (
            "base/secrets.env",
            "JWT_SECRET=s\nADMIN_API_KEYS=k\nREDIS_URL=redis://:p@redis:6379\n",
        ),
        (
            "overlays/cluster/cluster.env",
            "REDIS_URL=redis-cluster://:p@redis-cluster-0:6379\n",
        ),
        ("redis/redis.env", "REDIS_PASSWORD=p\n"),
    ];
    for (file, text) in secrets {
        std::fs::write(dir.0.join(file), text).unwrap();
    }
    let mut rendered = std::collections::BTreeMap::new();
    for overlay in ["base", "overlays/production", "overlays/cluster", "redis"] {
        let (ok, output) = kustomize(&dir.0, overlay);
        assert!(ok, "{overlay}: {output}");
        let path = dir
            .0
            .join(format!("{}.rendered.yaml", overlay.replace('/', "-")));
        std::fs::write(&path, &output).unwrap();
        let (valid, report) = kubernetes_validate(&path);
        assert!(valid, "{overlay} rendered: {report}");
        rendered.insert(overlay, output);
    }
    let production = &rendered["overlays/production"];
    assert!(
        production.contains("secretName: license-gateway-tls"),
        "Ingress without TLS"
    );
    let ingress = production
        .split("\n---\n")
        .find(|doc| doc.contains("kind: Ingress"))
        .expect("an Ingress");
    let paths: Vec<&str> = ingress
        .lines()
        .filter_map(|l| l.trim().trim_start_matches("- ").strip_prefix("path: "))
        .collect();
    assert_eq!(
        paths,
        [
            "/ws/license",
            "/sse/license",
            "/api/connect-ticket",
            "/api/notifications",
            "/api/license",
            "/client.js"
        ],
        "public paths: the browser's routes, never /api/admin, /metrics or the demo page"
    );
    for setting in [
        "ALLOWED_ORIGINS:",
        "MAX_CONNECTIONS:",
        "JWT_ISSUER:",
        "JWT_AUDIENCE:",
    ] {
        assert!(production.contains(setting), "production sets {setting}");
    }
    let config_map = production
        .split("\n---\n")
        .find(|doc| doc.contains("kind: ConfigMap"))
        .expect("a ConfigMap");
    assert!(
        !config_map.contains("REDIS_URL"),
        "the Redis URL carries a password: Secret only"
    );
    let redis = &rendered["redis"];
    assert!(redis.contains("--requirepass") && redis.contains("kind: NetworkPolicy"));
    assert!(
        redis.contains("app.kubernetes.io/name: license-gateway"),
        "gateways may reach Redis"
    );
    // And nothing in the repository is a secret value.
    let mut files = Vec::new();
    manifests(&root().join("deploy"), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains("kind: Secret"),
            "{} ships a Secret",
            file.display()
        );
        assert!(
            !text.to_lowercase().contains("change-me"),
            "{}",
            file.display()
        );
    }
    let tracked = Command::new("git")
        .args(["ls-files", "deploy", "docker-compose.yml"])
        .current_dir(root())
        .output()
        .expect("git");
    let tracked = String::from_utf8_lossy(&tracked.stdout);
    assert!(
        tracked.contains("secrets.env.example"),
        "git ls-files: {tracked}"
    );
    for file in tracked.lines() {
        assert!(
            !file.ends_with(".env"),
            "{file} must not be in the repository"
        );
    }
}
