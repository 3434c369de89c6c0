use super::*;

fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("auditrelay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const MINIMAL: &str = r#"
[state]
path = "/tmp/x/state.db"
[sources.main]
kind = "asana"
workspace_gid = "1200000000000000"
token = "inline-token"
[sinks.out]
kind = "stdout"
"#;

fn problems(text: &str, vars: &[(&str, &str)]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let err = load_with_env(&write(&dir, text), env(vars)).unwrap_err();
    err.problems.iter().map(ToString::to_string).collect()
}

#[test]
fn example_config_is_valid_and_complete() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/auditrelay.example.toml"
    ));
    let config = load_with_env(
        path,
        env(&[
            ("ASANA_TOKEN", "example-token"),
            ("ANAPLAN_PASSWORD", "example-password"),
        ]),
    )
    .unwrap();
    assert_eq!(config.sources.len(), 2);
    let anaplan = config
        .sources
        .iter()
        .find_map(|s| match s {
            SourceConfig::Anaplan(a) => Some(a),
            SourceConfig::Asana(_) => None,
        })
        .unwrap();
    assert_eq!(anaplan.overlap, Duration::from_secs(600));
    assert_eq!(anaplan.parallel_pages, 4);
    assert!(matches!(
        &anaplan.credentials,
        crate::config::AnaplanCredentials::Basic { user, password }
            if user == "auditor@example.com" && password.expose() == "example-password"
    ));
    let SourceConfig::Asana(asana) = &config.sources[1] else {
        panic!("not asana")
    };
    assert_eq!(asana.id, "asana_main");
    assert_eq!(asana.token.expose(), "example-token");
    assert_eq!(asana.poll_interval, Duration::from_secs(30));
    assert_eq!(
        asana.start_at,
        StartAt::Lookback(Duration::from_secs(7 * 86400))
    );
    assert_eq!(asana.requests_per_minute, 1500);
    assert_eq!(asana.enrich, crate::enrich::EnrichConfig::default());
    assert_eq!(config.http.listen, Some("127.0.0.1:9464".parse().unwrap()));
    assert_eq!(config.sinks.len(), 4);
    let file = config.sinks.iter().find(|s| s.id == "archive").unwrap();
    match &file.kind {
        SinkKind::File(f) => assert_eq!(f.max_bytes, 100 << 20),
        other => panic!("{other:?}"),
    }
}

#[test]
fn defaults_fill_a_minimal_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = load_with_env(&write(&dir, MINIMAL), env(&[])).unwrap();
    let SourceConfig::Asana(asana) = &config.sources[0] else {
        panic!("not asana")
    };
    assert_eq!(asana.page_size, 100);
    assert_eq!(asana.base_url, "https://app.asana.com/api/1.0");
    assert_eq!(config.state.dedup_window, Duration::from_secs(86400));
    assert_eq!(config.sinks[0].batch_size, 500);
    // A file sink's batches end with an fsync: larger by default.
    let file = MINIMAL.replace("kind = \"stdout\"", "kind = \"file\"\npath = \"out.jsonl\"");
    let config = load_with_env(&write(&dir, &file), env(&[])).unwrap();
    assert_eq!(config.sinks[0].batch_size, 1000);
    // So do a Kafka sink's, which end with a wait for every report.
    let kafka = MINIMAL.replace(
        "kind = \"stdout\"",
        "kind = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\ntopic = \"t\"",
    );
    let config = load_with_env(&write(&dir, &kafka), env(&[])).unwrap();
    assert_eq!(config.sinks[0].batch_size, 1000);
    assert_eq!(asana.requests_per_minute, 1500);
    assert_eq!(asana.enrich, crate::enrich::EnrichConfig::default());
    assert!(asana.enrich.enabled);
    assert_eq!(asana.enrich.bound, Duration::from_secs(2));
}

#[test]
fn enrichment_and_the_rate_budget_are_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{MINIMAL}\n[sources.main.enrich]\nttl = \"6h\"\nnegative_ttl = \"10m\"\nbound = \"500ms\"\n"
    )
    .replace(
        "token = \"inline-token\"",
        "token = \"inline-token\"\nrequests_per_minute = 150",
    );
    let vars = env(&[("AUDITRELAY__SOURCES__MAIN__ENRICH__ENABLED", "false")]);
    let config = load_with_env(&write(&dir, &text), vars).unwrap();
    let SourceConfig::Asana(asana) = &config.sources[0] else {
        panic!("not asana")
    };
    assert_eq!(asana.requests_per_minute, 150);
    assert_eq!(
        asana.enrich,
        crate::enrich::EnrichConfig {
            enabled: false,
            ttl: Duration::from_secs(6 * 3600),
            negative_ttl: Duration::from_secs(600),
            bound: Duration::from_millis(500),
        }
    );
}

