//! A bad configuration exits 78 and names every problem.

use std::collections::HashMap;

use crate::common::*;

const GOOD: &str = r#"
[state]
path = "/tmp/auditrelay-it-never-created/state.db"
[sources.main]
kind = "asana"
workspace_gid = "1200000000000000"
token = "config-test-token"
[sinks.out]
kind = "stdout"
"#;

/// Runs `run` and `check --offline` on a bad config; both must refuse the
/// same way. (A good config would start the daemon: see the test above.)
fn check(text: &str, env: &[(&str, &str)]) -> (i32, String) {
    let work = Workdir::new();
    let config = work.write_config(text);
    let env: HashMap<&str, &str> = env.iter().copied().collect();
    // `run` must refuse before doing anything; `check --offline` the same.
    let (code, _, run_err) = run_cli(&["run", "--config", config.to_str().unwrap()], &env);
    let (check_code, _, check_err) = run_cli(
        &["check", "--offline", "--config", config.to_str().unwrap()],
        &env,
    );
    assert_eq!(
        code, check_code,
        "run and check disagree:\n{run_err}\n{check_err}"
    );
    assert_eq!(run_err, check_err);
    (code, run_err)
}

#[test]
fn a_good_config_passes_offline_check() {
    let work = Workdir::new();
    let config = work.write_config(GOOD);
    let (code, out, err) = run_cli(
        &["check", "--offline", "--config", config.to_str().unwrap()],
        &HashMap::new(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configuration valid"), "{out}");
}

#[test]
fn unknown_key() {
    let (code, err) = check(
        &GOOD.replace("[sinks.out]", "[sinks.out]\ncolour = \"red\""),
        &[],
    );
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("sinks.out.colour: unknown key"), "{err}");
}

#[test]
fn wrong_type() {
    let (code, err) = check(
        &GOOD.replace("kind = \"asana\"", "kind = \"asana\"\npage_size = \"many\""),
        &[],
    );
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("sources.main.page_size: expected"), "{err}");
}

#[test]
fn missing_token() {
    let (code, err) = check(&GOOD.replace("token = \"config-test-token\"", ""), &[]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("sources.main: one of `token`, `token_file`, `token_env` or `token_credential` is required"),
        "{err}"
    );
}

#[test]
fn unreadable_token_file() {
    let work = Workdir::new();
    // A directory cannot be read as a file, even by root.
    let dir = work.path("token-dir");
    std::fs::create_dir(&dir).unwrap();
    let text = GOOD.replace(
        "token = \"config-test-token\"",
        &format!("token_file = \"{}\"", dir.display()),
    );
    let (code, err) = check(&text, &[]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("sources.main.token_file: cannot read the file: Is a directory"),
        "{err}"
    );
}

#[test]
fn two_problems_at_once_and_one_from_the_environment() {
    let text = GOOD
        .replace("token = \"config-test-token\"", "")
        .replace("kind = \"stdout\"", "kind = \"stdout\"\nbatch_size = 0");
    let (code, err) = check(
        &text,
        &[("AUDITRELAY__SOURCES__MAIN__POLL_INTERVAL", "soon")],
    );
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("3 problems"), "{err}");
    assert!(err.contains("sources.main: one of `token`"), "{err}");
    assert!(err.contains("sinks.out.batch_size: 0 is outside"), "{err}");
    assert!(
        err.contains("sources.main.poll_interval:")
            && err.contains("environment variable AUDITRELAY__SOURCES__MAIN__POLL_INTERVAL"),
        "{err}"
    );
}

#[test]
fn missing_file() {
    let (code, _, err) = run_cli(
        &["run", "--config", "/nonexistent/auditrelay.toml"],
        &HashMap::new(),
    );
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("/nonexistent/auditrelay.toml"), "{err}");
}

#[test]
fn http_listen_must_be_an_address() {
    let (code, err) = check(&format!("{GOOD}\n[http]\nlisten = \"localhost\"\n"), &[]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("http.listen: \"localhost\" is not an address"),
        "{err}"
    );
}
