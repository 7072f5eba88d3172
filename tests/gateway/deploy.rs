//! The reference deployment under `deploy/` against the code, so that a
//! renamed route, port, key, variable or subcommand cannot leave it behind:
//! the Kubernetes probes are routes the gateway serves, on the port it
//! listens on; the grace period covers the chat timeout and the drain of
//! `conf/eai-gateway.yaml` and of the ConfigMap; every command line
//! (Dockerfile, Deployment, systemd unit) is one the CLI accepts; every
//! environment variable is one the gateway reads; the autoscaler's metric is
//! a gauge the gateway registers. One test starts the gateway as the
//! Deployment does and asks it for its probes.

mod files;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use eai_gateway::routes::{Native, match_native};
use eai_gateway::settings::{DatabaseUrl, Settings};
use files::{Dockerfile, Kube, read, repo, sample, sample_with, systemd_unit, yaml_docs};
use http::Method;
use serde_json::Value;

use super::support::free_port;

/// What an exit takes after the drain period: cancelling the messages the
/// drain gave up (at most 2 s, `CANCEL_AT_EXIT` in src/server.rs), and a
/// second to spare.
const EXIT_SECONDS: u64 = 3;

/// Variables the Deployment sets that the settings are about to read
/// (issue 32: PgBouncer, Redis Cluster). Once docs/configuration.md lists
/// one, the test asks for its removal from here.
const PENDING_ENV: &[&str] = &[];

#[test]
fn kubernetes_probes_are_gateway_routes_on_its_listen_port() {
    let kube = Kube::load();
    let pod = kube.settings(&Dockerfile::load());
    let conf = sample();
    let c = kube.container();
    for (probe, want) in [
        ("startupProbe", Native::Healthz),
        ("livenessProbe", Native::Healthz),
        ("readinessProbe", Native::Readyz),
    ] {
        let get = &c[probe]["httpGet"];
        let path = get["path"].as_str().expect("a probe path");
        let served = match_native(&Method::GET, path);
        assert_eq!(served, Some(want), "{probe}: {path} is not its route");
        assert_eq!(kube.port(&get["port"]), pod.listen.port(), "{probe}: port");
    }
    assert_eq!(pod.listen.port(), conf.listen.port(), "pod and conf listen");
    let metrics = pod.metrics_listen.expect("the pod serves metrics");
    assert_eq!(Some(metrics.port()), conf.metrics_listen.map(|a| a.port()));
    assert!(metrics.ip().is_unspecified() && pod.listen.ip().is_unspecified());
    // The file says what the pod does, though the image's variables win.
    let file = Settings::parse(&kube.config().1, |_| None).expect("ConfigMap's config");
    assert_eq!(
        (file.listen, file.metrics_listen),
        (pod.listen, pod.metrics_listen),
        "the ConfigMap's listeners are not the ones the pod gets"
    );
    let annotations = &kube.pod()["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"],
        metrics.port().to_string()
    );
    assert_eq!(kube.port(&Value::from("metrics")), metrics.port());

    // Service, budget and autoscaler all reach these pods.
    let labels = kube.pod()["metadata"]["labels"]
        .as_object()
        .expect("labels");
    let selects = |selector: &Value, what: &str| {
        let selector = selector.as_object().expect("selector");
        let all = selector.iter().all(|(k, v)| labels.get(k) == Some(v));
        assert!(
            !selector.is_empty() && all,
            "{what}'s selector misses the pods"
        );
    };
    let deployment = kube.get("Deployment");
    selects(&deployment["spec"]["selector"]["matchLabels"], "Deployment");
    selects(&kube.get("Service")["spec"]["selector"], "Service");
    let pdb = kube.get("PodDisruptionBudget");
    selects(
        &pdb["spec"]["selector"]["matchLabels"],
        "PodDisruptionBudget",
    );
    let target = &kube.get("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"];
    assert_eq!(target["name"], deployment["metadata"]["name"]);
    for port in kube.get("Service")["spec"]["ports"]
        .as_array()
        .expect("ports")
    {
        kube.port(&port["targetPort"]);
    }
}

