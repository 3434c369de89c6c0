//! The token never appears in logs, errors, `state show` or the state file.

use std::collections::HashMap;
use std::time::Duration;

use auditrelay::simulator::FaultUpdate;

use crate::common::*;

#[test]
fn a_debug_run_never_prints_the_token() {
    let sim = Sim::backlog(300);
    let work = Workdir::new();
    // A token file, read at start; the daemon logs at debug level and hits
    // an auth failure, a server error and a truncated page on the way.
    let token_file = work.path("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let text = std::fs::read_to_string(work.config(&sim.base_url, ""))
        .unwrap()
        .replace(
            &format!("token = \"{TOKEN}\""),
            &format!("token_file = \"{}\"", token_file.display()),
        );
    let config = work.write_config(&text);
    sim.faults(FaultUpdate {
        revoke_token: Some(TOKEN.into()),
        ..FaultUpdate::default()
    });
    let daemon = Daemon::start_with_env(
        &config,
        work.path("daemon.log"),
        &[("AUDITRELAY__LOG__LEVEL", "debug")],
    );
    wait_until(Duration::from_secs(30), "an auth failure", || {
        sim.status_count(401) >= 1
    });
    sim.faults(FaultUpdate {
        restore_token: Some(TOKEN.into()),
        fail_next: Some(1),
        truncate_next: Some(1),
        ..FaultUpdate::default()
    });
    wait_until(Duration::from_secs(60), "all events", || {
        Delivered::count(&work.out()) >= 300
    });
    let logs = daemon.logs();
    assert!(daemon.terminate().success());

    assert!(logs.contains("DEBUG"), "the run logged at debug level");
    assert!(logs.contains("asana rejected the token"), "{logs}");
    assert!(!logs.contains(TOKEN), "the token is in the logs");
    let (code, show, err) = run_cli(
        &["state", "show", "--config", config.to_str().unwrap()],
        &HashMap::new(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(show.contains("asana_it"), "{show}");
    assert!(!show.contains(TOKEN));
    for entry in std::fs::read_dir(work.path("state")).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let found = bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes());
        assert!(!found, "the token is in {}", path.display());
    }
}