#[test]
fn enrichment_problems_name_their_key() {
    let text = format!(
        "{MINIMAL}\n[sources.main.enrich]\nttl = \"0s\"\nnegative_ttl = \"sometimes\"\nbound = \"5m\"\ncolour = 1\n"
    )
    .replace(
        "token = \"inline-token\"",
        "token = \"inline-token\"\nrequests_per_minute = 0",
    );
    let found = problems(&text, &[]);
    let expect = [
        "sources.main.requests_per_minute: must be at least 1",
        "sources.main.enrich.ttl: must be longer than zero",
        "sources.main.enrich.negative_ttl: ",
        "sources.main.enrich.bound: 5m is outside (0s, 30s]",
        "sources.main.enrich.colour: unknown key",
    ];
    for needle in expect {
        assert!(
            found.iter().any(|p| p.starts_with(needle)),
            "no {needle:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), expect.len(), "{found:#?}");
}

#[test]
fn environment_overrides_file_values_with_type_coercion() {
    let dir = tempfile::tempdir().unwrap();
    let vars = env(&[
        ("AUDITRELAY__SOURCES__MAIN__PAGE_SIZE", "25"),
        ("AUDITRELAY__SOURCES__MAIN__POLL_INTERVAL", "250ms"),
        ("AUDITRELAY__LOG__LEVEL", "debug"),
        ("UNRELATED", "x"),
    ]);
    let config = load_with_env(&write(&dir, MINIMAL), vars).unwrap();
    let SourceConfig::Asana(asana) = &config.sources[0] else {
        panic!("not asana")
    };
    assert_eq!(asana.page_size, 25);
    assert_eq!(asana.poll_interval, Duration::from_millis(250));
    assert_eq!(config.log.level, "debug");
}

#[test]
fn every_problem_is_reported_with_its_key() {
    let text = r#"
colour = "blue"
[state]
path = "/tmp/x/state.db"
max_outbox_events = "lots"
[sources.main]
kind = "asana"
workspace_gid = "1200000000000000"
page_size = 500
poll_interval = "soon"
typo_key = 1
[sinks.out]
kind = "file"
"#;
    let found = problems(text, &[]);
    let expect = [
        "colour: unknown key",
        "state.max_outbox_events: expected",
        "sources.main.poll_interval:",
        "sources.main.typo_key: unknown key",
        "sinks.out.path: required",
    ];
    for needle in expect {
        assert!(
            found.iter().any(|p| p.starts_with(needle)),
            "no {needle:?} in {found:#?}"
        );
    }
    // page_size is only checked once the keys before it parse; the loader
    // must still get there after removing the bad ones.
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("sources.main: one of `token`")),
        "{found:#?}"
    );
}

#[test]
fn range_and_token_errors_name_the_key() {
    let text = MINIMAL.replace(
        "token = \"inline-token\"",
        "page_size = 0\ntoken_file = \"/nonexistent/token\"",
    );
    let found = problems(&text, &[]);
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("sources.main.page_size: 0 is outside")),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("sources.main.token_file: cannot read the file: No such file")),
        "{found:#?}"
    );
    let text = MINIMAL.replace("token = \"inline-token\"", "token_env = \"NOPE\"");
    let found = problems(&text, &[]);
    assert!(
        found.iter().any(|p| p.contains("\"NOPE\" is not set")),
        "{found:#?}"
    );
}

#[test]
fn env_problems_name_the_variable() {
    let found = problems(MINIMAL, &[("AUDITRELAY__SINKS__OUT__COLOUR", "red")]);
    assert_eq!(
        found,
        ["sinks.out.colour: unknown key `colour`, expected one of `kind`, `batch_size`, `retry_initial`, `retry_max` (from environment variable AUDITRELAY__SINKS__OUT__COLOUR)"]
    );
}

#[test]
fn unknown_kinds_and_bad_ids_are_reported() {
    let text = MINIMAL
        .replace("kind = \"stdout\"", "kind = \"pigeon\"")
        .replace("[sources.main]", "[sources.Main]");
    let found = problems(&text, &[]);
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("sinks.out.kind: unknown sink kind \"pigeon\"")),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("sources.Main: ids may use only")),
        "{found:#?}"
    );
}

