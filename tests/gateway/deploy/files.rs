//! The files under `deploy/` as values: the Kubernetes manifests, the
//! Dockerfile's instructions and the systemd unit's settings, each read the
//! way its tool reads it, as far as the checks in `deploy.rs` need.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use eai_gateway::settings::Settings;
use serde::Deserialize;
use serde_json::Value;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every YAML document of a text.
pub fn yaml_docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("YAML"))
        .collect()
}

/// `conf/eai-gateway.yaml` as the settings read it, with this environment.
pub fn sample_with(env: &BTreeMap<String, String>) -> Settings {
    Settings::parse(&read("conf/eai-gateway.yaml"), |k| env.get(k).cloned())
        .expect("conf/eai-gateway.yaml")
}

/// `conf/eai-gateway.yaml` alone.
pub fn sample() -> Settings {
    sample_with(&BTreeMap::new())
}

/// A stand-in for a required secret of the Deployment: valid in form (the
/// settings check forms; nothing here connects anywhere).
fn secret_value(name: &str) -> String {
    match name {
        "DATABASE_URL" => "postgres://eai:secret@pgbouncer:6432/eai".into(),
        "EAI_GATEWAY_PSEUDONYM_KEY" => "pseudonyms-of-the-deploy-test".into(),
        _ => format!("value-of-{name}"),
    }
}

/// The Kubernetes manifests that `kustomization.yaml` applies, by kind.
pub struct Kube {
    by_kind: BTreeMap<String, Value>,
}

