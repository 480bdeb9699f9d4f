//! TLS to Redis (`rediss://`): a real `redis-server` with only a `tls-port` and a test CA.
//! The conformance suite runs over it too (its `tls::` module); here, the CA must be right.

use harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_refused_with_a_clear_error() {
    let redis = Redis::start_tls();
    let ca = redis.ca_file().unwrap().display().to_string();
    let other = TempDir::new("lgw-other-ca");
    harness::redis::make_test_ca(&other.0);
    let wrong = other.0.join("ca.crt").display().to_string();
    let url = redis.url();
    let publish = |ca: &str| {
        run_cli(
            &["publish", "--tenant", "acme", "--type", "license_updated"],
            &[("REDIS_URL", &url), ("REDIS_TLS_CA_FILE", ca)],
        )
    };
    let (status, stdout, stderr) = publish(&ca);
    assert!(status.success(), "{stderr}");
    assert!(stdout.trim().contains('-'), "an event id: {stdout}");
    let (status, _, stderr) = publish(&wrong);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    let (status, _, stderr) = publish("/nonexistent/ca.pem");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("REDIS_TLS_CA_FILE"), "{stderr}");

    // A node with the wrong CA is alive but never ready, and says why.
    let node = Gateway::spawn(GatewayOptions::redis(&redis).env("REDIS_TLS_CA_FILE", wrong));
    let (status, body) = eventually(WAIT, "readyz answers", || async {
        http(node.port, "GET", "/readyz", None, None).await.ok()
    })
    .await;
    assert_eq!(status, 503, "{body}");
    eventually(WAIT, "the certificate error in the log", || async {
        node.log()
            .to_lowercase()
            .contains("certificate")
            .then_some(())
    })
    .await;
}
