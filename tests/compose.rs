//! `docker-compose.yml` against what the examples and the README expect: every broker address the
//! examples default to, the OTLP ports (4317 gRPC, 4318 HTTP) and the Jaeger UI (16686) are
//! published by a service of the right kind with matching credentials, every service has a health
//! check (so `docker compose up -d --wait` returns when all are ready), and the environment the
//! compose file's header and the README tell users to export points at published ports. Docker is
//! not needed: the file is read as text (the subset of YAML it uses), and, when a compose client is
//! installed, validated with `docker-compose config -q` too.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// One service of the compose file.
#[derive(Debug, Default)]
struct Service {
    name: String,
    /// `key: value` at the service level, values verbatim (`image`, `command`, ...).
    fields: BTreeMap<String, String>,
    /// Published ports, `(host, container)`.
    ports: Vec<(u16, u16)>,
    environment: BTreeMap<String, String>,
    healthcheck: BTreeMap<String, String>,
}

impl Service {
    fn image(&self) -> &str {
        self.fields.get("image").map_or("", String::as_str)
    }

    fn publishes(&self, host_port: u16) -> bool {
        self.ports.iter().any(|&(host, _)| host == host_port)
    }
}

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn unquote(value: &str) -> String {
    let value = value.trim();
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(value)
        .to_owned()
}

/// `"9092:9092"`, `"127.0.0.1:9092:9092"` or `9092` (same port inside and out).
fn parse_port(item: &str) -> (u16, u16) {
    let item = unquote(item);
    let item = item.split('/').next().unwrap();
    let parts: Vec<&str> = item.split(':').collect();
    let port = |s: &str| {
        s.parse::<u16>()
            .unwrap_or_else(|e| panic!("port {s:?} in {item:?}: {e}"))
    };
    match parts.as_slice() {
        [single] => (port(single), port(single)),
        [host, container] | [_, host, container] => (port(host), port(container)),
        _ => panic!("cannot read port mapping {item:?}"),
    }
}

/// Reads the `services:` section: two-space indentation, services at depth 1, their keys at
/// depth 2, `ports` list items and `environment` / `healthcheck` entries at depth 3.
fn parse_compose(text: &str) -> Vec<Service> {
    let mut services: Vec<Service> = Vec::new();
    let mut in_services = false;
    let mut section = String::new();
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        let content = line.trim_start();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let indent = line.len() - content.len();
        assert_eq!(indent % 2, 0, "line {}: odd indentation", number + 1);
        match indent {
            0 => in_services = content == "services:",
            _ if !in_services => {}
            2 => {
                let name = content
                    .strip_suffix(':')
                    .unwrap_or_else(|| panic!("line {}: expected a service", number + 1));
                services.push(Service {
                    name: name.to_owned(),
                    ..Service::default()
                });
            }
            4 => {
                let service = services.last_mut().unwrap();
                let (key, value) = content
                    .split_once(':')
                    .unwrap_or_else(|| panic!("line {}: expected key: value", number + 1));
                section = key.to_owned();
                if !value.trim().is_empty() {
                    service
                        .fields
                        .insert(key.to_owned(), value.trim().to_owned());
                }
            }
            _ => {
                let service = services.last_mut().unwrap();
                match (section.as_str(), content.strip_prefix("- ")) {
                    ("ports", Some(item)) => service.ports.push(parse_port(item)),
                    ("environment", Some(item)) => {
                        let (k, v) = unquote(item)
                            .split_once('=')
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .unwrap_or_else(|| panic!("line {}: KEY=value", number + 1));
                        service.environment.insert(k, v);
                    }
                    ("environment" | "healthcheck", None) => {
                        let (k, v) = content
                            .split_once(':')
                            .unwrap_or_else(|| panic!("line {}: expected key: value", number + 1));
                        let map = if section == "environment" {
                            &mut service.environment
                        } else {
                            &mut service.healthcheck
                        };
                        map.insert(k.trim().to_owned(), unquote(v));
                    }
                    _ => {}
                }
            }
        }
    }
    services
}

fn compose() -> Vec<Service> {
    let services = parse_compose(&read("docker-compose.yml"));
    assert!(!services.is_empty(), "docker-compose.yml has no services");
    services
}

/// The service publishing `port` on the host; exactly one must.
fn publisher(services: &[Service], port: u16) -> &Service {
    let found: Vec<&Service> = services.iter().filter(|s| s.publishes(port)).collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one service must publish port {port}: {:?}",
        found.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    found[0]
}

