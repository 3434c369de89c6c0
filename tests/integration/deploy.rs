//! The deployment artifacts (`deploy/`, `systemd/`, `Dockerfile`): they
//! parse, they agree with each other and with the binary, the hardening
//! holds, and the binary keeps the container image's contract (uid 65532,
//! only the state directory writable).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::BufRead as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use promql_parser::parser::{Expr, VectorSelector};
use promql_parser::util::{walk_expr, ExprVisitor};
use saphyr::{LoadableYamlNode as _, Scalar, Yaml};
use serde_json::Value;

use crate::common::*;

/// The image's user and group (distroless `nonroot`).
const IMAGE_UID: u32 = 65532;
/// Where the image, the unit and the StatefulSet keep the state.
const STATE_DIR: &str = "/var/lib/auditrelay";
/// Where they expect the configuration.
const CONFIG_PATH: &str = "/etc/auditrelay/auditrelay.toml";

fn repo(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    let path = repo(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// Readers
// ---------------------------------------------------------------------------

/// Every document of a YAML file, as JSON values (mapping keys must be
/// strings, as in every file here).
fn yaml_docs(relative: &str) -> Vec<Value> {
    let text = read(relative);
    let docs = Yaml::load_from_str(&text).unwrap_or_else(|e| panic!("{relative}: {e}"));
    docs.iter()
        .map(|doc| yaml_to_json(doc, relative))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn yaml_to_json(node: &Yaml, file: &str) -> Value {
    match node {
        Yaml::Value(Scalar::Null) => Value::Null,
        Yaml::Value(Scalar::Boolean(b)) => Value::Bool(*b),
        Yaml::Value(Scalar::Integer(i)) => Value::from(*i),
        Yaml::Value(Scalar::FloatingPoint(f)) => Value::from(f.into_inner()),
        Yaml::Value(Scalar::String(s)) => Value::String(s.to_string()),
        Yaml::Sequence(items) => {
            Value::Array(items.iter().map(|i| yaml_to_json(i, file)).collect())
        }
        Yaml::Mapping(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::Value(Scalar::String(s)) => s.to_string(),
                        other => panic!("{file}: a mapping key that is not a string: {other:?}"),
                    };
                    (key, yaml_to_json(v, file))
                })
                .collect(),
        ),
        Yaml::Tagged(_, inner) => yaml_to_json(inner, file),
        other => panic!("{file}: unsupported YAML node {other:?}"),
    }
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {value:#}"))
}

fn toml_table(text: &str, what: &str) -> toml::Table {
    text.parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("{what} is not TOML: {e}"))
}

fn toml_str<'a>(table: &'a toml::Table, path: &str) -> &'a str {
    let mut value: Option<&toml::Value> = None;
    for part in path.split('.') {
        value = match value {
            None => table.get(part),
            Some(v) => v.get(part),
        };
    }
    value
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("no string at {path}"))
}

fn toml_duration(table: &toml::Table, path: &str) -> Duration {
    humantime::parse_duration(toml_str(table, path))
        .unwrap_or_else(|e| panic!("{path} is not a duration: {e}"))
}

/// The `host:port` an `[http] listen` value names.
fn listen_of(table: &toml::Table) -> std::net::SocketAddr {
    toml_str(table, "http.listen")
        .parse()
        .expect("http.listen is an address")
}

/// The `[sources.*]` tables.
fn sources(table: &toml::Table) -> Vec<(&String, &toml::Table)> {
    table["sources"]
        .as_table()
        .expect("[sources]")
        .iter()
        .map(|(id, t)| (id, t.as_table().expect("a source table")))
        .collect()
}

/// The metric names the daemon exposes (deploy/metrics.txt).
fn metric_names() -> BTreeSet<String> {
    read("deploy/metrics.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// Every `auditrelay_*` word in `text`.
fn auditrelay_words(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut found = BTreeSet::new();
    let mut i = 0;
    while let Some(at) = text[i..].find("auditrelay_") {
        let start = i + at;
        let mut end = start + "auditrelay_".len();
        while end < bytes.len() && ident(bytes[end]) {
            end += 1;
        }
        if start == 0 || !ident(bytes[start - 1]) {
            found.insert(text[start..end].to_string());
        }
        i = end;
    }
    found
}

/// Parses PromQL; panics with the expression on error.
fn promql(expr: &str, what: &str) -> Expr {
    promql_parser::parser::parse(expr)
        .unwrap_or_else(|e| panic!("{what}: not valid PromQL ({e}): {expr}"))
}

/// The metric names an expression selects.
fn selected_metrics(expr: &Expr) -> BTreeSet<String> {
    struct Names(BTreeSet<String>);
    impl ExprVisitor for Names {
        type Error = std::convert::Infallible;
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Self::Error> {
            let selector: Option<&VectorSelector> = match expr {
                Expr::VectorSelector(vs) => Some(vs),
                Expr::MatrixSelector(ms) => Some(&ms.vs),
                _ => None,
            };
            if let Some(name) = selector.and_then(|vs| vs.name.clone()) {
                self.0.insert(name);
            }
            Ok(true)
        }
    }
    let mut names = Names(BTreeSet::new());
    let _ = walk_expr(&mut names, expr);
    names.0
}

/// Grafana's variables replaced by values PromQL accepts.
fn grafana_to_promql(expr: &str) -> String {
    let replaced = expr
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$instance", ".*")
        .replace("$source", ".*")
        .replace("$sink", ".*");
    assert!(
        !replaced.contains('$'),
        "an unknown Grafana variable in {expr}"
    );
    replaced
}

/// A systemd unit file: (section, key, value) in order.
fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut entries = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        assert!(!line.ends_with('\\'), "continuation lines: {line}");
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line}"));
        entries.push((section.clone(), key.trim().into(), value.trim().into()));
    }
    entries
}

fn unit_values<'a>(entries: &'a [(String, String, String)], key: &str) -> Vec<&'a str> {
    entries
        .iter()
        .filter(|(_, k, _)| k == key)
        .map(|(_, _, v)| v.as_str())
        .collect()
}

fn unit_value<'a>(entries: &'a [(String, String, String)], key: &str) -> &'a str {
    match unit_values(entries, key).as_slice() {
        [one] => one,
        other => panic!("expected one {key}=, found {other:?}"),
    }
}

/// A Dockerfile as (instruction, arguments), continuation lines joined and
/// comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, rest) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        instructions.push((keyword.to_uppercase(), rest.trim().to_string()));
        current.clear();
    }
    assert!(current.is_empty(), "Dockerfile ends inside a continuation");
    instructions
}

