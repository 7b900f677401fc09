//! The deploy artifacts of `deploy/`, checked by the third-party validators
//! that operators use (all offline: each ships what it checks against):
//! hadolint, check-jsonschema's vendored compose-spec schema,
//! kubernetes-validate --strict, systemd-analyze (verify and the offline
//! security score), promtool (check rules and rule unit tests), and
//! `moltgate check` on the configs the containers run. Then what no schema
//! says: the hardening each file promises, grace periods above the gateway's
//! own, and that the dashboard and alerts query only metrics the gateway
//! exports. A missing validator fails the test: `bash scripts/deps.sh test`
//! installs them all.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;

const BIN: &str = env!("CARGO_BIN_EXE_moltgate");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy(path: &str) -> PathBuf {
    root().join("deploy").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every YAML document of a file, with merge keys (`<<`) applied.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            let mut v =
                Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            v.apply_merge()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            v
        })
        .collect()
}

fn yaml(path: &Path) -> Value {
    yaml_docs(path)
        .into_iter()
        .next()
        .expect("one YAML document")
}

/// `v[a][b]...`, or `Null` when any step is missing.
fn at<'a>(v: &'a Value, keys: &[&str]) -> &'a Value {
    keys.iter()
        .fold(v, |v, k| v.get(*k).unwrap_or(&Value::Null))
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// Seconds of a duration written `45s`, `2m`, `1m30s` or a bare number.
fn seconds(v: &str) -> u64 {
    let v = v.trim();
    if let Ok(n) = v.parse() {
        return n;
    }
    humantime::parse_duration(v)
        .unwrap_or_else(|e| panic!("duration {v:?}: {e}"))
        .as_secs()
}

// ---------------------------------------------------------------- checkers

/// A validator's path: on PATH, or in the scripts directory of the
/// `python3` that `scripts/deps.sh test` installs them with.
fn checker(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let python_scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    on_path
        .into_iter()
        .chain(python_scripts)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is not installed: run `bash scripts/deps.sh test` (it installs every deploy validator)")
        })
}

/// Runs `cmd`, echoing its output (shown by `cargo test -- --nocapture` and on failure).
fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    println!(
        "$ {cmd:?}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn output_of(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    let all = output_of(&out);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{all}",
        out.status
    );
    all
}

// -------------------------------------------------------------- Dockerfile

#[test]
fn dockerfile_passes_hadolint_and_runs_non_root_on_a_read_only_root() {
    let dockerfile = deploy("Dockerfile");
    assert_ok(
        Command::new(checker("hadolint"))
            .args(["--failure-threshold", "warning"])
            .arg(&dockerfile),
    );

    let text = read(&dockerfile);
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let directive = |d: &str| -> Vec<&str> {
        let d = format!("{d} ");
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(d.as_str()))
            .map(str::trim)
            .collect()
    };
    assert!(
        directive("FROM").len() >= 2,
        "multi-stage: build and runtime"
    );
    let runtime = text
        .lines()
        .find(|l| l.starts_with("ARG RUNTIME_IMAGE="))
        .expect("ARG RUNTIME_IMAGE");
    assert!(
        runtime.contains("distroless"),
        "minimal runtime base, no shell: {runtime}"
    );
    let user = directive("USER");
    let uid: u32 = user
        .last()
        .expect("USER")
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("numeric USER");
    assert!(uid >= 10_000, "non-root UID >= 10000, got {uid}");
    assert_eq!(directive("EXPOSE"), ["8443 9090"]);
    assert_eq!(directive("VOLUME"), ["[\"/run/moltgate\"]"]);
    assert!(lines.contains(&"ENV TMPDIR=/run/moltgate"));
    let health = text.split("HEALTHCHECK").nth(1).expect("HEALTHCHECK");
    assert!(
        health.contains("CMD [\"/usr/local/bin/moltgate-healthcheck\""),
        "exec form, no shell"
    );

    let ignore = read(&root().join(".dockerignore"));
    for path in ["target", ".git", "certs/dev"] {
        assert!(
            ignore.lines().any(|l| l == path),
            ".dockerignore must exclude {path}"
        );
    }
}