#[test]
fn kubernetes_grace_period_covers_the_chat_budget_and_the_drain() {
    let kube = Kube::load();
    let pod = kube.settings(&Dockerfile::load());
    let grace = kube.pod()["spec"]["terminationGracePeriodSeconds"].as_u64();
    let grace = grace.expect("terminationGracePeriodSeconds");
    let pause = kube.pre_stop_seconds();
    for (name, cfg) in [("conf/eai-gateway.yaml", sample()), ("the ConfigMap", pod)] {
        let (timeout, drain) = (cfg.chat.timeout.as_secs(), cfg.shutdown.drain.as_secs());
        assert!(
            grace >= pause + timeout + drain + EXIT_SECONDS,
            "terminationGracePeriodSeconds {grace} < preStop {pause} + chat.timeout_seconds \
             {timeout} + shutdown.drain_seconds {drain} + {EXIT_SECONDS} ({name})"
        );
    }
    // A pause, not a wait for the grace period to run out.
    assert!(pause > 0 && pause < 30, "preStop pause {pause}");
}

#[test]
fn kubernetes_environment_and_autoscaler_are_what_the_gateway_reads() {
    let kube = Kube::load();
    let image = Dockerfile::load();
    let pod = kube.settings(&image);
    assert!(
        matches!(pod.database.url, DatabaseUrl::Postgres(_)),
        "the pods share PostgreSQL (DATABASE_URL), not a SQLite file each"
    );
    let env = kube.env();
    for required in ["DATABASE_URL", "EAI_GATEWAY_PSEUDONYM_KEY"] {
        let set = matches!(env.get(required), Some(Some(_)));
        assert!(set, "{required}: a required secret");
    }
    // Every variable is one docs/configuration.md lists (docs.rs ties that
    // list to the keys), or one on its way.
    let doc = read("docs/configuration.md");
    let documented: BTreeSet<&str> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .filter(|n| n.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect();
    assert!(documented.contains("DATABASE_URL"), "no variable table");
    for name in env.keys().chain(image.env().keys()) {
        let pending = PENDING_ENV.contains(&name.as_str());
        match (documented.contains(name.as_str()), pending) {
            (true, true) => panic!("{name} is documented now: remove it from PENDING_ENV"),
            (false, false) => panic!("{name}: the gateway reads no such variable"),
            _ => {}
        }
    }

    // A per-pod gauge the gateway registers, aimed below the cap past which
    // a pod refuses chats, served by the adapter's rule.
    let metric = &kube.get("HorizontalPodAutoscaler")["spec"]["metrics"][0];
    assert_eq!(metric["type"], "Pods");
    let name = metric["pods"]["metric"]["name"].as_str().expect("a metric");
    let registered = eai_gateway::catalog::metric_names().contains(name);
    assert!(registered, "{name}: the gateway registers no such metric");
    let target = metric["pods"]["target"]["averageValue"].as_str();
    let target: usize = target.and_then(|v| v.parse().ok()).expect("averageValue");
    let cap = pod.limits.max_inflight_chats;
    assert!(
        cap == 0 || target < cap,
        "target {target} >= max_inflight_chats {cap}"
    );
    let values = read("deploy/kubernetes/prometheus-adapter/values.yaml");
    let rule = &yaml_docs(&values)[0]["rules"]["custom"][0];
    let series = rule["seriesQuery"].as_str().expect("seriesQuery");
    assert!(
        series.starts_with(&format!("{name}{{")),
        "adapter: {series}"
    );
    assert_eq!(
        rule["name"]["as"], name,
        "the adapter serves it under its name"
    );
    let readme = read("deploy/kubernetes/README.md");
    for field in ["seriesQuery", "metricsQuery"] {
        let query = rule[field].as_str().expect("a query");
        assert!(
            readme.contains(query),
            "deploy/kubernetes/README.md: another {field}"
        );
    }
}

#[test]
fn dockerfile_copies_existing_files_and_exposes_the_config_ports() {
    let image = Dockerfile::load();
    let ignore = read(".dockerignore");
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(
        ignored.contains(&"target"),
        ".dockerignore must leave target/ out"
    );
    let stages: Vec<&str> = image
        .all("FROM")
        .into_iter()
        .filter_map(|f| Some(f.split_once(" AS ")?.1.trim()))
        .collect();
    let mut binary = None;
    for copy in image.all("COPY") {
        let mut words: Vec<&str> = copy.split_whitespace().collect();
        let to = words.pop().expect("a destination");
        if let Some(stage) = words.first().and_then(|w| w.strip_prefix("--from=")) {
            assert!(
                stages.contains(&stage),
                "COPY --from={stage}: no such stage"
            );
            binary = binary.or(to.ends_with("/eai-gateway").then_some(to));
            continue;
        }
        for from in words {
            let top = from.split('/').next().unwrap_or("");
            assert!(
                repo().join(from).exists(),
                "COPY {from}: not in the repository"
            );
            assert!(
                !ignored.contains(&top),
                "COPY {from}: left out by .dockerignore"
            );
        }
    }
    let entrypoint = image.exec("ENTRYPOINT");
    assert_eq!(
        Some(entrypoint[0].as_str()),
        binary,
        "ENTRYPOINT: the binary"
    );
    assert_eq!(image.all("STOPSIGNAL"), ["SIGTERM"], "SIGTERM drains");

    // The image exposes the ports the sample serves on, on every interface.
    let conf = sample_with(&image.env());
    let exposed: BTreeSet<u16> = image
        .all("EXPOSE")
        .into_iter()
        .flat_map(str::split_whitespace)
        .map(|p| p.parse().expect("a port"))
        .collect();
    let served = [Some(conf.listen), conf.metrics_listen]
        .into_iter()
        .flatten();
    let served: BTreeSet<u16> = served.map(|a| a.port()).collect();
    assert_eq!(exposed, served, "EXPOSE");
    assert!(
        conf.listen.ip().is_unspecified(),
        "the image listens everywhere"
    );
    assert_eq!(conf.listen.port(), sample().listen.port());

    // A numeric user other than root, the one the pods run as.
    let user = image.all("USER");
    let uid = user
        .last()
        .and_then(|u| u.split(':').next()?.parse::<u64>().ok());
    let uid = uid.expect("USER with a numeric uid");
    assert_ne!(uid, 0, "the image runs as root");
    let kube = Kube::load();
    let run_as = &kube.pod()["spec"]["securityContext"]["runAsUser"];
    assert_eq!(run_as, uid, "the pods run as the image's user");
}

/// Runs a deployed command line up to its config: the binary is the one
/// under test, every absolute path maps to the file the deployment provides
/// there (`files`), and an invalid `EAI_GATEWAY_LISTEN` stops the gateway
/// right after it has read and parsed that file, before it binds or
/// migrates anything. So the CLI accepted the arguments exactly when the
/// gateway complains about that variable; a rejected argument gets clap's
/// usage instead.
fn cli_accepts(what: &str, argv: &[String], files: &BTreeMap<String, PathBuf>) {
    assert!(
        argv[0].ends_with("/eai-gateway"),
        "{what}: runs {}",
        argv[0]
    );
    let args = argv[1..].iter().map(|a| match files.get(a) {
        Some(local) => local.clone(),
        None if a.starts_with('/') => panic!("{what}: the deployment provides no {a}"),
        None => PathBuf::from(a),
    });
    let out = Command::new(env!("CARGO_BIN_EXE_eai-gateway"))
        .args(args)
        .env("EAI_GATEWAY_LISTEN", "not-an-address")
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .output()
        .expect("run the gateway");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(2)
            && stderr.contains("config error: environment variable EAI_GATEWAY_LISTEN"),
        "{what}: the CLI rejected {argv:?} ({}):\n{stderr}",
        out.status
    );
}