/// An exec-form argument list (`["a", "b"]`).
fn exec_form(args: &str, what: &str) -> Vec<String> {
    serde_json::from_str(args)
        .unwrap_or_else(|e| panic!("{what} is not in exec form ({e}): {args}"))
}

/// The path of a tool, or a failure saying how to get it.
fn require_tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is not installed: install the Debian package {package} (scripts/test does)")
        })
}

fn require_root(why: &str) {
    let out = Command::new("id").arg("-u").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "this test must run as root: {why}"
    );
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `auditrelay check --offline` on `text` (written to a temp file).
fn check_offline(text: &str, env: &HashMap<&str, &str>, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("auditrelay.toml");
    std::fs::write(&config, text).unwrap();
    let (code, out, err) = run_cli(
        &["check", "--offline", "--config", config.to_str().unwrap()],
        env,
    );
    assert_eq!(
        code, 0,
        "{what} fails `auditrelay check --offline`:\n{out}{err}"
    );
}

/// Kills a child on drop (tests that fail half-way leave nothing behind).
struct Reaped(Option<Child>);

impl Reaped {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// YAML, Kubernetes
// ---------------------------------------------------------------------------

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[test]
fn every_yaml_file_under_deploy_parses() {
    let mut files = Vec::new();
    yaml_files(&repo("deploy"), &mut files);
    let names: BTreeSet<String> = files
        .iter()
        .map(|p| {
            p.strip_prefix(repo(""))
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for expected in [
        "deploy/compose.yaml",
        "deploy/kubernetes/statefulset.yaml",
        "deploy/kubernetes/kustomization.yaml",
        "deploy/prometheus/alerts.yaml",
        "deploy/prometheus/alerts.test.yaml",
    ] {
        assert!(
            names.contains(expected),
            "{expected} not found in {names:?}"
        );
    }
    for name in &names {
        let docs = yaml_docs(name);
        assert!(!docs.is_empty(), "{name} has no document");
        for doc in &docs {
            assert!(doc.is_object(), "{name}: a document is not a mapping");
        }
    }
    // Multi-document files and duplicate keys are handled as Kubernetes does.
    let text = "a: 1\n---\nb: 2\n";
    assert_eq!(Yaml::load_from_str(text).unwrap().len(), 2);
    assert!(Yaml::load_from_str("a: 1\na: 2\n").is_err());
}

/// Every Kubernetes object under deploy/kubernetes, by kind.
fn kubernetes_objects() -> BTreeMap<String, Value> {
    let mut objects = BTreeMap::new();
    let mut files = Vec::new();
    yaml_files(&repo("deploy/kubernetes"), &mut files);
    for file in files {
        let relative = file
            .strip_prefix(repo(""))
            .unwrap()
            .to_string_lossy()
            .into_owned();
        for doc in yaml_docs(&relative) {
            let kind = str_at(&doc, "/kind").to_string();
            assert!(
                doc.pointer("/metadata/namespace").is_none(),
                "{relative}: {kind} names a namespace; the manifests are namespace-agnostic"
            );
            assert!(
                objects.insert(kind.clone(), doc).is_none(),
                "two objects of kind {kind}"
            );
        }
    }
    objects
}

#[test]
fn kubernetes_manifests_hold_the_expected_objects() {
    let objects = kubernetes_objects();
    let kinds: BTreeSet<&str> = objects.keys().map(String::as_str).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ConfigMap",
            "Kustomization",
            "PodDisruptionBudget",
            "Secret",
            "Service",
            "ServiceMonitor",
            "StatefulSet",
        ])
    );
    for (kind, api) in [
        ("StatefulSet", "apps/v1"),
        ("ConfigMap", "v1"),
        ("Secret", "v1"),
        ("Service", "v1"),
        ("ServiceMonitor", "monitoring.coreos.com/v1"),
        ("PodDisruptionBudget", "policy/v1"),
    ] {
        assert_eq!(str_at(&objects[kind], "/apiVersion"), api, "{kind}");
    }