/// The probe that HEALTHCHECK and compose's healthchecks run, built as the
/// Dockerfile builds it: against a listener that answers 200, then 503, then
/// only accepts (TCP mode), and against a closed port.
#[test]
fn healthcheck_probe_tells_healthy_from_not() {
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("moltgate-healthcheck");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    assert_ok(
        Command::new(rustc)
            .args(["--edition", "2021", "-C", "opt-level=0", "-o"])
            .arg(&probe)
            .arg(deploy("healthcheck.rs")),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        for status in ["200 OK", "503 Service Unavailable"] {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 1024];
            let n = conn.read(&mut buf).unwrap();
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(
                request.starts_with("GET /healthz HTTP/1.0\r\n"),
                "{request}"
            );
            write!(conn, "HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").unwrap();
        }
        // TCP mode: a connection is all it wants.
        drop(listener.accept().unwrap());
    });
    let status = |args: &[&str]| run(Command::new(&probe).args(args)).status.success();
    assert!(status(&[&addr, "/healthz"]), "200 is healthy");
    assert!(!status(&[&addr, "/healthz"]), "503 is not");
    assert!(status(&[&addr]), "TCP mode: accepting connections");
    server.join().unwrap();
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    assert!(
        !status(&[&closed, "/healthz"]),
        "connection refused is not healthy"
    );
    assert!(!status(&[&closed]), "nor in TCP mode");
    assert!(!status(&[]), "usage error");
}

// ----------------------------------------------------------------- compose

#[test]
fn compose_matches_the_compose_spec_and_is_hardened() {
    let compose = deploy("compose.yaml");
    let jsonschema = checker("check-jsonschema");
    let validate = |file: &Path| {
        run(Command::new(&jsonschema)
            .args(["--builtin-schema", "vendor.compose-spec"])
            .arg(file))
    };
    let out = validate(&compose);
    assert!(
        out.status.success(),
        "compose.yaml against the compose spec:\n{}",
        output_of(&out)
    );
    // The validator is really checking: an unknown service key fails.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("compose.yaml");
    std::fs::write(
        &broken,
        read(&compose).replace(
            "    stop_signal: SIGTERM\n",
            "    stop_signal: SIGTERM\n    no_such_key: 1\n",
        ),
    )
    .unwrap();
    assert!(
        !validate(&broken).status.success(),
        "check-jsonschema accepted an unknown key"
    );

    let doc = yaml(&compose);
    let services = at(&doc, &["services"]).as_mapping().expect("services");
    for name in ["gateway", "assistant", "redis"] {
        let s = at(&doc, &["services", name]);
        assert_eq!(
            at(s, &["read_only"]),
            &Value::Bool(true),
            "{name}: read-only root"
        );
        assert_eq!(
            at(s, &["cap_drop"]),
            &serde_yaml_ng::from_str::<Value>("[ALL]").unwrap(),
            "{name}: cap_drop"
        );
        assert!(
            at(s, &["healthcheck", "test"]).is_sequence(),
            "{name}: healthcheck"
        );
        let opts = format!("{:?}", at(s, &["security_opt"]));
        assert!(opts.contains("no-new-privileges:true"), "{name}: {opts}");
    }
    assert_eq!(services.len(), 3, "gateway, assistant, redis");
    let gateway = at(&doc, &["services", "gateway"]);
    let mounts = at(gateway, &["volumes"])
        .as_sequence()
        .expect("gateway volumes");
    let policies = mounts
        .iter()
        .find(|m| at(m, &["target"]) == &Value::from("/etc/moltgate/policies"))
        .expect("policies mounted");
    assert_eq!(at(policies, &["source"]), &Value::from("../policies"));
    assert_eq!(at(policies, &["read_only"]), &Value::Bool(true));
    assert_eq!(
        at(&doc, &["services", "assistant", "command"])[0],
        Value::from("assistant")
    );
    let stop = seconds(&text(at(gateway, &["stop_grace_period"])));
    let (grace, timeout) = shutdown_of(&read(&deploy("moltgate.yaml")));
    assert!(
        stop > grace + timeout,
        "stop_grace_period {stop}s must exceed {grace}s + {timeout}s"
    );
}

/// `shutdown.grace_period` and `shutdown.timeout` of a moltgate config, in
/// seconds (the gateway's defaults, 5s and 5s, where absent).
fn shutdown_of(config: &str) -> (u64, u64) {
    let doc: Value = serde_yaml_ng::from_str(config).expect("moltgate config");
    let get = |k: &str| match at(&doc, &["shutdown", k]) {
        Value::Null => 5,
        v => seconds(&text(v)),
    };
    (get("grace_period"), get("timeout"))
}

