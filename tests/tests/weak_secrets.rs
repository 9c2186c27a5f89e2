//! Weak secrets are refused by every binary at startup, with one line saying which secret,
//! where it came from and why, before any socket is bound; `--allow-weak-secrets` lets a
//! throwaway demo through; the seed's generators' values always pass.

use std::process::Command;

use integration_tests::bin;

/// Runs `name` with `args` and `env` (and nothing else from the environment that could
/// carry a secret) until it exits; returns (exit code, stdout, stderr).
fn run(name: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin(name));
    cmd.args(args)
        .current_dir(dir.path())
        .env_remove("API_KEY")
        .env_remove("SERVICE_TOKEN")
        .env_remove("SECRET_DIR")
        .env("RUST_LOG", "off");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_binary_refuses_a_short_or_placeholder_secret_before_binding_anything() {
    let cases = [
        (
            "api",
            vec![
                "--embedded",
                "--listen",
                "127.0.0.1:0",
                "--source",
                "simulated",
            ],
            ("API_KEY", "short"),
            "api: API key from env API_KEY is refused: it is 5 characters, fewer than 16. Make a strong one with `openssl rand -hex 32` (or pass --allow-weak-secrets for a throwaway demo)",
        ),
        (
            "api",
            vec![
                "--embedded",
                "--listen",
                "127.0.0.1:0",
                "--source",
                "simulated",
            ],
            ("API_KEY", "your-secure-api-key-here"),
            "api: API key from env API_KEY is refused: it is one of the placeholders from the docs. Make a strong one with `openssl rand -hex 32` (or pass --allow-weak-secrets for a throwaway demo)",
        ),
        (
            "api",
            vec!["--listen", "127.0.0.1:0"],
            ("SERVICE_TOKEN", "your-secure-service-token"),
            "",
        ),
        (
            "streamer",
            vec!["--grpc-addr", "127.0.0.1:0", "--brokers", "127.0.0.1:1"],
            ("SERVICE_TOKEN", "changeme"),
            "streamer: service token from env SERVICE_TOKEN is refused: it is one of the placeholders from the docs. Make a strong one with `openssl rand -hex 32` (or pass --allow-weak-secrets for a throwaway demo)",
        ),
        (
            "collector",
            vec!["--source", "simulated", "--brokers", "127.0.0.1:1"],
            ("SERVICE_TOKEN", "0123456789abcde"),
            "collector: service token from env SERVICE_TOKEN is refused: it is 15 characters, fewer than 16. Make a strong one with `openssl rand -hex 32` (or pass --allow-weak-secrets for a throwaway demo)",
        ),
    ];
    for (name, args, (var, value), want) in cases {
        let mut env = vec![(var, value)];
        // The gateway api needs a good API key to get as far as the service token.
        if name == "api" && var == "SERVICE_TOKEN" {
            env.push(("API_KEY", "api-key-0123456789abcdef"));
        }
        let (code, stdout, stderr) = run(name, &args, &env);
        assert_eq!(code, Some(1), "{name} {var}={value}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        if want.is_empty() {
            assert!(
                lines[0].starts_with(
                    "api: service token from env SERVICE_TOKEN is refused: it is one of the placeholders"
                ),
                "{stderr}"
            );
        } else {
            assert_eq!(lines[0], want);
        }
        // Nothing was bound or opened first.
        assert!(!stdout.contains("listening"), "{name}: {stdout}");
        assert!(!stdout.contains("data directory"), "{name}: {stdout}");
    }
}

#[test]
fn allow_weak_secrets_lets_a_demo_start_and_generated_values_always_pass() {
    for (var, value) in [
        ("ALLOW_WEAK_SECRETS", "true"),
        // The seed's generators: openssl rand -hex 32, uuidgen, pwgen -s 32 1.
        (
            "API_KEY",
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        ),
        ("API_KEY", "0b5a1c34-7f3e-4d2a-9c1e-5d6f7a8b9c0d"),
        ("API_KEY", "Xk3vQ9pL2mN7rT5wY8zB1cD4fG6hJ0aS"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut env = vec![(var, value.to_string())];
        if var == "ALLOW_WEAK_SECRETS" {
            env.push(("API_KEY", "short".to_string()));
        }
        let (_p, url) =
            integration_tests::spawn_embedded_api(dir.path(), &["--source", "simulated"], &env);
        assert!(url.starts_with("http://"), "{var}={value}: {url}");
    }
}