    // kustomization.yaml lists every manifest but the Secret (an apply
    // would overwrite the real token with the placeholder).
    let resources: BTreeSet<&str> = objects["Kustomization"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for resource in &resources {
        assert!(
            repo("deploy/kubernetes").join(resource).is_file(),
            "kustomization.yaml lists {resource}, which does not exist"
        );
    }
    assert!(!resources.contains("secret.yaml"));
    assert_eq!(resources.len(), 5, "{resources:?}");

    // Selectors match the pod.
    let pod_labels = &objects["StatefulSet"]["spec"]["template"]["metadata"]["labels"];
    for (kind, pointer) in [
        ("StatefulSet", "/spec/selector/matchLabels"),
        ("Service", "/spec/selector"),
        ("PodDisruptionBudget", "/spec/selector/matchLabels"),
    ] {
        let selector = objects[kind].pointer(pointer).unwrap().as_object().unwrap();
        for (k, v) in selector {
            assert_eq!(&pod_labels[k], v, "{kind} selector {k}");
        }
    }
    let service_labels = objects["Service"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    for (k, v) in objects["ServiceMonitor"]["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            service_labels.get(k),
            Some(v),
            "ServiceMonitor selector {k}"
        );
    }
    // The singleton may be evicted: a PDB that forbids it blocks drains.
    let pdb = &objects["PodDisruptionBudget"]["spec"];
    assert_eq!(pdb["maxUnavailable"], 1, "{pdb:#}");
    assert!(pdb.get("minAvailable").is_none());
}

/// The configuration embedded in the ConfigMap.
fn configmap_toml(objects: &BTreeMap<String, Value>) -> (String, String) {
    let data = objects["ConfigMap"]["data"].as_object().unwrap();
    assert_eq!(data.len(), 1, "one key in the ConfigMap");
    let (key, text) = data.iter().next().unwrap();
    (key.clone(), text.as_str().unwrap().to_string())
}

#[test]
fn the_statefulset_runs_one_hardened_replica_wired_to_its_config() {
    let objects = kubernetes_objects();
    let sts = &objects["StatefulSet"];
    let spec = &sts["spec"];
    assert_eq!(spec["replicas"], 1, "one process per state file");
    let pod = &spec["template"]["spec"];
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let (config_key, config_text) = configmap_toml(&objects);
    let config = toml_table(&config_text, "the ConfigMap's config");

    // Hardening, pod and container.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], IMAGE_UID);
    assert_eq!(pod["securityContext"]["fsGroup"], IMAGE_UID);
    assert_eq!(
        str_at(pod, "/securityContext/seccompProfile/type"),
        "RuntimeDefault"
    );
    assert_eq!(pod["automountServiceAccountToken"], false);
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], IMAGE_UID);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(sc["capabilities"].get("add").is_none());
    assert_eq!(str_at(sc, "/seccompProfile/type"), "RuntimeDefault");
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                c["resources"][kind][resource].is_string(),
                "resources.{kind}.{resource}"
            );
        }
    }

    // Mounts: name -> path.
    let mounts: HashMap<&str, &str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (str_at(m, "/name"), str_at(m, "/mountPath")))
        .collect();
    let volumes: HashMap<&str, &Value> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (str_at(v, "/name"), v))
        .collect();

    // The state: a volumeClaimTemplate, mounted where state.path lives.
    let templates = spec["volumeClaimTemplates"].as_array().unwrap();
    assert_eq!(templates.len(), 1);
    let claim = str_at(&templates[0], "/metadata/name");
    let state_path = Path::new(toml_str(&config, "state.path"));
    assert_eq!(state_path.parent().unwrap(), Path::new(mounts[claim]));
    assert_eq!(mounts[claim], STATE_DIR);
    assert_eq!(
        str_at(&templates[0], "/spec/accessModes/0"),
        "ReadWriteOnce"
    );

    // The config: the ConfigMap's key, mounted where --config points.
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args, ["run", "--config", CONFIG_PATH]);
    let (config_volume, _) = volumes
        .iter()
        .find(|(_, v)| v.pointer("/configMap/name").is_some())
        .expect("a configMap volume");
    assert_eq!(
        str_at(volumes[config_volume], "/configMap/name"),
        str_at(&objects["ConfigMap"], "/metadata/name")
    );
    assert_eq!(
        Path::new(mounts[config_volume]).join(&config_key),
        Path::new(CONFIG_PATH)
    );

    // The token: the Secret's key, mounted where token_file points.
    let secret = &objects["Secret"];
    let (secret_volume, _) = volumes
        .iter()
        .find(|(_, v)| v.pointer("/secret/secretName").is_some())
        .expect("a secret volume");
    assert_eq!(
        str_at(volumes[secret_volume], "/secret/secretName"),
        str_at(secret, "/metadata/name")
    );
    let secret_keys: BTreeSet<&String> = secret["stringData"].as_object().unwrap().keys().collect();
    for (id, source) in sources(&config) {
        let token_file = Path::new(
            source
                .get("token_file")
                .and_then(toml::Value::as_str)
                .unwrap_or_else(|| panic!("source {id}: use token_file in Kubernetes")),
        );
        assert_eq!(
            token_file.parent().unwrap(),
            Path::new(mounts[secret_volume])
        );
        let key = token_file
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            secret_keys.contains(&key),
            "source {id}: no key {key} in the Secret"
        );
    }
    assert!(
        str_at(secret, "/stringData/asana-token").contains("REPLACE-ME"),
        "the Secret holds a placeholder"
    );

    // Probes: /healthz and /readyz on the port the config listens on, on
    // all interfaces (the kubelet connects to the pod IP).
    let listen = listen_of(&config);
    assert!(
        listen.ip().is_unspecified(),
        "[http] listen = {listen}: the kubelet cannot reach a loopback address"
    );
    let ports: HashMap<&str, u64> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (str_at(p, "/name"), p["containerPort"].as_u64().unwrap()))
        .collect();
    let probe_port = |probe: &str| -> u64 {
        let port = &c[probe]["httpGet"]["port"];
        port.as_u64()
            .or_else(|| port.as_str().map(|name| ports[name]))
            .unwrap_or_else(|| panic!("{probe} has no port"))
    };
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        assert_eq!(
            str_at(c, &format!("/{probe}/httpGet/path")),
            path,
            "{probe}"
        );
        assert_eq!(probe_port(probe), u64::from(listen.port()), "{probe} port");
    }
    // The Service and the ServiceMonitor reach the same port.
    let service_port = &objects["Service"]["spec"]["ports"][0];
    assert_eq!(
        ports[str_at(service_port, "/targetPort")],
        u64::from(listen.port())
    );
    assert_eq!(
        str_at(&objects["ServiceMonitor"], "/spec/endpoints/0/port"),
        str_at(service_port, "/name")
    );
    assert_eq!(
        str_at(&objects["ServiceMonitor"], "/spec/endpoints/0/path"),
        "/metrics"
    );

    // A clean stop fits in the grace period.
    let grace = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap());
    let drain = toml_duration(&config, "shutdown_grace");
    assert!(
        grace >= drain + Duration::from_secs(10),
        "terminationGracePeriodSeconds {grace:?} leaves no margin over shutdown_grace {drain:?}"
    );
}

#[test]
fn the_kubernetes_config_passes_check_offline() {
    let objects = kubernetes_objects();
    let (_, text) = configmap_toml(&objects);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("asana-token");
    std::fs::write(&token, TOKEN).unwrap();
    let text = text.replace(
        "/run/secrets/auditrelay/asana-token",
        token.to_str().unwrap(),
    );
    check_offline(&text, &HashMap::new(), "the ConfigMap's config");
}

// ---------------------------------------------------------------------------
// Container image, compose
// ---------------------------------------------------------------------------

#[test]
fn the_container_config_passes_check_offline() {
    let config = toml_table(&read("deploy/container.toml"), "deploy/container.toml");
    assert_eq!(
        Path::new(toml_str(&config, "state.path")).parent().unwrap(),
        Path::new(STATE_DIR)
    );
    assert!(listen_of(&config).ip().is_unspecified());
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("asana-token");
    std::fs::write(&token, TOKEN).unwrap();
    let text =
        read("deploy/container.toml").replace("/run/secrets/asana-token", token.to_str().unwrap());
    assert!(text.contains(token.to_str().unwrap()), "token_file moved");
    check_offline(&text, &HashMap::new(), "deploy/container.toml");
}