// -------------------------------------------------------------- Kubernetes

fn k8s_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy("k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn k8s_objects() -> Vec<Value> {
    k8s_files()
        .iter()
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .flat_map(|p| yaml_docs(p))
        .collect()
}

fn k8s_object(kind: &str, name: &str) -> Value {
    k8s_objects()
        .into_iter()
        .find(|o| {
            at(o, &["kind"]) == &Value::from(kind)
                && at(o, &["metadata", "name"]) == &Value::from(name)
        })
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/k8s"))
}

#[test]
fn k8s_manifests_pass_kubernetes_validate_strict() {
    let manifests: Vec<PathBuf> = k8s_files()
        .into_iter()
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    let validator = checker("kubernetes-validate");
    // The oldest and the newest Kubernetes whose schemas it ships.
    for version in ["1.30.0", "1.37.0"] {
        let out = assert_ok(
            Command::new(&validator)
                .args(["--strict", "-k", version])
                .args(&manifests),
        );
        assert!(!out.contains("WARN") && !out.contains("ERROR"), "{out}");
        assert_eq!(
            out.matches(" passed for resource ").count(),
            k8s_objects().len(),
            "{out}"
        );
    }
    let broken_dir = tempfile::tempdir().unwrap();
    let broken = broken_dir.path().join("deployment.yaml");
    std::fs::write(
        &broken,
        read(&deploy("k8s/deployment.yaml")).replace(
            "privileged: false",
            "privileged: false\n            noSuchField: true",
        ),
    )
    .unwrap();
    let out = run(Command::new(&validator).arg("--strict").arg(&broken));
    assert!(!out.status.success(), "--strict accepted an unknown field");

    // kustomization.yaml names every manifest.
    let kustomization = yaml(&deploy("k8s/kustomization.yaml"));
    let listed: BTreeSet<String> = at(&kustomization, &["resources"])
        .as_sequence()
        .unwrap()
        .iter()
        .map(text)
        .collect();
    let present: BTreeSet<String> = manifests
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, present);
}

#[test]
fn k8s_deployment_is_hardened_probed_and_drains_in_time() {
    let deployment = k8s_object("Deployment", "moltgate");
    let pod = at(&deployment, &["spec", "template", "spec"]);
    assert_eq!(
        at(pod, &["securityContext", "runAsNonRoot"]),
        &Value::Bool(true)
    );
    assert_eq!(
        at(pod, &["securityContext", "seccompProfile", "type"]),
        &Value::from("RuntimeDefault")
    );
    let uid = at(pod, &["securityContext", "runAsUser"])
        .as_u64()
        .expect("runAsUser");
    assert!(uid >= 10_000);
    let containers = at(pod, &["containers"]).as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = at(c, &["securityContext"]);
    assert_eq!(at(sc, &["runAsNonRoot"]), &Value::Bool(true));
    assert_eq!(at(sc, &["readOnlyRootFilesystem"]), &Value::Bool(true));
    assert_eq!(at(sc, &["allowPrivilegeEscalation"]), &Value::Bool(false));
    assert_eq!(
        at(sc, &["capabilities", "drop"]),
        &serde_yaml_ng::from_str::<Value>("[ALL]").unwrap()
    );
    assert_eq!(
        at(sc, &["seccompProfile", "type"]),
        &Value::from("RuntimeDefault")
    );
    assert_eq!(
        at(c, &["readinessProbe", "httpGet", "path"]),
        &Value::from("/readyz")
    );
    assert_eq!(
        at(c, &["livenessProbe", "httpGet", "path"]),
        &Value::from("/healthz")
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(at(c, &[probe, "httpGet", "port"]), &Value::from("admin"));
    }
    let admin = at(c, &["ports"])
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| at(p, &["name"]) == &Value::from("admin"))
        .expect("admin port");
    assert_eq!(at(admin, &["containerPort"]).as_u64(), Some(9090));

    // Mounts: policies as a directory, and no subPath anywhere (a subPath
    // mount never sees the kubelet's ..data swap).
    for m in at(c, &["volumeMounts"]).as_sequence().unwrap() {
        assert!(
            at(m, &["subPath"]).is_null() && at(m, &["subPathExpr"]).is_null(),
            "subPath in {m:?}"
        );
    }
    let config = text(at(
        &k8s_object("ConfigMap", "moltgate-config"),
        &["data", "moltgate.yaml"],
    ));
    let policies_dir = text(at(
        &serde_yaml_ng::from_str::<Value>(&config).unwrap(),
        &["policies"],
    ));
    let mounted = at(c, &["volumeMounts"])
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| at(m, &["mountPath"]) == &Value::from(policies_dir.as_str()))
        .expect("policies directory mounted");
    let volume = at(pod, &["volumes"])
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| at(v, &["name"]) == at(mounted, &["name"]))
        .unwrap();
    assert_eq!(
        at(volume, &["configMap", "name"]),
        &Value::from("moltgate-policies")
    );
    let run_dir = at(c, &["volumeMounts"])
        .as_sequence()
        .unwrap()
        .iter()
        .any(|m| at(m, &["mountPath"]) == &Value::from("/run/moltgate"));
    assert!(run_dir, "a writable /run/moltgate");

    let (grace, timeout) = shutdown_of(&config);
    let termination = at(pod, &["terminationGracePeriodSeconds"])
        .as_u64()
        .unwrap();
    assert!(
        termination > grace + timeout,
        "terminationGracePeriodSeconds {termination} must exceed {grace} + {timeout}"
    );
}