#[test]
fn every_deployed_command_line_is_one_the_cli_accepts() {
    let image = Dockerfile::load();
    let image_files = image.files();
    let entrypoint = image.exec("ENTRYPOINT");
    let argv = [entrypoint.clone(), image.exec("CMD")].concat();
    cli_accepts("Dockerfile ENTRYPOINT + CMD", &argv, &image_files);

    // In the pod, the ConfigMap's file replaces the image's directory.
    let kube = Kube::load();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mounted, text) = kube.config();
    let local = dir.path().join("eai-gateway.yaml");
    std::fs::write(&local, text).expect("write");
    let command = kube.strings("command").unwrap_or(entrypoint);
    let argv = [command, kube.strings("args").expect("args")].concat();
    cli_accepts("Deployment", &argv, &BTreeMap::from([(mounted, local)]));

    // The unit installs conf/ where the image has it (its opening comment).
    let unit = systemd_unit();
    let start: Vec<String> = unit["ExecStart"]
        .split_whitespace()
        .map(Into::into)
        .collect();
    cli_accepts("systemd ExecStart", &start, &image_files);
    let script = unit["ExecReload"]
        .split_once('\'')
        .and_then(|(_, s)| s.rsplit_once('\''));
    let script = script.expect("ExecReload=/bin/sh -c '...'").0;
    let gateways: Vec<Vec<String>> = script
        .split(['&', ';', '|'])
        .map(|c| {
            c.split_whitespace()
                .map(Into::into)
                .collect::<Vec<String>>()
        })
        .filter(|c| c.first().is_some_and(|w| w.ends_with("/eai-gateway")))
        .collect();
    assert_eq!(gateways.len(), 1, "ExecReload starts one gateway: {script}");
    cli_accepts("systemd ExecReload", &gateways[0], &image_files);
    let upgrades = gateways[0].iter().any(|a| a == "--upgrade");
    assert!(upgrades, "ExecReload runs the upgrade");

    // systemd waits for the drain before its SIGKILL.
    let stop: u64 = unit["TimeoutStopSec"]
        .parse()
        .expect("TimeoutStopSec, seconds");
    let drain = sample().shutdown.drain.as_secs();
    assert!(
        stop >= drain + EXIT_SECONDS,
        "TimeoutStopSec {stop} < drain {drain}"
    );
    // The unit lives in deploy/ alone: the documentation links it.
    let ops = read("docs/operations.md");
    let links = ops.contains("../deploy/systemd/eai-gateway.service");
    assert!(links, "docs/operations.md links the unit");
    assert!(
        !ops.contains("ExecStart="),
        "docs/operations.md keeps a copy of the unit"
    );
}