#[test]
fn the_dockerfile_builds_a_minimal_non_root_image() {
    let instructions = dockerfile();
    let froms: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert!(froms.len() >= 2, "a multi-stage build");
    let last = *froms.last().unwrap();
    let build = &instructions[..last];
    let runtime = &instructions[last..];
    let all = |stage: &[(String, String)], keyword: &str| -> Vec<String> {
        stage
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, a)| a.clone())
            .collect()
    };
    let one = |keyword: &str| -> String {
        match all(runtime, keyword).as_slice() {
            [a] => a.clone(),
            other => panic!("expected one {keyword} in the final stage, found {other:?}"),
        }
    };

    // The builder: the toolchain the crate needs, a locked release build.
    let args = all(build, "ARG").join(" ");
    let builder_rust = args
        .split_whitespace()
        .find_map(|a| a.strip_prefix("RUST_VERSION="))
        .expect("ARG RUST_VERSION=");
    let cargo_toml = toml_table(&read("Cargo.toml"), "Cargo.toml");
    let msrv = toml_str(&cargo_toml, "package.rust-version");
    let version = |v: &str| -> Vec<u32> { v.split('.').map(|n| n.parse().unwrap()).collect() };
    assert!(
        version(builder_rust) >= version(msrv),
        "builder Rust {builder_rust} < rust-version {msrv}"
    );
    let runs = all(build, "RUN").join("\n");
    assert!(runs.contains("cargo build --release --locked"), "{runs}");

    // The runtime: minimal, numeric non-root user, the state volume.
    let base = one("FROM");
    assert!(
        base.starts_with("gcr.io/distroless/") || base.contains("-slim") || base == "scratch",
        "the final stage is not a minimal image: {base}"
    );
    let user = one("USER");
    let (uid, gid) = user.split_once(':').unwrap_or((&user, &user));
    let uid: u32 = uid
        .parse()
        .unwrap_or_else(|_| panic!("USER {user} is not numeric"));
    let gid: u32 = gid
        .parse()
        .unwrap_or_else(|_| panic!("USER {user} is not numeric"));
    assert_eq!((uid, gid), (IMAGE_UID, IMAGE_UID));
    let volume = one("VOLUME");
    let volumes: Vec<String> = if volume.starts_with('[') {
        exec_form(&volume, "VOLUME")
    } else {
        volume.split_whitespace().map(String::from).collect()
    };
    assert!(volumes.iter().any(|v| v == STATE_DIR), "VOLUME {volume}");
    assert_eq!(one("STOPSIGNAL"), "SIGTERM");

    // The config the image ships, and the port it listens on.
    let container = toml_table(&read("deploy/container.toml"), "deploy/container.toml");
    let port = listen_of(&container).port();
    assert!(
        all(runtime, "COPY")
            .iter()
            .any(|c| c == &format!("deploy/container.toml {CONFIG_PATH}")),
        "the image ships deploy/container.toml at {CONFIG_PATH}"
    );
    assert_eq!(one("EXPOSE"), port.to_string());

    // Exec forms: no shell in the image.
    let entrypoint = exec_form(&one("ENTRYPOINT"), "ENTRYPOINT");
    assert_eq!(entrypoint, ["/usr/local/bin/auditrelay"]);
    let cmd = exec_form(&one("CMD"), "CMD");
    assert_eq!(cmd, ["run", "--config", CONFIG_PATH]);
    let healthcheck = one("HEALTHCHECK");
    let (_, check) = healthcheck
        .split_once("CMD ")
        .expect("HEALTHCHECK ... CMD [...]");
    let check = exec_form(check.trim(), "HEALTHCHECK CMD");
    assert_eq!(
        check,
        [
            "/usr/local/bin/auditrelay".to_string(),
            "health".into(),
            "--url".into(),
            format!("http://127.0.0.1:{port}/healthz"),
        ]
    );

    // Every file the build reads from the context survives .dockerignore.
    let ignore = read(".dockerignore");
    let kept: BTreeSet<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    assert!(
        ignore.lines().any(|l| l.trim() == "*"),
        "allow-list .dockerignore"
    );
    let mut context_sources: Vec<String> = Vec::new();
    for (keyword, args) in &instructions {
        for part in args.split_whitespace() {
            if let Some(mount) = part.strip_prefix("--mount=type=bind,") {
                let source = mount
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("source="))
                    .unwrap();
                context_sources.push(source.into());
            }
        }
        if keyword == "COPY" && !args.contains("--from=") {
            context_sources.push(args.split_whitespace().next().unwrap().into());
        }
    }
    assert!(context_sources.len() >= 5, "{context_sources:?}");
    for source in &context_sources {
        assert!(
            kept.contains(source.as_str()),
            ".dockerignore drops {source}"
        );
        assert!(
            repo(source).exists(),
            "the build reads {source}, which does not exist"
        );
    }
}

/// The shared libraries of Debian 12 packages in the runtime image
/// (gcr.io/distroless/cc-debian12: libc6, libssl3, libgcc-s1, libstdc++6,
/// libgomp1).
const RUNTIME_LIBS: &[&str] = &[
    "linux-vdso.so.1",
    "ld-linux-x86-64.so.2",
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "libgcc_s.so.1",
    "libstdc++.so.6",
    "libgomp.so.1",
    "libssl.so.3",
    "libcrypto.so.3",
];

#[test]
fn the_runtime_image_has_every_library_the_binary_links() {
    let out = Command::new("ldd")
        .arg(crate::common::release_binary())
        .output()
        .unwrap();
    assert!(out.status.success());
    let libs: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|l| l.rsplit('/').next().unwrap().to_string())
        .collect();
    let missing: BTreeSet<&String> = libs
        .iter()
        .filter(|l| !RUNTIME_LIBS.contains(&l.as_str()))
        .collect();
    let build: String = dockerfile()
        .iter()
        .filter(|(k, _)| k == "ENV")
        .map(|(_, a)| a.clone())
        .collect::<Vec<_>>()
        .join(" ");
    // zlib is the one library the image lacks; the Dockerfile links it
    // statically.
    if missing.iter().any(|l| l.as_str() == "libz.so.1") {
        assert!(
            build.split_whitespace().any(|a| a == "LIBZ_SYS_STATIC=1"),
            "the binary links libz.so.1 (not in distroless/cc-debian12) and the Dockerfile does not set LIBZ_SYS_STATIC=1"
        );
    }
    let unknown: Vec<&&String> = missing
        .iter()
        .filter(|l| l.as_str() != "libz.so.1")
        .collect();
    assert!(
        unknown.is_empty(),
        "the binary links {unknown:?}, which distroless/cc-debian12 does not have: link statically or change the runtime image"
    );
}