#[test]
fn k8s_service_hpa_pdb_and_network_policy() {
    let hpa = k8s_object("HorizontalPodAutoscaler", "moltgate");
    assert_eq!(at(&hpa, &["apiVersion"]), &Value::from("autoscaling/v2"));
    assert_eq!(
        at(&hpa, &["spec", "metrics"])[0]["resource"]["name"],
        Value::from("cpu")
    );
    assert_eq!(
        at(&hpa, &["spec", "scaleTargetRef", "name"]),
        &Value::from("moltgate")
    );
    let pdb = k8s_object("PodDisruptionBudget", "moltgate");
    assert_eq!(at(&pdb, &["apiVersion"]), &Value::from("policy/v1"));
    let service = k8s_object("Service", "moltgate");
    assert_eq!(
        at(&service, &["spec", "ports"])[0]["targetPort"],
        Value::from("https")
    );

    let np = k8s_object("NetworkPolicy", "moltgate");
    let ingress = at(&np, &["spec", "ingress"]).as_sequence().unwrap();
    let rule_for = |port: u64| {
        ingress
            .iter()
            .find(|r| {
                at(r, &["ports"])
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .any(|p| at(p, &["port"]).as_u64() == Some(port))
            })
            .unwrap_or_else(|| panic!("no ingress rule for {port}"))
    };
    assert!(
        at(rule_for(8443), &["from"]).is_null(),
        "the public port is open to all"
    );
    let from = &at(rule_for(9090), &["from"]).as_sequence().unwrap()[..];
    assert_eq!(from.len(), 1);
    assert_eq!(
        at(
            &from[0],
            &[
                "namespaceSelector",
                "matchLabels",
                "kubernetes.io/metadata.name"
            ]
        ),
        &Value::from("monitoring")
    );
    let egress_ports: BTreeSet<u64> = at(&np, &["spec", "egress"])
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|r| {
            at(r, &["ports"])
                .as_sequence()
                .unwrap()
                .iter()
                .filter_map(|p| at(p, &["port"]).as_u64())
        })
        .collect();
    // The AI cluster, Redis, DNS, platform APIs: nothing else.
    assert_eq!(egress_ports, BTreeSet::from([53, 443, 6379, 50051]));
    let types = format!("{:?}", at(&np, &["spec", "policyTypes"]));
    assert!(
        types.contains("Ingress") && types.contains("Egress"),
        "{types}"
    );
}