/// A URL or `host:port` split into (scheme, user, password, host, port, path).
#[derive(Debug, PartialEq)]
struct Address {
    scheme: String,
    user: Option<String>,
    password: Option<String>,
    host: String,
    port: u16,
    path: String,
}

fn parse_address(address: &str) -> Address {
    let (scheme, rest) = address.split_once("://").unwrap_or(("", address));
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (credentials, host_port) = match authority.rsplit_once('@') {
        Some((c, h)) => (Some(c), h),
        None => (None, authority),
    };
    let (user, password) = match credentials.map(|c| c.split_once(':').unwrap_or((c, ""))) {
        Some((u, p)) => (Some(u.to_owned()), Some(p.to_owned())),
        None => (None, None),
    };
    let (host, port) = host_port
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("no port in {address:?}"));
    Address {
        scheme: scheme.to_owned(),
        user,
        password,
        host: host.to_owned(),
        port: port
            .parse()
            .unwrap_or_else(|e| panic!("port of {address:?}: {e}")),
        path: path.to_owned(),
    }
}

/// Every `default_value = "..."` of the examples that names a broker (a URL or `host:port`).
fn example_defaults() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut found = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for piece in text.split("default_value = \"").skip(1) {
            let value = piece.split('"').next().unwrap();
            let looks_like_address = value.contains("://")
                || value
                    .rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
            if looks_like_address {
                let name = file.file_name().unwrap().to_string_lossy().into_owned();
                found.push((name, value.to_owned()));
            }
        }
    }
    found
}

/// The `export KEY=value ...` assignments of a text (shell comments and code blocks alike).
fn exported(text: &str) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    let mut continuing = false;
    for line in text.lines() {
        let line = line.trim_start_matches(['#', ' ']).trim();
        let words = if let Some(rest) = line.strip_prefix("export ") {
            rest
        } else if continuing {
            line
        } else {
            continue;
        };
        continuing = words.ends_with('\\');
        for word in words.trim_end_matches('\\').split_whitespace() {
            if let Some((k, v)) = word.split_once('=') {
                vars.insert(k.to_owned(), v.to_owned());
            }
        }
    }
    vars
}

fn is_loopback(host: &str) -> bool {
    matches!(host, "127.0.0.1" | "localhost")
}

#[test]
fn every_service_has_a_health_check() {
    for service in compose() {
        let test = service
            .healthcheck
            .get("test")
            .unwrap_or_else(|| panic!("service {} has no healthcheck test", service.name));
        assert!(
            test.contains("CMD"),
            "{}: healthcheck test {test:?}",
            service.name
        );
        for key in ["interval", "timeout", "retries"] {
            assert!(
                service.healthcheck.contains_key(key),
                "{}: healthcheck has no {key}",
                service.name
            );
        }
        assert!(!service.image().is_empty(), "{}: no image", service.name);
    }
}

#[test]
fn broker_addresses_the_examples_default_to_are_published() {
    let services = compose();
    let defaults = example_defaults();
    let mut schemes: Vec<&str> = Vec::new();
    for (example, value) in &defaults {
        let address = parse_address(value);
        assert!(
            is_loopback(&address.host),
            "{example}: default {value} is not on this machine"
        );
        let service = publisher(&services, address.port);
        match address.scheme.as_str() {
            // rdkafka bootstrap servers: Kafka in KRaft mode, advertised on this machine.
            "" => {
                assert!(service.image().starts_with("apache/kafka:"), "{service:?}");
                let roles = &service.environment["KAFKA_PROCESS_ROLES"];
                assert!(roles.contains("broker") && roles.contains("controller"));
                let advertised = &service.environment["KAFKA_ADVERTISED_LISTENERS"];
                assert!(
                    advertised.contains(&format!("localhost:{}", address.port))
                        || advertised.contains(&format!("127.0.0.1:{}", address.port)),
                    "Kafka advertises {advertised}, the examples use {value}"
                );
                schemes.push("kafka");
            }
            "amqp" => {
                assert!(service.image().starts_with("rabbitmq:"), "{service:?}");
                assert!(
                    service.image().contains("management"),
                    "RabbitMQ without the management UI"
                );
                assert!(service.publishes(15672), "management UI port 15672");
                let env = |key: &str, default: &str| {
                    service
                        .environment
                        .get(key)
                        .cloned()
                        .unwrap_or_else(|| default.into())
                };
                assert_eq!(
                    address.user.as_deref(),
                    Some(env("RABBITMQ_DEFAULT_USER", "guest").as_str()),
                    "{example}: user of {value} against RABBITMQ_DEFAULT_USER"
                );
                assert_eq!(
                    address.password.as_deref(),
                    Some(env("RABBITMQ_DEFAULT_PASS", "guest").as_str()),
                    "{example}: password of {value} against RABBITMQ_DEFAULT_PASS"
                );
                // `%2f` is the default virtual host `/`.
                assert_eq!(address.path, "/%2f", "{example}: vhost of {value}");
                assert_eq!(env("RABBITMQ_DEFAULT_VHOST", "/"), "/");
                schemes.push("amqp");
            }
            "nats" => {
                assert!(service.image().starts_with("nats:"), "{service:?}");
                let command = service.fields.get("command").cloned().unwrap_or_default();
                assert!(command.contains("\"-js\""), "NATS without JetStream");
                schemes.push("nats");
            }
            other => panic!("{example}: default {value} has an unexpected scheme {other:?}"),
        }
    }
    schemes.sort();
    schemes.dedup();
    assert_eq!(
        schemes,
        ["amqp", "kafka", "nats"],
        "example defaults found: {defaults:?}"
    );
}