#[test]
fn the_compose_file_wires_simulator_broker_and_relay() {
    let compose = yaml_docs("deploy/compose.yaml").remove(0);
    let services = compose["services"].as_object().unwrap();
    for name in ["auditrelay", "simulator", "kafka"] {
        assert!(services.contains_key(name), "service {name}");
    }
    let relay = &services["auditrelay"];
    assert_eq!(str_at(relay, "/build/dockerfile"), "Dockerfile");
    assert!(repo("deploy")
        .join(str_at(relay, "/build/context"))
        .join("Dockerfile")
        .is_file());
    assert_eq!(str_at(relay, "/user"), format!("{IMAGE_UID}:{IMAGE_UID}"));
    assert_eq!(relay["read_only"], true);
    let command: Vec<&str> = relay["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(command, ["run", "--config", CONFIG_PATH]);

    // Mounts: the config file and the state volume.
    let volumes: Vec<&str> = relay["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let config_file = volumes
        .iter()
        .find_map(|v| v.strip_suffix(&format!(":{CONFIG_PATH}:ro")))
        .expect("the config mounted read-only");
    assert_eq!(config_file, "./compose.toml");
    assert!(
        volumes.contains(&format!("state:{STATE_DIR}").as_str()),
        "{volumes:?}"
    );
    let config = toml_table(&read("deploy/compose.toml"), "deploy/compose.toml");
    assert_eq!(
        Path::new(toml_str(&config, "state.path")).parent().unwrap(),
        Path::new(STATE_DIR)
    );

    // The source points at the simulator, the sink at the broker.
    let sim_command: Vec<&str> = services["simulator"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(sim_command[0], "simulate");
    let sim_listen = sim_command[sim_command.iter().position(|a| *a == "--listen").unwrap() + 1];
    let sim_port = sim_listen.rsplit(':').next().unwrap();
    let (_, source) = sources(&config).remove(0);
    assert_eq!(
        source["base_url"].as_str().unwrap(),
        format!("http://simulator:{sim_port}/api/1.0")
    );
    let sim_token = sim_command[sim_command.iter().position(|a| *a == "--token").unwrap() + 1];
    let token_env = source["token_env"].as_str().unwrap();
    assert_eq!(
        str_at(relay, &format!("/environment/{token_env}")),
        sim_token
    );
    let advertised = str_at(
        &services["kafka"],
        "/environment/KAFKA_ADVERTISED_LISTENERS",
    );
    let brokers = toml_str(&config, "sinks.kafka.brokers");
    assert_eq!(advertised, format!("PLAINTEXT://{brokers}"));
    for dependency in ["simulator", "kafka"] {
        assert_eq!(
            str_at(relay, &format!("/depends_on/{dependency}/condition")),
            "service_healthy"
        );
    }

    // Metrics published on loopback only; a clean stop fits.
    let listen = listen_of(&config);
    assert!(listen.ip().is_unspecified());
    assert_eq!(
        str_at(relay, "/ports/0"),
        format!("127.0.0.1:{0}:{0}", listen.port())
    );
    let stop = humantime::parse_duration(str_at(relay, "/stop_grace_period")).unwrap();
    assert!(stop >= toml_duration(&config, "shutdown_grace") + Duration::from_secs(10));

    // The simulator's health check uses the binary (the image has no curl).
    let health: Vec<&str> = services["simulator"]["healthcheck"]["test"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        &health[..3],
        ["CMD", "/usr/local/bin/auditrelay", "health"],
        "{health:?}"
    );
}

#[test]
fn the_compose_config_passes_check_offline() {
    let env = HashMap::from([("ASANA_TOKEN", "sim-token")]);
    check_offline(&read("deploy/compose.toml"), &env, "deploy/compose.toml");
}

#[test]
fn the_compose_simulator_command_starts_a_simulator() {
    let compose = yaml_docs("deploy/compose.yaml").remove(0);
    let mut args: Vec<String> = compose["services"]["simulator"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let listen = args.iter().position(|a| a == "--listen").unwrap() + 1;
    args[listen] = "127.0.0.1:0".into();
    let mut child = Reaped(Some(
        Command::new(binary())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let stdout = child.child().stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap_or_default());
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("`auditrelay {}` printed nothing", args.join(" ")));
    let url = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line}"));
    assert!(url.ends_with("/api/1.0"), "{url}");
    // The compose health check's URL answers 200.
    let stats = url.replace("/api/1.0", "/_sim/stats");
    let (code, _, err) = run_cli(&["health", "--url", &stats], &HashMap::new());
    assert_eq!(code, 0, "auditrelay health --url {stats}: {err}");
    signal(child.child().id(), "TERM");
    let status = wait_exit(child.0.take().unwrap(), Duration::from_secs(15));
    assert!(status.success(), "{status}");
}

// ---------------------------------------------------------------------------
// Grafana, Prometheus
// ---------------------------------------------------------------------------

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        out.push(panel);
        if let Some(nested) = panel.get("panels").and_then(Value::as_array) {
            out.extend(nested);
        }
    }
    out
}

#[test]
fn the_grafana_dashboard_is_consistent() {
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/auditrelay.json"))
        .expect("deploy/grafana/auditrelay.json is JSON");
    let known = metric_names();
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(dashboard["uid"].is_string());

    // Template variables: the data source, then instance, source, sink.
    let variables: HashMap<&str, &Value> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (str_at(v, "/name"), v))
        .collect();
    assert_eq!(str_at(variables["DS_PROMETHEUS"], "/type"), "datasource");
    assert_eq!(str_at(variables["DS_PROMETHEUS"], "/query"), "prometheus");
    for name in ["instance", "source", "sink"] {
        let definition = str_at(variables[name], "/definition");
        let selector = definition
            .strip_prefix("label_values(")
            .and_then(|d| d.rsplit_once(','))
            .map(|(s, label)| {
                if name != "instance" {
                    assert_eq!(label.trim().trim_end_matches(')'), name);
                }
                s
            })
            .unwrap_or_else(|| panic!("variable {name}: {definition}"));
        let expr = promql(&grafana_to_promql(selector), name);
        assert!(selected_metrics(&expr).is_subset(&known), "variable {name}");
    }

    // Panels: unique ids, inside the 24-column grid, not overlapping.
    let all = panels(&dashboard);
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(u64, u64, u64, u64, &str)> = Vec::new();
    let mut used = BTreeSet::new();
    for panel in &all {
        let id = panel["id"].as_u64().expect("a numeric panel id");
        assert!(ids.insert(id), "panel id {id} used twice");
        let title = str_at(panel, "/title");
        let g = &panel["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(
            x + w <= 24 && w > 0 && h > 0,
            "panel {title:?} off the grid"
        );
        for (bx, by, bw, bh, other) in &boxes {
            let apart = x + w <= *bx || bx + bw <= x || y + h <= *by || by + bh <= y;
            assert!(apart, "panels {title:?} and {other:?} overlap");
        }
        boxes.push((x, y, w, h, title));
        if str_at(panel, "/type") == "row" {
            continue;
        }
        assert_eq!(
            str_at(panel, "/datasource/uid"),
            "${DS_PROMETHEUS}",
            "{title}"
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            let expr = promql(&grafana_to_promql(str_at(target, "/expr")), title);
            let names = selected_metrics(&expr);
            assert!(!names.is_empty(), "panel {title:?} selects no metric");
            for name in &names {
                assert!(
                    known.contains(name),
                    "panel {title:?}: {name} is not in deploy/metrics.txt"
                );
            }
            used.extend(names);
        }
    }
    // The dashboard covers sources, sinks, enrichment and the process.
    for required in [
        "auditrelay_source_lag_seconds",
        "auditrelay_source_cursor_age_seconds",
        "auditrelay_source_retention_seconds",
        "auditrelay_source_events_received_total",
        "auditrelay_source_events_stored_total",
        "auditrelay_source_events_duplicate_total",
        "auditrelay_source_requests_total",
        "auditrelay_source_rate_limit_waits_total",
        "auditrelay_source_errors_total",
        "auditrelay_sink_events_sent_total",
        "auditrelay_sink_events_acknowledged_total",
        "auditrelay_sink_outbox_events",
        "auditrelay_sink_outbox_bytes",
        "auditrelay_sink_retries_total",
        "auditrelay_sink_errors_total",
        "auditrelay_sink_dead_letters",
        "auditrelay_enrichment_cache_hits_total",
        "auditrelay_enrichment_cache_misses_total",
        "auditrelay_build_info",
        "auditrelay_config_reloads_total",
    ] {
        assert!(used.contains(required), "no panel shows {required}");
    }
}