/// The policies ConfigMap is policies/, file for file.
/// `UPDATE_DEPLOY=1 cargo test --test deploy` rewrites it from policies/.
#[test]
fn k8s_policies_configmap_is_policies_dir() {
    let path = deploy("k8s/policies-configmap.yaml");
    let mut files: Vec<(String, String)> = std::fs::read_dir(root().join("policies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                read(&p),
            )
        })
        .collect();
    files.sort();
    if std::env::var_os("UPDATE_DEPLOY").is_some() {
        std::fs::write(&path, policies_configmap(&files)).unwrap();
    }
    let data = at(&yaml(&path), &["data"]).clone();
    let shipped: Vec<(String, String)> = data
        .as_mapping()
        .expect("data")
        .iter()
        .map(|(k, v)| (text(k), text(v)))
        .collect();
    assert!(
        shipped == files,
        "deploy/k8s/policies-configmap.yaml differs from policies/: run `UPDATE_DEPLOY=1 cargo test --test deploy k8s_policies` to regenerate it"
    );
}

fn policies_configmap(files: &[(String, String)]) -> String {
    let mut out = String::from(
        "# GENERATED from policies/ by tests/deploy.rs (UPDATE_DEPLOY=1 cargo test --test deploy);\n\
         # the test fails when this copy and policies/ differ. These are the demo policies:\n\
         # edit ip_whitelist, jwt_validation and the rest for your deployment, e.g.\n\
         #   kubectl -n moltgate create configmap moltgate-policies --from-file=policies/ \\\n\
         #     --dry-run=client -o yaml | kubectl apply -f -\n\
         # Mounted as a directory at /etc/moltgate/policies (never with subPath): the\n\
         # kubelet swaps its ..data symlink atomically and the gateway reloads within a\n\
         # second; a set that does not compile is refused and the old one keeps serving.\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: moltgate-policies\n  namespace: moltgate\n\
         \x20 labels:\n    app.kubernetes.io/name: moltgate\n    app.kubernetes.io/component: gateway\ndata:\n",
    );
    for (name, body) in files {
        assert!(
            body.ends_with('\n') && !body.ends_with("\n\n"),
            "{name}: a literal block keeps exactly one final newline"
        );
        out.push_str(&format!("  {name}: |\n"));
        for line in body.lines() {
            if line.is_empty() {
                out.push('\n');
            } else {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    out
}

// ------------------------------------------------------------ moltgate check

/// Runs `moltgate check` on a config laid out as in its container, under a
/// temporary directory: `config` is written at `at_path`, every path it names
/// under /etc/moltgate/ and /run/moltgate/ is moved under that directory, and
/// each `(container directory, source directory)` of `files` is copied there.
fn check_config(
    config: &str,
    at_path: &str,
    files: &[(&str, &Path)],
    env: &[(&str, &str)],
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let inside = |p: &str| dir.path().join(p.trim_start_matches('/'));
    let base = dir.path().display().to_string();
    let config = config
        .replace("/etc/moltgate/", &format!("{base}/etc/moltgate/"))
        .replace("/run/moltgate/", &format!("{base}/run/moltgate/"));
    std::fs::create_dir_all(inside("/run/moltgate")).unwrap();
    for (target, source) in files {
        std::fs::create_dir_all(inside(target)).unwrap();
        for entry in std::fs::read_dir(source).unwrap() {
            let p = entry.unwrap().path();
            std::fs::copy(&p, inside(target).join(p.file_name().unwrap())).unwrap();
        }
    }
    let file = inside(at_path);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, config).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("check").arg("-c").arg(&file).env_clear();
    cmd.env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd.envs(env.iter().copied());
    assert_ok(&mut cmd)
}

const SECRETS: [(&str, &str); 3] = [
    ("MOLTGATE_ADMIN_TOKEN", "0f3c6a2b9d8e7f6a5b4c3d2e1f0a9b8c"),
    (
        "MOLTGATE_JWT_SECRET",
        "7d1e9c4b2a8f6e3d5c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f",
    ),
    ("MOLTGATE_REDIS_URL", "redis://127.0.0.1:6379/0"),
];

#[test]
fn deploy_configs_pass_moltgate_check() {
    // compose and the image: deploy/moltgate.yaml at /etc/moltgate/moltgate.yaml
    // beside policies/; development certificates made under /run/moltgate.
    let compose = read(&deploy("moltgate.yaml"));
    let policies = root().join("policies");
    let out = check_config(
        &compose,
        "/etc/moltgate/moltgate.yaml",
        &[("/etc/moltgate/policies", &policies)],
        &SECRETS[..2],
    );
    assert!(out.starts_with("ok:"), "{out}");

    // Kubernetes: configmap.yaml's moltgate.yaml, the policies ConfigMap's
    // files, and a certificate in the moltgate-tls Secret's file names.
    let k8s = text(at(
        &k8s_object("ConfigMap", "moltgate-config"),
        &["data", "moltgate.yaml"],
    ));
    let policies = tempfile::tempdir().unwrap();
    for (name, body) in at(&k8s_object("ConfigMap", "moltgate-policies"), &["data"])
        .as_mapping()
        .unwrap()
    {
        std::fs::write(policies.path().join(text(name)), text(body)).unwrap();
    }
    let tls = tempfile::tempdir().unwrap();
    assert_ok(Command::new(BIN).args(["certs", "dev"]).arg(tls.path()));
    std::fs::rename(tls.path().join("server.crt"), tls.path().join("tls.crt")).unwrap();
    std::fs::rename(tls.path().join("server.key"), tls.path().join("tls.key")).unwrap();
    let files = [
        ("/etc/moltgate/policies", policies.path()),
        ("/etc/moltgate/tls", tls.path()),
    ];
    let out = check_config(&k8s, "/etc/moltgate/config/moltgate.yaml", &files, &SECRETS);
    assert!(out.starts_with("ok:"), "{out}");
}

// ----------------------------------------------------------------- systemd

#[test]
fn systemd_unit_verifies_and_exposure_is_at_most_2() {
    let unit = read(&deploy("systemd/moltgate.service"));
    for needed in [
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "ReadWritePaths=/run/moltgate",
        "RuntimeDirectory=moltgate",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(
            unit.lines().any(|l| l == needed),
            "moltgate.service lacks {needed}"
        );
    }
    assert!(unit.lines().any(|l| l.starts_with("SystemCallFilter=")));
    let stop = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .map(seconds)
        .expect("TimeoutStopSec");
    for config in [
        read(&deploy("moltgate.yaml")),
        text(at(
            &k8s_object("ConfigMap", "moltgate-config"),
            &["data", "moltgate.yaml"],
        )),
    ] {
        let (grace, timeout) = shutdown_of(&config);
        assert!(
            stop > grace + timeout,
            "TimeoutStopSec {stop}s must exceed {grace}s + {timeout}s"
        );
    }

    // verify wants ExecStart's binary to exist: point it at the one just built.
    let exec = "/usr/local/bin/moltgate";
    assert!(unit.contains(&format!("ExecStart={exec} run ")));
    let dir = tempfile::tempdir().unwrap();
    let installed = unit.replace(&format!("={exec} "), &format!("={BIN} "));
    let plain = dir.path().join("moltgate.service");
    std::fs::write(&plain, &installed).unwrap();
    // The same file as the template of the upgrade's two slots (README.md).
    std::fs::write(dir.path().join("moltgate@.service"), &installed).unwrap();
    std::os::unix::fs::symlink("moltgate@.service", dir.path().join("moltgate@a.service")).unwrap();
    let analyze = checker("systemd-analyze");
    for name in ["moltgate.service", "moltgate@a.service"] {
        let out = assert_ok(
            Command::new(&analyze)
                .arg("verify")
                .arg(dir.path().join(name))
                .env("SYSTEMD_LOG_COLOR", "0"),
        );
        let ours: Vec<&str> = out.lines().filter(|l| l.contains("moltgate")).collect();
        assert!(ours.is_empty(), "systemd-analyze verify {name}:\n{out}");
    }

    let out = assert_ok(
        Command::new(&analyze)
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&plain),
    );
    let score: f64 = out
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for moltgate.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    println!("systemd-analyze security exposure: {score}");
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{out}");
}

// -------------------------------------------------------------- Prometheus

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let dir = deploy("prometheus");
    let promtool = checker("promtool");
    let out = assert_ok(Command::new(&promtool).current_dir(&dir).args([
        "check",
        "rules",
        "alerts.yaml",
    ]));
    assert!(out.contains("SUCCESS"), "{out}");
    let out = assert_ok(Command::new(&promtool).current_dir(&dir).args([
        "test",
        "rules",
        "alerts_test.yaml",
    ]));
    assert!(out.contains("SUCCESS"), "{out}");

    // Names, labels and annotations, and the brief's numbers as written.
    let rules = alert_rules();
    for rule in &rules {
        let name = text(at(rule, &["alert"]));
        assert!(
            name.starts_with("Moltgate") && !name.contains('_'),
            "CamelCase Moltgate… name: {name}"
        );
        let severity = text(at(rule, &["labels", "severity"]));
        assert!(
            ["critical", "warning"].contains(&severity.as_str()),
            "{name}: severity {severity}"
        );
        for a in ["summary", "description"] {
            assert!(
                !text(at(rule, &["annotations", a])).is_empty(),
                "{name}: {a}"
            );
        }
    }
    let expr = |name: &str| {
        let rule = rules
            .iter()
            .find(|r| at(r, &["alert"]) == &Value::from(name))
            .unwrap_or_else(|| panic!("no alert {name}"));
        (
            text(at(rule, &["expr"])),
            at(rule, &["for"]).as_str().map(seconds).unwrap_or(0),
        )
    };
    let (down, for_down) = expr("MoltgateTargetDown");
    assert!(
        down.contains("up{job=\"moltgate\"} == 0") && for_down == 3 * 15,
        "3 scrapes of 15s"
    );
    let (latency, _) = expr("MoltgateLatencyHigh");
    assert!(
        latency.contains("histogram_quantile(0.99") && latency.contains("> 0.5"),
        "{latency}"
    );
    let (cpu, for_cpu) = expr("MoltgateHighCpu");
    assert!(
        cpu.contains("moltgate_cpu_cores") && cpu.contains("> 0.8") && for_cpu == 600,
        "{cpu}"
    );
    let (success, _) = expr("MoltgateSuccessRateLow");
    assert!(success.contains("< 0.95"), "{success}");
    for name in [
        "MoltgatePolicyReloadFailed",
        "MoltgateNoHealthyUpstream",
        "MoltgateSharedTierDown",
    ] {
        expr(name);
    }

    // Every alert has unit tests where it fires and where it stays quiet.
    let tests = yaml(&dir.join("alerts_test.yaml"));
    let cases: Vec<&Value> = at(&tests, &["tests"])
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|t| {
            at(t, &["alert_rule_test"])
                .as_sequence()
                .into_iter()
                .flatten()
        })
        .collect();
    for rule in &rules {
        let name = at(rule, &["alert"]);
        let of: Vec<_> = cases
            .iter()
            .filter(|c| at(c, &["alertname"]) == name)
            .collect();
        let firing = of.iter().any(|c| {
            at(c, &["exp_alerts"])
                .as_sequence()
                .is_some_and(|a| !a.is_empty())
        });
        let quiet = of.iter().any(|c| {
            at(c, &["exp_alerts"])
                .as_sequence()
                .is_some_and(|a| a.is_empty())
        });
        assert!(
            firing && quiet,
            "{name:?} needs a test where it fires and one where it stays quiet"
        );
    }
}