#[test]
fn syntax_errors_and_missing_files_are_problems_too() {
    let found = problems("[state\npath = 1", &[]);
    assert_eq!(found.len(), 1);
    assert!(
        found[0].starts_with("cannot read the configuration"),
        "{found:#?}"
    );
    let err = load_with_env(Path::new("/nonexistent/auditrelay.toml"), env(&[])).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/auditrelay.toml"),
        "{err}"
    );
}

#[test]
fn errors_never_contain_the_token() {
    const TOKEN: &str = "s3cr3t-value";
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // A syntax error on the token's own line: the TOML parser quotes it.
        MINIMAL.replace("token = \"inline-token\"", &format!("token = \"{TOKEN}")),
        // Other problems next to a valid token.
        MINIMAL.replace(
            "token = \"inline-token\"",
            &format!("token = \"{TOKEN}\"\npage_size = 0\ncolour = 1"),
        ),
        // The token pasted where a variable name or a path belongs.
        MINIMAL.replace(
            "token = \"inline-token\"",
            &format!("token_env = \"2/1200/{TOKEN}:x\""),
        ),
        MINIMAL.replace(
            "token = \"inline-token\"",
            &format!("token_file = \"2/1200/{TOKEN}:x\""),
        ),
        // A token that cannot go into an HTTP header.
        MINIMAL.replace(
            "token = \"inline-token\"",
            &format!("token = \"{TOKEN}\\n\""),
        ),
    ];
    for text in cases {
        let err = load_with_env(&write(&dir, &text), env(&[])).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!err.problems.is_empty());
        assert!(!shown.contains(TOKEN), "the token leaked: {shown}");
    }
    let ok = load_with_env(&write(&dir, MINIMAL), env(&[])).unwrap();
    assert!(!format!("{ok:?}").contains("inline-token"));
}

#[test]
fn syntax_errors_keep_their_position() {
    let found = problems("[state]\npath = \"unterminated", &[]);
    assert_eq!(found.len(), 1);
    assert!(found[0].contains("line 2"), "{found:#?}");
    assert!(!found[0].contains('\n'), "one line: {found:#?}");
}

#[test]
fn log_levels_must_be_levels() {
    for good in ["info", "auditrelay=debug,info", "warn,hyper=off", "DEBUG"] {
        let text = format!("{MINIMAL}\n[log]\nlevel = \"{good}\"\n");
        let dir = tempfile::tempdir().unwrap();
        load_with_env(&write(&dir, &text), env(&[])).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    let found = problems(&format!("{MINIMAL}\n[log]\nlevel = \"verbose\"\n"), &[]);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("log.level: \"verbose\" is neither a level"),
        "{found:#?}"
    );
}