fn alert_rules() -> Vec<Value> {
    let doc = yaml_docs("deploy/prometheus/alerts.yaml").remove(0);
    let groups = doc["groups"].as_array().expect("groups:");
    groups
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter().cloned())
        .collect()
}

#[test]
fn the_alert_rules_are_complete_and_valid() {
    let rules = alert_rules();
    let known = metric_names();
    let readme = read("deploy/README.md");
    let headings: BTreeSet<String> = readme
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim().to_lowercase())
        .collect();
    let mut names = BTreeSet::new();
    for rule in &rules {
        let name = str_at(rule, "/alert");
        assert!(names.insert(name.to_string()), "alert {name} twice");
        let expr = promql(str_at(rule, "/expr"), name);
        let metrics = selected_metrics(&expr);
        for metric in metrics.iter().filter(|m| *m != "up") {
            assert!(
                known.contains(metric),
                "{name}: {metric} is not in deploy/metrics.txt"
            );
        }
        // Prometheus durations ("5m", "1h30m"; "0m" fires at once).
        humantime::parse_duration(str_at(rule, "/for"))
            .unwrap_or_else(|e| panic!("{name}: for: {e}"));
        let severity = str_at(rule, "/labels/severity");
        assert!(
            ["critical", "warning"].contains(&severity),
            "{name}: severity {severity}"
        );
        for annotation in ["summary", "description"] {
            let text = str_at(rule, &format!("/annotations/{annotation}"));
            // $labels.source exists only on source metrics, $labels.sink on
            // sink metrics.
            for (label, prefix) in [
                ("source", "auditrelay_source_"),
                ("sink", "auditrelay_sink_"),
            ] {
                if text.contains(&format!("$labels.{label} ")) {
                    assert!(
                        metrics.iter().any(|m| m.starts_with(prefix)),
                        "{name}: {annotation} uses $labels.{label}, which its expression does not carry"
                    );
                }
            }
        }
        // The runbook: a section of deploy/README.md named after the alert.
        let runbook = str_at(rule, "/annotations/runbook");
        assert_eq!(runbook, format!("deploy/README.md#{}", name.to_lowercase()));
        assert!(
            headings.contains(&name.to_lowercase()),
            "deploy/README.md has no section {name}"
        );
    }
    for required in [
        "AuditrelayDown",
        "AuditrelaySourceStuck",
        "AuditrelayLagNearRetention",
        "AuditrelayOutboxNearFull",
        "AuditrelaySinkFailing",
        "AuditrelayAuthFailing",
        "AuditrelayDeadLetters",
        "AuditrelayConfigReloadFailed",
    ] {
        assert!(names.contains(required), "no alert {required}");
    }

    // alerts.test.yaml (promtool test rules) makes every alert fire once.
    let tests = yaml_docs("deploy/prometheus/alerts.test.yaml").remove(0);
    assert_eq!(tests["rule_files"], serde_json::json!(["alerts.yaml"]));
    let fired: BTreeSet<&str> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap())
        .filter(|c| !c["exp_alerts"].as_array().unwrap().is_empty())
        .map(|c| str_at(c, "/alertname"))
        .collect();
    for name in &names {
        assert!(
            fired.contains(name.as_str()),
            "alerts.test.yaml never fires {name}"
        );
    }
}