fn alert_rules() -> Vec<Value> {
    let doc = yaml(&deploy("prometheus/alerts.yaml"));
    at(&doc, &["groups"])
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| at(g, &["rules"]).as_sequence().unwrap().clone())
        .collect()
}

// ------------------------------------------------- metric names in queries

/// The metric names a PromQL expression selects: identifiers that are not
/// functions, keywords, label names (in braces or grouping lists), strings,
/// numbers, durations or Grafana variables.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Aggregations too: in `sum by (x) (...)` the call's parenthesis comes later.
    const KEYWORDS: [&str; 18] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let word_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let (mut i, mut grouping) = (0, false);
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        i += 1;
        match c {
            '"' | '\'' => i = skip_string(&chars, start),
            '{' | '[' => i = skip_to(&chars, start, if c == '{' { '}' } else { ']' }),
            '(' if grouping => i = skip_to(&chars, start, ')'),
            c if c.is_ascii_digit() || c == '.' || c == '$' => {
                while i < chars.len() && (word_char(chars[i]) || chars[i] == '.') {
                    i += 1;
                }
            }
            c if word_char(c) => {
                while i < chars.len() && word_char(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let lower = word.to_ascii_lowercase();
                let call = chars[i..].iter().find(|c| !c.is_whitespace()) == Some(&'(');
                grouping = GROUPING.contains(&lower.as_str());
                if !grouping && !call && !KEYWORDS.contains(&lower.as_str()) {
                    names.insert(word);
                }
                continue;
            }
            _ => {}
        }
        if !c.is_whitespace() {
            grouping = false;
        }
    }
    names
}