#[test]
fn jaeger_receives_otlp_and_serves_its_ui() {
    let services = compose();
    // The OTLP exporters' default ports (gRPC, HTTP) and the Jaeger UI.
    for port in [4317, 4318, 16686] {
        let service = publisher(&services, port);
        assert!(
            service.image().starts_with("jaegertracing/"),
            "port {port} is published by {service:?}"
        );
        assert!(
            service.ports.contains(&(port, port)),
            "{port} maps to itself"
        );
    }
    let sqs = services
        .iter()
        .find(|s| s.image().contains("elasticmq") || s.image().contains("localstack"))
        .expect("an SQS emulator (ElasticMQ or LocalStack)");
    assert!(!sqs.ports.is_empty(), "the SQS emulator publishes no port");
}

#[test]
fn documented_environment_points_at_the_stack() {
    let services = compose();
    let defaults = example_defaults();
    let default_of = |example_prefix: &str| {
        defaults
            .iter()
            .find(|(example, _)| example.starts_with(example_prefix))
            .map(|(_, value)| value.clone())
            .unwrap_or_else(|| panic!("no default address in examples/{example_prefix}*"))
    };
    for (origin, text) in [
        ("docker-compose.yml", read("docker-compose.yml")),
        ("README.md", read("README.md")),
    ] {
        let vars = exported(&text);
        for key in [
            "KAFKA_BROKERS",
            "AMQP_URL",
            "NATS_URL",
            "AWS_ENDPOINT_URL",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ] {
            let value = vars
                .get(key)
                .unwrap_or_else(|| panic!("{origin} does not export {key}: {vars:?}"));
            let address = parse_address(value);
            assert!(is_loopback(&address.host), "{origin}: {key}={value}");
            let service = publisher(&services, address.port);
            let expected_image = match key {
                "KAFKA_BROKERS" => "apache/kafka:",
                "AMQP_URL" => "rabbitmq:",
                "NATS_URL" => "nats:",
                "AWS_ENDPOINT_URL" => "softwaremill/elasticmq",
                _ => "jaegertracing/",
            };
            assert!(
                service.image().starts_with(expected_image),
                "{origin}: {key}={value} reaches {service:?}"
            );
        }
        // The same addresses the examples use with no flags.
        assert_eq!(vars["KAFKA_BROKERS"], default_of("kafka_"), "{origin}");
        assert_eq!(vars["AMQP_URL"], default_of("amqp_"), "{origin}");
        assert_eq!(vars["NATS_URL"], default_of("nats_"), "{origin}");
        // ElasticMQ accepts any credentials, but the SDK wants some and a region.
        for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"] {
            assert!(vars.contains_key(key), "{origin} does not export {key}");
        }
    }
}

#[test]
fn compose_client_accepts_the_file() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml");
    // `docker-compose` (v1) validates without an engine; `docker compose` (v2) too.
    let attempts: [(&str, &[&str]); 2] = [("docker-compose", &[]), ("docker", &["compose"])];
    for (program, prefix) in attempts {
        let output = Command::new(program)
            .args(prefix)
            .arg("-f")
            .arg(&file)
            .args(["config", "-q"])
            .output();
        match output {
            Ok(output) if output.status.success() => return,
            Ok(output) => {
                let stderr = String::from_utf8_lossy(&output.stderr);
                // `docker` without the compose plugin: try the next client.
                if program == "docker" && stderr.contains("unknown") {
                    continue;
                }
                panic!("{program} rejects docker-compose.yml: {stderr}");
            }
            Err(_) => continue,
        }
    }
    eprintln!("no compose client installed: docker-compose.yml checked as text only");
}