/// The gateway started as a pod starts it (the Deployment's arguments, the
/// ConfigMap's file, the image's and the Deployment's environment, so
/// with bearer tokens on) answers its probes, which carry no token; then
/// SIGTERM, as the kubelet sends after preStop, ends it cleanly.
#[tokio::test]
async fn kubernetes_pod_serves_its_probes() {
    let kube = Kube::load();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mounted, text) = kube.config();
    let config = dir.path().join("eai-gateway.yaml");
    std::fs::write(&config, text).expect("write");
    let args = kube.strings("args").expect("args");
    let args = args.iter().map(|a| match *a == mounted {
        true => config.clone(),
        false => PathBuf::from(a),
    });
    // Here, not in a cluster: loopback ports of its own, a SQLite file for
    // the shared PostgreSQL, and a backend address that resolves.
    let listen = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_eai-gateway"));
    cmd.args(args).envs(Dockerfile::load().env());
    for (k, v) in kube.env() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let log = dir.path().join("gateway.log");
    let file = std::fs::File::create(&log).expect("log");
    let db = format!("sqlite://{}", dir.path().join("gw.db").display());
    cmd.env("EAI_GATEWAY_LISTEN", &listen)
        .env("EAI_GATEWAY_METRICS_LISTEN", &metrics)
        .env("DATABASE_URL", db)
        .env("EAI_GATEWAY_DEFAULT_UPSTREAM", "127.0.0.1:9")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log"))
        .stderr(file);
    let mut child = cmd.spawn().expect("spawn");
    let output = || std::fs::read_to_string(&log).unwrap_or_default();

    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let path = kube.container()[probe]["httpGet"]["path"].as_str();
        let url = format!("http://{listen}{}", path.expect("a probe path"));
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the gateway exited ({status}):\n{}", output());
            }
            let got = client.get(&url).send().await;
            if got.as_ref().is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{probe} {url}: {got:?}\n{}",
                output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let hpa = &kube.get("HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"];
    let page = client.get(format!("http://{metrics}/metrics")).send().await;
    let page = page.expect("metrics").text().await.expect("metrics body");
    let gauge = format!("# TYPE {} gauge", hpa["name"].as_str().expect("name"));
    assert!(
        page.contains(&gauge),
        "the autoscaler's metric is no gauge:\n{page}"
    );

    // An idle keep-alive connection would hold the drain open to its end.
    drop(client);
    let mut kill = Command::new("kill");
    kill.arg("-TERM").arg(child.id().to_string());
    assert!(kill.status().expect("kill").success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("no exit 15 s after SIGTERM:\n{}", output());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "SIGTERM: {status}\n{}", output());
}