impl Kube {
    pub fn load() -> Self {
        let dir = "deploy/kubernetes";
        let kustomization = &yaml_docs(&read(&format!("{dir}/kustomization.yaml")))[0];
        let listed: BTreeSet<String> = kustomization["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .map(|r| r.as_str().expect("a file name").to_owned())
            .collect();
        // A manifest the kustomization forgets would never be applied.
        let present: BTreeSet<String> = std::fs::read_dir(repo().join(dir))
            .expect("deploy/kubernetes")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
            .collect();
        assert_eq!(listed, present, "{dir}/kustomization.yaml resources");
        let mut by_kind = BTreeMap::new();
        for file in &listed {
            for doc in yaml_docs(&read(&format!("{dir}/{file}"))) {
                let kind = doc["kind"].as_str().expect("kind").to_owned();
                assert!(by_kind.insert(kind.clone(), doc).is_none(), "two {kind}s");
            }
        }
        Self { by_kind }
    }

    pub fn get(&self, kind: &str) -> &Value {
        self.by_kind
            .get(kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    }

    /// The Deployment's pod template.
    pub fn pod(&self) -> &Value {
        &self.get("Deployment")["spec"]["template"]
    }

    pub fn container(&self) -> &Value {
        let containers = self.pod()["spec"]["containers"].as_array();
        let containers = containers.expect("containers");
        assert_eq!(containers.len(), 1, "one container: the gateway");
        &containers[0]
    }

    /// A container port, by its name or number.
    pub fn port(&self, port: &Value) -> u16 {
        let number = match port.as_str() {
            None => port.as_u64(),
            Some(name) => self.container()["ports"]
                .as_array()
                .expect("ports")
                .iter()
                .find(|p| p["name"] == name)
                .and_then(|p| p["containerPort"].as_u64()),
        };
        number
            .and_then(|n| u16::try_from(n).ok())
            .unwrap_or_else(|| panic!("{port}: no container port"))
    }

    /// The config file the ConfigMap holds, and where the pod sees it.
    pub fn config(&self) -> (String, String) {
        let data = self.get("ConfigMap")["data"].as_object().expect("data");
        assert_eq!(data.len(), 1, "the ConfigMap holds the config file alone");
        let (key, text) = data.iter().next().expect("one entry");
        let volumes = self.pod()["spec"]["volumes"].as_array().expect("volumes");
        let mounts = self.container()["volumeMounts"].as_array();
        let mount = mounts
            .expect("volumeMounts")
            .iter()
            .find(|m| {
                volumes
                    .iter()
                    .any(|v| v["name"] == m["name"] && v["configMap"]["name"].is_string())
            })
            .expect("the ConfigMap's mount");
        let dir = mount["mountPath"].as_str().expect("mountPath");
        (
            format!("{dir}/{key}"),
            text.as_str().expect("text").to_owned(),
        )
    }

    /// The container's variables: plain values, and the required secrets
    /// with stand-in values; `None` for an optional secret (absent from a
    /// minimal Secret).
    pub fn env(&self) -> BTreeMap<String, Option<String>> {
        let mut env = BTreeMap::new();
        for var in self.container()["env"].as_array().expect("env") {
            let name = var["name"].as_str().expect("name").to_owned();
            let value = match var["value"].as_str() {
                Some(v) => Some(v.to_owned()),
                None => {
                    let secret = &var["valueFrom"]["secretKeyRef"];
                    assert!(secret.is_object(), "{name}: neither a value nor a secret");
                    (secret["optional"] != true).then(|| secret_value(&name))
                }
            };
            env.insert(name, value);
        }
        env
    }

    /// The seconds the preStop hook pauses (`sleep N`).
    pub fn pre_stop_seconds(&self) -> u64 {
        let cmd = &self.container()["lifecycle"]["preStop"]["exec"]["command"];
        assert_eq!(cmd[0], "sleep", "preStop is a pause: {cmd}");
        cmd[1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("sleep N")
    }

    /// The container's argument list as strings.
    pub fn strings(&self, field: &str) -> Option<Vec<String>> {
        let list = self.container()[field].as_array()?;
        Some(
            list.iter()
                .map(|s| s.as_str().expect("a string").to_owned())
                .collect(),
        )
    }

    /// The ConfigMap's config as a pod reads it: the image's environment,
    /// then the container's.
    pub fn settings(&self, image: &Dockerfile) -> Settings {
        let mut env: BTreeMap<String, Option<String>> =
            image.env().into_iter().map(|(k, v)| (k, Some(v))).collect();
        env.extend(self.env());
        let (_, text) = self.config();
        Settings::parse_deployed(&text, |k| env.get(k).cloned().flatten())
            .unwrap_or_else(|e| panic!("the ConfigMap's config in the pod: {e}"))
    }
}

/// `deploy/Dockerfile`'s instructions: keyword and arguments, continuation
/// lines joined, comments dropped.
pub struct Dockerfile(Vec<(String, String)>);

impl Dockerfile {
    pub fn load() -> Self {
        let mut out = Vec::new();
        let mut current = String::new();
        for line in read("deploy/Dockerfile").lines().map(str::trim) {
            if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
                continue;
            }
            match line.strip_suffix('\\') {
                Some(part) => current.push_str(part),
                None => {
                    current.push_str(line);
                    let (keyword, args) = current.split_once(' ').expect("an instruction");
                    out.push((keyword.to_uppercase(), args.trim().to_owned()));
                    current.clear();
                }
            }
        }
        Self(out)
    }

    /// The arguments of every instruction with this keyword.
    pub fn all(&self, keyword: &str) -> Vec<&str> {
        let matching = self.0.iter().filter(|(k, _)| k == keyword);
        matching.map(|(_, a)| a.as_str()).collect()
    }

    /// An exec-form instruction's list (`["a", "b"]`).
    pub fn exec(&self, keyword: &str) -> Vec<String> {
        let args = self.all(keyword);
        let args = args.last().unwrap_or_else(|| panic!("no {keyword}"));
        serde_json::from_str(args).unwrap_or_else(|_| panic!("{keyword}: not exec form: {args}"))
    }

    /// The image's `ENV` (`K=V K=V`; no quoting is used).
    pub fn env(&self) -> BTreeMap<String, String> {
        let pairs = self.all("ENV").into_iter().flat_map(str::split_whitespace);
        pairs
            .map(|kv| {
                let (k, v) = kv.split_once('=').expect("K=V");
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }

    /// The image's files from the repository: `COPY conf/ /etc/eai-gateway/`
    /// puts conf/X at /etc/eai-gateway/X.
    pub fn files(&self) -> BTreeMap<String, PathBuf> {
        let mut files = BTreeMap::new();
        for copy in self.all("COPY").iter().filter(|c| !c.starts_with("--")) {
            let words: Vec<&str> = copy.split_whitespace().collect();
            if let [from, to] = words[..]
                && from.ends_with('/')
            {
                for entry in std::fs::read_dir(repo().join(from)).expect("COPY source") {
                    let entry = entry.expect("entry");
                    let name = entry.file_name().to_string_lossy().into_owned();
                    files.insert(format!("{to}{name}"), entry.path());
                }
            }
        }
        files
    }
}

/// The `[Service]` settings of `deploy/systemd/eai-gateway.service`.
pub fn systemd_unit() -> BTreeMap<String, String> {
    let text = read("deploy/systemd/eai-gateway.service");
    let mut section = "";
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]"
            && !line.starts_with('#')
            && let Some((k, v)) = line.split_once('=')
        {
            out.insert(k.to_owned(), v.to_owned());
        }
    }
    out
}