#[test]
fn every_metric_name_mentioned_is_in_metrics_txt() {
    let known = metric_names();
    assert_eq!(
        known.len(),
        read("deploy/metrics.txt")
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .count(),
        "duplicates"
    );
    for name in &known {
        assert!(
            name.starts_with("auditrelay_")
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{name} is not a metric name"
        );
    }
    for file in [
        "deploy/grafana/auditrelay.json",
        "deploy/prometheus/alerts.yaml",
        "deploy/prometheus/alerts.test.yaml",
        "deploy/README.md",
    ] {
        for word in auditrelay_words(&read(file)) {
            let base = ["_bucket", "_sum", "_count", "_created"]
                .iter()
                .find_map(|s| word.strip_suffix(s))
                .filter(|b| known.contains(*b))
                .unwrap_or(&word);
            assert!(
                known.contains(base),
                "{file} mentions {word}, which is not in deploy/metrics.txt"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------

/// The unit with its binary paths pointing at the built binary, in a temp
/// directory, so that `systemd-analyze verify` can check them.
fn unit_with_built_binary(dir: &Path) -> PathBuf {
    let text = read("systemd/auditrelay.service");
    assert!(text.contains("/usr/local/bin/auditrelay "));
    let path = dir.join("auditrelay.service");
    std::fs::write(&path, text.replace("/usr/local/bin/auditrelay", binary())).unwrap();
    path
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let analyze = require_tool("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_with_built_binary(dir.path());
    let out = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{text}"
    );
    // Unknown keys and bad values are only warnings: none may name the unit.
    let problems: Vec<&str> = text.lines().filter(|l| l.contains("auditrelay")).collect();
    assert!(
        problems.is_empty(),
        "systemd-analyze verify:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_systemd_unit_exposure_is_at_most_2_0() {
    let analyze = require_tool("systemd-analyze", "systemd");
    let unit = repo("systemd/auditrelay.service");
    // --threshold compares with the exposure times ten: 20 is 2.0.
    let out = Command::new(&analyze)
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for auditrelay.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}"));
    assert!(exposure <= 2.0, "exposure {exposure} > 2.0:\n{text}");
    assert!(
        out.status.success(),
        "systemd-analyze security failed:\n{text}"
    );
}

#[test]
fn the_systemd_unit_keeps_the_daemon_contract() {
    let entries = unit_entries(&read("systemd/auditrelay.service"));
    let config = toml_table(&read("systemd/auditrelay.toml"), "systemd/auditrelay.toml");
    assert_eq!(unit_value(&entries, "Type"), "notify");
    assert_eq!(unit_value(&entries, "NotifyAccess"), "main");
    let watchdog = humantime::parse_duration(unit_value(&entries, "WatchdogSec")).unwrap();
    assert!(
        watchdog >= Duration::from_secs(10),
        "WatchdogSec={watchdog:?}"
    );
    assert_eq!(
        unit_value(&entries, "ExecStart"),
        format!("/usr/local/bin/auditrelay run --config {CONFIG_PATH}")
    );
    assert_eq!(
        unit_value(&entries, "ExecStartPre"),
        format!("/usr/local/bin/auditrelay check --offline --config {CONFIG_PATH}")
    );
    assert_eq!(
        unit_values(&entries, "ExecReload").last().copied(),
        Some("/bin/kill -HUP $MAINPID")
    );
    assert_eq!(unit_value(&entries, "Restart"), "on-failure");
    assert!(unit_value(&entries, "RestartPreventExitStatus")
        .split_whitespace()
        .any(|s| s == "78"));
    let stop = humantime::parse_duration(unit_value(&entries, "TimeoutStopSec")).unwrap();
    let drain = toml_duration(&config, "shutdown_grace");
    assert!(
        stop >= drain + Duration::from_secs(10),
        "TimeoutStopSec={stop:?}, shutdown_grace={drain:?}"
    );

    // The state lives in the StateDirectory, private to the service.
    assert_eq!(unit_value(&entries, "DynamicUser"), "yes");
    assert_eq!(unit_value(&entries, "StateDirectory"), "auditrelay");
    assert_eq!(unit_value(&entries, "StateDirectoryMode"), "0700");
    assert_eq!(
        Path::new(toml_str(&config, "state.path")).parent().unwrap(),
        Path::new(STATE_DIR)
    );
    // The credential the config names is the one the unit loads.
    let credentials: Vec<&str> = unit_values(&entries, "LoadCredential")
        .iter()
        .map(|c| c.split_once(':').unwrap().0)
        .collect();
    for (id, source) in sources(&config) {
        let name = source
            .get("token_credential")
            .and_then(toml::Value::as_str)
            .unwrap_or_else(|| panic!("source {id}: use token_credential under systemd"));
        assert!(
            credentials.contains(&name),
            "source {id}: no LoadCredential={name}:..."
        );
    }
    // The notify socket needs AF_UNIX.
    assert!(unit_value(&entries, "RestrictAddressFamilies")
        .split_whitespace()
        .any(|f| f == "AF_UNIX"));
    assert_eq!(unit_value(&entries, "CapabilityBoundingSet"), "");
    assert_eq!(unit_value(&entries, "AmbientCapabilities"), "");
    assert_eq!(unit_value(&entries, "ProtectSystem"), "strict");
    assert_eq!(unit_value(&entries, "UMask"), "0077");

    // The flags the unit passes exist in the binary.
    for (command, flags) in [
        ("run", &["--config"][..]),
        ("check", &["--config", "--offline"][..]),
    ] {
        let (code, help, err) = run_cli(&[command, "--help"], &HashMap::new());
        assert_eq!(code, 0, "{err}");
        for flag in flags {
            assert!(help.contains(flag), "`auditrelay {command}` has no {flag}");
        }
    }
}

#[test]
fn the_systemd_config_passes_check_offline() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("asana-token"), TOKEN).unwrap();
    let env = HashMap::from([("CREDENTIALS_DIRECTORY", dir.path().to_str().unwrap())]);
    check_offline(
        &read("systemd/auditrelay.toml"),
        &env,
        "systemd/auditrelay.toml",
    );
}

// ---------------------------------------------------------------------------
// The running binary against the artifacts' contract
// ---------------------------------------------------------------------------

#[test]
fn the_health_checks_and_probes_answer_from_a_running_daemon() {
    let sim = Sim::backlog(200);
    let work = Workdir::new();
    let port = free_port();
    let text = std::fs::read_to_string(work.config(&sim.base_url, "")).unwrap()
        + &format!("\n[http]\nlisten = \"127.0.0.1:{port}\"\n");
    let config = work.write_config(&text);
    let log = work.path("daemon.log");
    let mut daemon = Reaped(Some(
        Command::new(binary())
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    ));
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(Duration::from_secs(60), "200 events", || {
        if let Some(status) = daemon.child().try_wait().unwrap() {
            panic!("the daemon exited ({status}):\n{}", logs());
        }
        Delivered::count(&work.out()) >= 200
    });

    // The image's HEALTHCHECK, on this daemon's port.
    let healthcheck = dockerfile()
        .into_iter()
        .find(|(k, _)| k == "HEALTHCHECK")
        .map(|(_, a)| a)
        .unwrap();
    let args = exec_form(
        healthcheck.split_once("CMD ").unwrap().1.trim(),
        "HEALTHCHECK",
    );
    let args: Vec<String> = args[1..]
        .iter()
        .map(|a| a.replace(":9464/", &format!(":{port}/")))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = run_cli(&args, &HashMap::new());
    assert_eq!(code, 0, "HEALTHCHECK {args:?}: {out}{err}\n{}", logs());

    // The StatefulSet's probe paths; ready once every source polled and
    // every sink delivered.
    let objects = kubernetes_objects();
    let container = &objects["StatefulSet"]["spec"]["template"]["spec"]["containers"][0];
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let url = format!(
            "http://127.0.0.1:{port}{}",
            str_at(container, &format!("/{probe}/httpGet/path"))
        );
        let mut last = String::new();
        let ok = (0..100).any(|_| {
            let (code, out, err) = run_cli(&["health", "--url", &url], &HashMap::new());
            last = format!("exit {code}: {out}{err}");
            code == 0 || {
                std::thread::sleep(Duration::from_millis(100));
                false
            }
        });
        assert!(ok, "{probe} {url}: {last}\n{}", logs());
    }
    // Metrics are served too.
    let (code, _, err) = run_cli(
        &[
            "health",
            "--url",
            &format!("http://127.0.0.1:{port}/metrics"),
        ],
        &HashMap::new(),
    );
    assert_eq!(code, 0, "{err}");
    signal(daemon.child().id(), "TERM");
    let status = wait_exit(daemon.0.take().unwrap(), Duration::from_secs(30));
    assert!(status.success(), "exit {status}:\n{}", logs());

    // Nothing listening: unhealthy (1), not a usage error (2).
    let closed = format!("http://127.0.0.1:{}/healthz", free_port());
    let (code, _, _) = run_cli(&["health", "--url", &closed], &HashMap::new());
    assert_eq!(code, 1, "auditrelay health against a closed port");
}

/// Runs the binary the way the image does, without a container engine: as
/// uid/gid 65532 with no supplementary groups and no capabilities, cwd /,
/// an empty environment (no HOME), in a mount namespace where every mount
/// is read-only except the state directory.
#[test]
fn the_binary_keeps_the_image_contract_uid_65532_and_only_the_state_dir_writable() {
    require_root("it switches to uid 65532 and makes mounts read-only");
    let unshare = require_tool("unshare", "util-linux");
    require_tool("setpriv", "util-linux");
    require_tool("mount", "mount");

    let sim = Sim::backlog(300);
    let root = tempfile::tempdir().unwrap();
    let at = |p: &str| root.path().join(p);
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The binary as in the image: root-owned, read-only for everyone else.
    std::fs::create_dir(at("bin")).unwrap();
    let bin = at("bin/auditrelay");
    let release = crate::common::release_binary();
    if std::fs::hard_link(&release, &bin).is_err() {
        std::fs::copy(&release, &bin).unwrap();
    }
    // The token as a mounted secret: root-owned, readable by the group.
    std::fs::create_dir(at("secrets")).unwrap();
    std::fs::write(at("secrets/asana-token"), TOKEN).unwrap();
    std::os::unix::fs::chown(at("secrets/asana-token"), Some(0), Some(IMAGE_UID)).unwrap();
    std::fs::set_permissions(
        at("secrets/asana-token"),
        std::fs::Permissions::from_mode(0o440),
    )
    .unwrap();
    // The state volume, owned by the image's user.
    let state = at("state");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(IMAGE_UID), Some(IMAGE_UID)).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = state.join("events.jsonl");
    let config = at("auditrelay.toml");
    std::fs::write(
        &config,
        format!(
            r#"
shutdown_grace = "5s"
[state]
path = "{state}/state.db"
[sources.asana_it]
kind = "asana"
base_url = "{base_url}"
workspace_gid = "{WORKSPACE}"
token_file = "{token}"
start_at = "2h"
poll_interval = "200ms"
retry_initial = "20ms"
retry_max = "300ms"
[sinks.file]
kind = "file"
path = "{out}"
retry_initial = "20ms"
retry_max = "300ms"
"#,
            state = state.display(),
            base_url = sim.base_url,
            token = at("secrets/asana-token").display(),
            out = out.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();

    // In a private mount namespace: the state directory stays writable
    // (its own bind mount), every other mount turns read-only, and root
    // itself checks that it can no longer write outside the state.
    let script = r#"
set -eu
state="$1"; root="$2"; bin="$3"; config="$4"
mount --bind "$state" "$state"
awk '{print $5}' /proc/self/mountinfo | while read -r m; do
  [ "$m" = "$state" ] || mount -o remount,bind,ro "$m" 2>/dev/null || true
done
for d in / /tmp /var/tmp /dev/shm "$root"; do
  if touch "$d/.auditrelay-probe" 2>/dev/null; then
    echo "sandbox: $d is still writable" >&2
    exit 97
  fi
done
cd /
exec setpriv --reuid=65532 --regid=65532 --clear-groups --inh-caps=-all \
  --bounding-set=-all --no-new-privs \
  env -i PATH=/usr/bin:/bin "$bin" run --config "$config"
"#;
    let log = at("daemon.log");
    let mut daemon = Reaped(Some(
        Command::new(&unshare)
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .args([&state, &root.path().to_path_buf(), &bin, &config])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    ));
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(
        Duration::from_secs(90),
        "300 events in the state dir",
        || {
            if let Some(status) = daemon.child().try_wait().unwrap() {
                panic!("the daemon exited ({status}):\n{}", logs());
            }
            Delivered::count(&out) >= 300
        },
    );

    // While it runs: everything in the state dir belongs to 65532, and the
    // state file family is private.
    let check_files = |expect_wal: bool| {
        let mut names = BTreeSet::new();
        for entry in std::fs::read_dir(&state).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata().unwrap();
            assert_eq!((meta.uid(), meta.gid()), (IMAGE_UID, IMAGE_UID), "{name}");
            assert_eq!(meta.mode() & 0o022, 0, "{name} is writable by others");
            if name.starts_with("state.db") {
                assert_eq!(meta.mode() & 0o777, 0o600, "{name}");
            }
            names.insert(name);
        }
        if expect_wal {
            for name in ["state.db", "state.db-wal", "state.db-shm"] {
                assert!(names.contains(name), "no {name} in {names:?}");
            }
        }
        names
    };
    check_files(true);

    signal(daemon.child().id(), "TERM");
    let started = std::time::Instant::now();
    let status = wait_exit(daemon.0.take().unwrap(), Duration::from_secs(30));
    assert!(status.success(), "exit {status}:\n{}", logs());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the stop took {:?}",
        started.elapsed()
    );

    let names = check_files(false);
    let expected = BTreeSet::from([
        "events.jsonl",
        "state.db",
        "state.db-shm",
        "state.db-wal",
        "state.db.lock",
    ]);
    for name in &names {
        assert!(
            expected.contains(name.as_str()),
            "unexpected {name} in the state dir"
        );
    }
    let logs = logs();
    for refusal in [
        "Read-only file system",
        "Permission denied",
        "os error 30",
        "os error 13",
    ] {
        assert!(
            !logs.contains(refusal),
            "the daemon hit {refusal:?}:\n{logs}"
        );
    }
    let delivered = Delivered::read(&out);
    assert_eq!(delivered.unique(), sim.gids());
    assert_eq!(delivered.duplicates(), 0);
    // Nothing outside the state dir in the temp root either.
    let top: BTreeSet<String> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        top,
        BTreeSet::from(
            ["auditrelay.toml", "bin", "daemon.log", "secrets", "state"].map(String::from)
        )
    );
}
