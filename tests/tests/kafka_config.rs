//! Kafka client settings pass through to librdkafka (`--kafka-property`, env
//! `KAFKA_PROPERTIES`): a property librdkafka does not know, or a security protocol this build
//! lacks, stops the service in one line naming it; SASL/PLAIN is accepted as configured.
//! (The test broker speaks no SASL, so the handshake itself is not exercised here.)

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

    // This build has no TLS (the rdkafka `ssl` feature is off): said, not ignored.
    let (code, stderr) = collector(&["security.protocol=SSL"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("security.protocol"), "{stderr}");

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