/// The index after the string that starts at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let mut i = start + 1;
    while i < chars.len() && chars[i] != chars[start] {
        i += if chars[i] == '\\' { 2 } else { 1 };
    }
    i + 1
}

/// The index after the `close` that ends the bracket at `start` (strings inside skipped).
fn skip_to(chars: &[char], start: usize, close: char) -> usize {
    let mut i = start + 1;
    while i < chars.len() && chars[i] != close {
        i = if chars[i] == '"' {
            skip_string(chars, i)
        } else {
            i + 1
        };
    }
    i + 1
}

/// Every series name the gateway's /metrics can show, plus Prometheus's `up`.
fn exported() -> BTreeSet<String> {
    let families = moltgate::observe::Metrics::new().names();
    let mut names: BTreeSet<String> = families.iter().cloned().collect();
    for family in &families {
        for suffix in ["_bucket", "_sum", "_count"] {
            names.insert(format!("{family}{suffix}"));
        }
    }
    names.insert("up".into());
    names
}

fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(&deploy("grafana/moltgate.json"))).expect("dashboard JSON");
    let mut queries = Vec::new();
    let mut panels: Vec<&serde_json::Value> =
        dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = format!("{} / {}", panel["title"], target["refId"]);
            queries.push((title, target["expr"].as_str().expect("expr").to_string()));
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str() {
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|q| q.rsplit_once(','))
                .map(|(m, _)| m)
                .expect("label_values(metric, label)");
            queries.push((format!("variable {}", var["name"]), inner.to_string()));
        }
    }
    queries
}

