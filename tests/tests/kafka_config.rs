//! Kafka client settings pass through to librdkafka (`--kafka-property`, env
//! `KAFKA_PROPERTIES`): a property librdkafka does not know, or a value it refuses, stops the
//! service in one line naming it; SASL/SCRAM runs for real against a broker that requires it.
//! (The test broker cannot serve TLS — tansu 0.6.0 refuses `--cert` together with `--key` —
//! so TLS is checked as far as the client's configuration goes.)

use std::process::Command;

use integration_tests::bin;

fn collector(props: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(bin("collector"));
    cmd.args(["--source", "simulated", "--sim-gpus-per-node", "1"])
        .args([
            "--brokers",
            "127.0.0.1:1",
            "--rounds",
            "1",
            "--interval",
            "10ms",
        ])
        .args(["--drain-timeout", "1s"])
        .env("SERVICE_TOKEN", "kafka-config-token-0123456789")
        .env("RUST_LOG", "off");
    for p in props {
        cmd.args(["--kafka-property", p]);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_unknown_property_or_an_unavailable_protocol_stops_the_collector_in_one_line() {
    let (code, stderr) = collector(&["no.such.property=1"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no.such.property"), "{stderr}");

    // A protocol librdkafka does not have: said, not ignored.
    let (code, stderr) = collector(&["security.protocol=QUIC"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("security.protocol"), "{stderr}");

    // TLS is built in (OpenSSL): a CA file that is not there is refused at once, named.
    let (code, stderr) = collector(&[
        "security.protocol=SSL",
        "ssl.ca.location=/nonexistent/ca.pem",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("ssl.ca.location"), "{stderr}");

    // A malformed one: one line naming it, without the value.
    let (code, stderr) = collector(&["sasl password=hunter2"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "collector: --kafka-property: \"sasl password\" is not a librdkafka property name"
    );
}

#[test]
fn sasl_plain_is_accepted_and_the_password_never_printed() {
    let (code, stderr) = collector(&[
        "security.protocol=SASL_PLAINTEXT",
        "sasl.mechanisms=PLAIN",
        "sasl.username=collector",
        "sasl.password=pw,0123456789abcdef",
    ]);
    // Configured and started: one round sampled, nothing delivered (no broker there).
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("collector stopped: rounds=1"), "{stderr}");
    assert!(!stderr.contains("0123456789abcdef"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_broker_requiring_scram_the_pipeline_runs_and_a_wrong_password_is_said_not_printed()
{
    use integration_tests::{Broker, Names, Proc, args, eventually, free_port, get_json};
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let (collector_pw, streamer_pw) = ("collector-pw-0123456789", "streamer-pw-0123456789");
    let broker = Broker::start_scram(
        dir.path(),
        &[("collector", collector_pw), ("streamer", streamer_pw)],
    );
    let props = |user: &str, pw: &str| {
        format!(
            "security.protocol=SASL_PLAINTEXT\nsasl.mechanisms=SCRAM-SHA-512\nsasl.username={user}\nsasl.password={pw}"
        )
    };
    let n = Names::fresh("scram");
    let grpc = free_port();
    let mut streamer = integration_tests::spawn_streamer_with(
        &broker,
        &n,
        grpc,
        &[],
        &[
            ("SERVICE_TOKEN", n.token.clone()),
            ("KAFKA_PROPERTIES", props("streamer", streamer_pw)),
        ],
    );
    let (_api, base) = integration_tests::spawn_api(&n, grpc);
    let collector_args = |topic: &str| integration_tests::simulated_collector_args(&broker, topic);
    let env = |pw: &str| {
        vec![
            ("SERVICE_TOKEN", n.token.clone()),
            ("KAFKA_PROPERTIES", props("collector", pw)),
        ]
    };
    let mut good = Proc::spawn(
        "collector",
        &integration_tests::bin("collector"),
        &collector_args(&n.topic),
        &env(collector_pw),
    );
    let http = reqwest::Client::new();
    eventually(
        Duration::from_secs(60),
        "samples through the SCRAM-authenticated broker",
        || async {
            let (_, gpus) = get_json(&http, &format!("{base}/api/v1/gpus"), Some(&n.api_key)).await;
            (gpus["count"] == 2 && gpus["gpus"][0]["sample_count"].as_u64() >= Some(3))
                .then_some(())
        },
    )
    .await;

    // A wrong password: the service says so (librdkafka's log, through ours), delivers
    // nothing, and never prints a password.
    let mut bad = Proc::spawn(
        "collector",
        &integration_tests::bin("collector"),
        &[
            collector_args(&n.topic),
            args(&["--rounds", "3", "--drain-timeout", "2s"]),
        ]
        .concat(),
        &env("wrong-pw-0123456789"),
    );
    let said = bad.wait_line("SASL authentication error", Duration::from_secs(30));
    assert!(said.contains("SCRAM"), "{said}");
    let summary = bad.wait_line("collector stopped:", Duration::from_secs(30));
    assert!(summary.contains("published=0"), "{summary}");
    good.term();
    good.wait_line("collector stopped:", Duration::from_secs(30));
    let mut all: Vec<String> = Vec::new();
    for p in [&mut streamer, &mut good, &mut bad] {
        all.extend(p.lines_so_far().iter().cloned());
    }
    for pw in [collector_pw, streamer_pw, "wrong-pw-0123456789"] {
        assert!(
            !all.iter().any(|l| l.contains(pw)),
            "a password in the logs"
        );
    }
}