#[test]
fn syslog_options_are_checked() {
    let sink =
        |lines: &str| MINIMAL.replace("kind = \"stdout\"", &format!("kind = \"syslog\"\n{lines}"));
    let found = problems(
        &sink(
            "transport = \"udp\"\nframing = \"lf\"\nfacility = \"local9\"\nmax_message_bytes = 100",
        ),
        &[],
    );
    for needle in [
        "sinks.out.address: required",
        "sinks.out.framing: only applies",
        "sinks.out.facility: \"local9\" is not a syslog facility",
        "sinks.out.max_message_bytes: must be at least 480",
    ] {
        assert!(
            found.iter().any(|p| p.starts_with(needle)),
            "no {needle:?} in {found:#?}"
        );
    }
    let found = problems(
        &sink("address = \"siem.example:6514\"\ntransport = \"tls\"\nframing = \"lf\"\n[sinks.out.tls]\nca_file = \"/nonexistent/ca.pem\"\ncert_file = \"/x.pem\""),
        &[],
    );
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("sinks.out.framing: TLS uses octet counting")),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p
                .starts_with("sinks.out.tls: cannot read certificates from /nonexistent/ca.pem")),
        "{found:#?}"
    );
    let found = problems(
        &sink("address = \"siem.example:6514\"\n[sinks.out.tls]\nserver_name = \"x\""),
        &[],
    );
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("sinks.out.tls: only applies")),
        "{found:#?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = load_with_env(
        &write(
            &dir,
            &sink("address = \"siem.example:6514\"\nframing = \"lf\""),
        ),
        env(&[]),
    )
    .unwrap();
    match &config.sinks[0].kind {
        SinkKind::Syslog(s) => {
            assert!(matches!(s.transport, crate::sink::syslog::Transport::TcpLf));
            assert_eq!(s.header.facility, 16);
            assert_eq!(s.max_message_bytes, 64 << 10);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn kafka_options_are_checked_by_librdkafka_too() {
    let sink =
        |lines: &str| MINIMAL.replace("kind = \"stdout\"", &format!("kind = \"kafka\"\n{lines}"));
    let found = problems(
        &sink("brokers = \"127.0.0.1:9092\"\ncompression = \"brotli\"\ntopic = \"a b\"\n[sinks.out.properties]\n\"acks\" = \"0\"\n\"sasl.password\" = \"hunter2-pass\""),
        &[],
    );
    for needle in [
        "sinks.out.compression: \"brotli\" is not one of",
        "sinks.out.topic: \"a b\" does not make a valid topic name",
        "sinks.out.properties.acks: not configurable",
    ] {
        assert!(
            found.iter().any(|p| p.starts_with(needle)),
            "no {needle:?} in {found:#?}"
        );
    }
    assert!(
        found.iter().all(|p| !p.contains("hunter2-pass")),
        "{found:#?}"
    );
    let found = problems(
        &sink("brokers = \"127.0.0.1:9092\"\n[sinks.out.properties]\n\"no.such.property\" = \"hunter2-pass\""),
        &[],
    );
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("sinks.out.properties: ") && found[0].contains("no.such.property"),
        "{found:#?}"
    );
    assert!(!found[0].contains("hunter2-pass"), "{found:#?}");
    let dir = tempfile::tempdir().unwrap();
    let config = load_with_env(
        &write(&dir, &sink("brokers = \"127.0.0.1:9092\"\n[sinks.out.properties_env]\n\"sasl.password\" = \"KAFKA_PW\"")),
        env(&[("KAFKA_PW", "hunter2-pass")]),
    )
    .unwrap();
    assert!(
        !format!("{config:?}").contains("hunter2-pass"),
        "properties are secrets"
    );

    // The same from a systemd credential.
    std::fs::write(dir.path().join("kafka-password"), "cred-pass\n").unwrap();
    let creds = dir.path().to_str().unwrap();
    let text = sink("brokers = \"127.0.0.1:9092\"\n[sinks.out.properties_credential]\n\"sasl.password\" = \"kafka-password\"");
    let config = load_with_env(
        &write(&dir, &text),
        env(&[("CREDENTIALS_DIRECTORY", creds)]),
    )
    .unwrap();
    let SinkKind::Kafka(kafka) = &config.sinks[0].kind else {
        panic!("not kafka")
    };
    let (name, value) = &kafka.properties[0];
    assert_eq!(
        (name.as_str(), value.expose()),
        ("sasl.password", "cred-pass")
    );
    let found = problems(
        &text.replace("\"sasl.password\"", "\"acks\""),
        &[("CREDENTIALS_DIRECTORY", creds)],
    );
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("sinks.out.properties.acks: not configurable")),
        "{found:#?}"
    );
}

#[test]
fn byte_sizes() {
    assert_eq!(raw::parse_byte_size("100MiB"), Ok(100 << 20));
    assert_eq!(raw::parse_byte_size("10 MB"), Ok(10_000_000));
    assert_eq!(raw::parse_byte_size("512"), Ok(512));
    assert!(raw::parse_byte_size("10 parsecs").is_err());
    assert!(raw::parse_byte_size("MiB").is_err());
}

#[test]
fn fingerprints_change_with_settings_credentials_and_files_only_where_they_changed() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "first-token").unwrap();
    let text = format!(
        r#"
[state]
path = "/tmp/x/state.db"
[sources.main]
kind = "asana"
workspace_gid = "1200000000000000"
token_file = "{token}"
[sinks.out]
kind = "stdout"
[sinks.extra]
kind = "file"
path = "/tmp/x/out.jsonl"
batch_size = 10
"#,
        token = token.display()
    );
    let load = |text: &str| {
        load_with_env(&write(&dir, text), env(&[]))
            .unwrap()
            .fingerprints
    };
    let before = load(&text);
    assert_eq!(before.len(), 3);
    assert_eq!(
        load(&text),
        before,
        "loading twice must give the same digests"
    );

    std::fs::write(&token, "rotated-token").unwrap();
    let rotated = load(&text);
    assert_ne!(rotated["sources.main"], before["sources.main"]);
    assert_eq!(rotated["sinks.out"], before["sinks.out"]);

    let resized = load(&text.replace("batch_size = 10", "batch_size = 20"));
    assert_ne!(resized["sinks.extra"], rotated["sinks.extra"]);
    assert_eq!(resized["sinks.out"], rotated["sinks.out"]);
    assert_eq!(resized["sources.main"], rotated["sources.main"]);
}