#[test]
fn dashboard_and_alerts_query_only_exported_metrics() {
    let exported = exported();
    for name in [
        "moltgate_requests_total",
        "moltgate_message_latency_seconds",
        "moltgate_cpu_cores",
        "process_cpu_seconds_total",
    ] {
        assert!(
            exported.contains(name),
            "Metrics::names() lacks {name}: {exported:?}"
        );
    }
    let mut queried = BTreeSet::new();
    let alerts = alert_rules()
        .iter()
        .map(|r| {
            (
                format!("alert {}", text(at(r, &["alert"]))),
                text(at(r, &["expr"])),
            )
        })
        .collect::<Vec<_>>();
    for (what, expr) in dashboard_queries().into_iter().chain(alerts) {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{what}: no metric found in {expr}");
        for name in names {
            assert!(
                exported.contains(&name),
                "{what} queries {name}, which the gateway does not export"
            );
            queried.insert(name);
        }
    }
    // What the dashboard must show (issue 13).
    for needed in [
        "moltgate_requests_total",
        "moltgate_message_latency_seconds_bucket",
        "moltgate_rejections_total",
        "moltgate_upstream_node_healthy",
        "moltgate_dlp_findings_total",
        "moltgate_policy_reload_total",
        "moltgate_context_entries",
        "moltgate_shared_up",
        "moltgate_shared_ops_total",
        "moltgate_shared_seconds_bucket",
    ] {
        assert!(
            queried.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}

/// Every dashboard query is valid PromQL: promtool checks them as recording rules.
#[test]
fn dashboard_queries_are_valid_promql() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(&deploy("grafana/moltgate.json"))).unwrap();
    let mut ids = BTreeSet::new();
    let panels = dashboard["panels"].as_array().unwrap();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id {}",
            p["id"]
        );
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in dashboard_queries().iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard.yaml"), rules).unwrap();
    assert_ok(
        Command::new(checker("promtool"))
            .current_dir(dir.path())
            .args(["check", "rules", "dashboard.yaml"]),
    );
}

#[test]
fn metric_name_extraction() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"sum by (job, le) (rate(a_bucket{x="y{z}", q=~"$v"}[$__rate_interval])) / on (job) group_left (i) b > 0.5"#
        ),
        ["a_bucket", "b"]
    );
    assert_eq!(
        names(r#"absent(up{job="moltgate"}) or c offset 15m unless d == bool 1"#),
        ["c", "d", "up"]
    );
    assert_eq!(
        names("histogram_quantile(0.99, sum without (instance) (rate(e[5m]))) and 1e3 < f"),
        ["e", "f"]
    );
}
