//! Policies from a Kubernetes ConfigMap volume reload on the kubelet's
//! update: the kubelet never edits a file in place. It writes the new
//! version into a fresh timestamped directory, points a `..data_tmp`
//! symlink at it, renames that over `..data` (one atomic swap) and removes
//! the old directory; each policy file is a symlink `abac.yaml ->
//! ..data/abac.yaml`. This test builds exactly that layout, swaps it the
//! same way, and checks the running gateway serves the new version.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{admin_get, Gateway, Setup, ALLOW_ALL_ABAC, SECURITY_POLICY};

const DENY_ALL_ABAC: &str = "policies:\n  - id: deny_all\n    effect: Deny\n    resources: [\"/**\"]\n    actions: [\"*\"]\n";

/// Writes one version of the ConfigMap into `dir/<version>` (as the
/// kubelet's timestamped directory) with `abac` and the security policy.
fn write_version(dir: &Path, version: &str, abac: &str) {
    let v = dir.join(version);
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(v.join("abac.yaml"), abac).unwrap();
    std::fs::write(v.join("security_policy.yaml"), SECURITY_POLICY).unwrap();
}

/// Turns a plain policies directory into the kubelet's layout holding `abac`.
fn kubelet_layout(dir: &Path, abac: &str) {
    for entry in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    write_version(dir, "..2026_12_06_10_00_00.000000001", abac);
    std::os::unix::fs::symlink("..2026_12_06_10_00_00.000000001", dir.join("..data")).unwrap();
    for name in ["abac.yaml", "security_policy.yaml"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
    }
}

/// The kubelet's update (atomic_writer.go): new directory, `..data_tmp`
/// symlink, rename over `..data`, old directory removed.
fn kubelet_swap(dir: &Path, old: &str, new: &str, abac: &str) {
    write_version(dir, new, abac);
    std::os::unix::fs::symlink(new, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join(old)).unwrap();
}

/// Starts a gateway whose policies directory has the kubelet's layout.
fn start_on_configmap(abac: &str) -> Gateway {
    let gw = Setup::default().start_prepared(|dir| kubelet_layout(&dir.join("policies"), abac));
    gw.wait_admin("/readyz", 200);
    gw
}

fn policy_version(gw: &Gateway) -> u64 {
    let (_, body) = admin_get(gw.admin, "/readyz").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["policy_version"].as_u64().unwrap()
}

async fn status_of_a_message(gw: &Gateway) -> u16 {
    let token = gw.token("alice", &[]);
    let resp = gw
        .client(true)
        .post(gw.url("/v1/messages"))
        .bearer_auth(token)
        .json(&serde_json::json!({"platform": "web", "sender": {"id": "alice"}, "content": {"text": "hello"}}))
        .send()
        .await
        .unwrap();
    resp.status().as_u16()
}

#[test]
fn a_kubelet_symlink_swap_reloads_the_policies() {
    let gw = start_on_configmap(DENY_ALL_ABAC);
    let rt = common::rt();
    assert_eq!(
        rt.block_on(status_of_a_message(&gw)),
        403,
        "version 1 denies"
    );
    let before = policy_version(&gw);

    let dir = gw.dir.path().join("policies");
    kubelet_swap(
        &dir,
        "..2026_12_06_10_00_00.000000001",
        "..2026_12_06_10_05_00.000000002",
        ALLOW_ALL_ABAC,
    );
    // Bounded wait for the watcher (it debounces bursts).
    let deadline = Instant::now() + Duration::from_secs(10);
    while policy_version(&gw) == before {
        assert!(
            Instant::now() < deadline,
            "no reload after the ..data swap:\n{}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        rt.block_on(status_of_a_message(&gw)),
        200,
        "version 2 allows"
    );
    // One swap, one reload: the burst of events (create, rename, remove)
    // was debounced into a single reload.
    assert_eq!(policy_version(&gw), before + 1);

    // And back, the same way: the old directory name is gone, a new one comes.
    kubelet_swap(
        &dir,
        "..2026_12_06_10_05_00.000000002",
        "..2026_12_06_10_10_00.000000003",
        DENY_ALL_ABAC,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while policy_version(&gw) == before + 1 {
        assert!(Instant::now() < deadline, "no reload after the second swap");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(rt.block_on(status_of_a_message(&gw)), 403);
}