#[test]
fn a_credential_is_read_from_the_credentials_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("asana-token"), "cred-token\n").unwrap();
    let text = MINIMAL.replace(
        "token = \"inline-token\"",
        "token_credential = \"asana-token\"",
    );
    let creds = dir.path().to_str().unwrap();
    let config = load_with_env(
        &write(&dir, &text),
        env(&[("CREDENTIALS_DIRECTORY", creds)]),
    )
    .unwrap();
    let SourceConfig::Asana(asana) = &config.sources[0] else {
        panic!("not asana")
    };
    assert_eq!(asana.token.expose(), "cred-token");

    let found = problems(
        &text.replace("asana-token", "../etc/passwd"),
        &[("CREDENTIALS_DIRECTORY", creds)],
    );
    assert_eq!(
        found,
        ["sources.main.token_credential: must be a credential name (letters, digits, '_', '-', '.', '@', ':')"]
    );
    let found = problems(
        &text.replace("asana-token", "missing"),
        &[("CREDENTIALS_DIRECTORY", creds)],
    );
    assert!(
        found[0].starts_with("sources.main.token_credential: cannot read credential \"missing\""),
        "{found:?}"
    );
}

#[test]
fn parallel_slices_are_on_by_default_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let config = load_with_env(&write(&dir, MINIMAL), env(&[])).unwrap();
    let SourceConfig::Asana(asana) = &config.sources[0] else {
        panic!("not asana")
    };
    assert_eq!(
        asana.parallel_slices,
        crate::config::DEFAULT_PARALLEL_SLICES
    );
    assert_eq!(asana.backfill_threshold, Duration::from_secs(3600));
    let vars = env(&[
        ("AUDITRELAY__SOURCES__MAIN__PARALLEL_SLICES", "1"),
        ("AUDITRELAY__SOURCES__MAIN__BACKFILL_THRESHOLD", "6h"),
    ]);
    let config = load_with_env(&write(&dir, MINIMAL), vars).unwrap();
    let SourceConfig::Asana(asana) = &config.sources[0] else {
        panic!("not asana")
    };
    assert_eq!(asana.parallel_slices, 1);
    assert_eq!(asana.backfill_threshold, Duration::from_secs(6 * 3600));

    let text = MINIMAL.replace(
        "token = \"inline-token\"",
        "token = \"inline-token\"\nparallel_slices = 0\nbackfill_threshold = \"0s\"",
    );
    let found = problems(&text, &[]);
    for needle in [
        "sources.main.parallel_slices: 0 is outside 1..=32",
        "sources.main.backfill_threshold: must be longer than zero",
    ] {
        assert!(
            found.iter().any(|p| p.starts_with(needle)),
            "{needle:?} not in {found:?}"
        );
    }
    let text = MINIMAL.replace(
        "token = \"inline-token\"",
        "token = \"inline-token\"\nparallel_slices = 33",
    );
    assert!(problems(&text, &[])
        .iter()
        .any(|p| p.starts_with("sources.main.parallel_slices: 33 is outside")));
}

#[test]
fn anaplan_parallel_pages_defaults_to_4_and_stays_within_1_to_16() {
    let text = r#"
[state]
path = "/tmp/x/state.db"
[sources.ap]
kind = "anaplan"
token = "inline-token"
[sinks.out]
kind = "stdout"
"#;
    let parallel_pages = |vars: &[(&str, &str)]| {
        let dir = tempfile::tempdir().unwrap();
        let config = load_with_env(&write(&dir, text), env(vars)).unwrap();
        match &config.sources[0] {
            SourceConfig::Anaplan(anaplan) => anaplan.parallel_pages,
            SourceConfig::Asana(_) => panic!("not anaplan"),
        }
    };
    assert_eq!(parallel_pages(&[]), 4);
    assert_eq!(
        parallel_pages(&[("AUDITRELAY__SOURCES__AP__PARALLEL_PAGES", "16")]),
        16
    );
    for bad in ["0", "17"] {
        let found = problems(
            &text.replace(
                "kind = \"anaplan\"",
                &format!("kind = \"anaplan\"\nparallel_pages = {bad}"),
            ),
            &[],
        );
        let expected = format!("sources.ap.parallel_pages: {bad} is outside 1..=16");
        assert!(
            found.iter().any(|p| p.starts_with(&expected)),
            "no {expected:?} in {found:#?}"
        );
    }
}
