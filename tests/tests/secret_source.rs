//! `--secret-source kubernetes` against a local server speaking the Secret API, with a real
//! `kube::Client`: the read at startup and its one-line failures, and the watch through
//! changes, bookmarks, a dropped connection, a 410 Gone and a deleted Secret.

use std::time::{Duration, Instant};

use common_auth::kubernetes::KubeSecret;
use common_auth::{KeyRing, SecretArgs, SecretSource, SecretSpec, SourceKind};
use integration_tests::eventually;
use integration_tests::kube_api::FakeKubeApi;
use secrecy::ExposeSecret;

const TOKEN: &str = "sa-token-0123456789abcdef";
const NS: &str = "telemetry";

fn args() -> SecretArgs {
    SecretArgs {
        secret_source: Some(SourceKind::Kubernetes),
        secret_name: Some("auth".into()),
        ..SecretArgs::default()
    }
}

async fn open(fake: &FakeKubeApi, name: &str, timeout: Duration) -> Result<KubeSecret, String> {
    KubeSecret::read_with(fake.client(), NS, name, &fake.url, timeout)
        .await
        .map_err(|e| e.to_string())
}

async fn current_is(ring: &KeyRing, want: &str) {
    eventually(Duration::from_secs(10), want, || async {
        (ring.current().expose_secret() == want).then_some(())
    })
    .await;
}

/// The WATCH requests made so far, in order.
fn watches(fake: &FakeKubeApi) -> Vec<String> {
    fake.requests()
        .into_iter()
        .filter(|r| r.starts_with("WATCH"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_secret_follows_changes_through_bookmarks_a_dropped_connection_a_410_and_a_deletion()
 {
    let fake = FakeKubeApi::start(TOKEN).await;
    let rv = fake.put(
        NS,
        "auth",
        &[
            ("api-key", "api-key-one-0123456789"),
            ("service-token", "token-one-0123456789"),
        ],
    );
    let source =
        SecretSource::kubernetes(&args(), open(&fake, "auth", Duration::ZERO).await.unwrap());
    assert_eq!(source.describe(), "kubernetes Secret telemetry/auth");
    let keys = source.load(&SecretSpec::API_KEY, None).unwrap();
    let tokens = source.load(&SecretSpec::SERVICE_TOKEN, None).unwrap();
    source
        .load_retired(&SecretSpec::SERVICE_TOKEN_PREVIOUS, &tokens)
        .unwrap();
    assert_eq!(keys.current().expose_secret(), "api-key-one-0123456789");
    assert_eq!(
        tokens.verifying().1.len(),
        1,
        "no retired key in the Secret"
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = source
        .spawn_watch(
            vec![
                (SecretSpec::API_KEY, keys.clone()),
                (SecretSpec::SERVICE_TOKEN, tokens.clone()),
                (SecretSpec::SERVICE_TOKEN_PREVIOUS, tokens.clone()),
            ],
            async {
                let _ = stopped.await;
            },
        )
        .unwrap();

    // The watch starts where the read left off, with bookmarks, on that one Secret.
    eventually(Duration::from_secs(10), "a watch", || async {
        (fake.watchers() == 1).then_some(())
    })
    .await;
    // Read with a LIST of the one name: its resourceVersion is the server's current one.
    assert_eq!(
        fake.requests(),
        [
            format!("LIST {NS} fieldSelector=metadata.name=auth"),
            format!("WATCH {NS} rv={rv} bookmarks=true fieldSelector=metadata.name=auth"),
        ]
    );

    // A change arrives on the watch, without another read.
    let changed = Instant::now();
    let rv_two = fake.set(NS, "auth", "api-key", "api-key-two-0123456789");
    current_is(&keys, "api-key-two-0123456789").await;
    println!("change applied {:?} after the patch", changed.elapsed());
    assert!(
        keys.accepts(b"api-key-one-0123456789"),
        "the old key is in its grace period"
    );

    // A dropped connection: the watch resumes from the last version seen, nothing re-read.
    fake.drop_watches();
    eventually(
        Duration::from_secs(10),
        "a new watch after the drop",
        || async { (watches(&fake).len() == 2 && fake.watchers() == 1).then_some(()) },
    )
    .await;
    assert_eq!(
        watches(&fake)[1],
        format!("WATCH {NS} rv={rv_two} bookmarks=true fieldSelector=metadata.name=auth")
    );
    fake.set(
        NS,
        "auth",
        "service-token-previous",
        "token-zero-0123456789 2026-11-28T10:00:00Z\n",
    );
    eventually(Duration::from_secs(10), "the retired list", || async {
        (tokens.verifying().1.len() == 2).then_some(())
    })
    .await;

    // A bookmark moves the resourceVersion on; when the server ends the watch (its timeout)
    // the next one starts from the bookmark.
    let bookmark = fake.bookmark();
    fake.end_watches();
    eventually(
        Duration::from_secs(10),
        "a new watch after the end",
        || async { (watches(&fake).len() == 3 && fake.watchers() == 1).then_some(()) },
    )
    .await;
    assert_eq!(
        watches(&fake)[2],
        format!("WATCH {NS} rv={bookmark} bookmarks=true fieldSelector=metadata.name=auth")
    );
    fake.set(NS, "auth", "api-key", "api-key-three-0123456789");
    current_is(&keys, "api-key-three-0123456789").await;

    // The history is compacted while the watch is down: re-watching from the old version
    // gets 410 Gone; the Secret is read again (with the change made meanwhile) and watched
    // from there.
    fake.compact();
    fake.set(NS, "auth", "service-token", "token-two-0123456789");
    current_is(&tokens, "token-two-0123456789").await;
    eventually(Duration::from_secs(10), "a watch after the 410", || async {
        (fake.watchers() == 1).then_some(())
    })
    .await;
    let requests = fake.requests();
    let gone_at = requests
        .iter()
        .rposition(|r| r.starts_with("WATCH"))
        .unwrap();
    assert!(
        requests[..gone_at]
            .iter()
            .rev()
            .take_while(|r| !r.starts_with("WATCH"))
            .any(|r| r.starts_with(&format!("LIST {NS} "))),
        "the Secret was read again between the expired watch and the new one: {requests:?}"
    );
    let lists = |r: &[String]| r.iter().filter(|r| r.starts_with("LIST")).count();
    assert_eq!(
        lists(&requests),
        2,
        "one read at start, one after the 410: {requests:?}"
    );

    // Compacted with no change since: the Secret's own resourceVersion is older than the
    // window, but the re-read's is the list's (current), so one read and a watch that holds,
    // not a read-410 loop.
    fake.compact();
    eventually(
        Duration::from_secs(10),
        "a watch after the second 410",
        || async { (lists(&fake.requests()) == 3 && fake.watchers() == 1).then_some(()) },
    )
    .await;
    fake.set(NS, "auth", "api-key", "api-key-three-b-0123456789");
    current_is(&keys, "api-key-three-b-0123456789").await;
    assert_eq!(lists(&fake.requests()), 3, "{:?}", fake.requests());

    // Deleted (a Secret being replaced): the current values stay in use.
    fake.delete(NS, "auth");
    fake.put(
        NS,
        "auth",
        &[
            ("api-key", "api-key-four-0123456789"),
            ("service-token", "token-two-0123456789"),
        ],
    );
    current_is(&keys, "api-key-four-0123456789").await;
    assert_eq!(tokens.current().expose_secret(), "token-two-0123456789");

    // A weak value in the Secret is refused; the current one stays.
    fake.set(NS, "auth", "api-key", "changeme");
    let refused_rv = fake.set(NS, "auth", "service-token", "token-three-0123456789");
    current_is(&tokens, "token-three-0123456789").await;
    assert_eq!(
        keys.current().expose_secret(),
        "api-key-four-0123456789",
        "after rv {refused_rv}"
    );
    assert_eq!(
        fake.requests()
            .iter()
            .filter(|r| r.starts_with("UNAUTHORIZED"))
            .count(),
        0
    );
    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_a_forbidden_read_and_an_unreachable_server_stop_startup_with_one_line() {
    let fake = FakeKubeApi::start(TOKEN).await;
    let err = open(&fake, "nope", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        format!(
            "cannot read Secret telemetry/nope through the Kubernetes API at {}: it does not exist (create it, or point --secret-name / --secret-namespace at it)",
            fake.url
        )
    );
    fake.put(NS, "auth", &[("api-key", "api-key-one-0123456789")]);
    fake.forbid(true);
    let err = open(&fake, "auth", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(
        err.ends_with("forbidden: the service account needs `get`, `list` and `watch` on this Secret (the chart's secret-reader Role)"),
        "{err}"
    );
    fake.forbid(false);

    // A key the Secret does not have: the usual missing-secret line, naming the Secret.
    let source =
        SecretSource::kubernetes(&args(), open(&fake, "auth", Duration::ZERO).await.unwrap());
    let err = source
        .load(&SecretSpec::SERVICE_TOKEN, None)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "service token is missing: key service-token of Secret telemetry/auth not found or empty; env SERVICE_TOKEN is unset"
    );

    // Nothing listening: retried for the startup timeout, then one line.
    let port = integration_tests::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut config = kube::Config::new(url.parse().unwrap());
    config.auth_info.token = Some(TOKEN.to_string().into());
    let client = kube::Client::try_from(config).unwrap();
    let started = Instant::now();
    let err = KubeSecret::read_with(client, NS, "auth", &url, Duration::from_secs(1))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "cannot read Secret telemetry/auth through the Kubernetes API at {url}: unreachable for 1s"
        )
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(!err.contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_binary_reads_its_key_from_the_kubernetes_api_and_says_where_when_it_cannot() {
    let fake = FakeKubeApi::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = fake.kubeconfig(dir.path(), NS);
    let env = [
        ("KUBECONFIG", kubeconfig.display().to_string()),
        ("SECRET_SOURCE", "kubernetes".to_string()),
        ("SECRET_NAME", "auth".to_string()),
        ("SECRET_STARTUP_TIMEOUT", "1s".to_string()),
    ];
    // No Secret yet: the api stops with one line, before binding.
    let mut p = integration_tests::Proc::spawn_in(
        "api",
        &integration_tests::bin("api"),
        &integration_tests::args(&[
            "--embedded",
            "--listen",
            "127.0.0.1:0",
            "--source",
            "simulated",
        ]),
        &env,
        Some(dir.path()),
    );
    assert!(!p.wait_exit(Duration::from_secs(30)).success());
    let lines = p.lines_so_far().to_vec();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("api: ")).count(),
        1,
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l
            == &format!("api: cannot read Secret telemetry/auth through the Kubernetes API at {}/: it does not exist (create it, or point --secret-name / --secret-namespace at it)", fake.url)),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.contains("listening")), "{lines:?}");

    fake.put(NS, "auth", &[("api-key", "api-key-one-0123456789")]);
    let (mut api, base) =
        integration_tests::spawn_embedded_api(dir.path(), &["--source", "simulated"], &env);
    api.wait_line(
        "API key: from kubernetes Secret telemetry/auth (not shown)",
        Duration::from_secs(5),
    );
    let http = reqwest::Client::new();
    let url = format!("{base}/api/v1/gpus");
    let status = |key: &'static str| integration_tests::status_with_key(&http, &url, key);
    assert_eq!(status("api-key-one-0123456789").await, 200);
    assert_eq!(status("api-key-two-0123456789").await, 401);
    fake.set(NS, "auth", "api-key", "api-key-two-0123456789");
    eventually(Duration::from_secs(10), "the new key accepted", || async {
        (status("api-key-two-0123456789").await == 200).then_some(())
    })
    .await;
    for l in api.lines_so_far() {
        for value in [TOKEN, "api-key-one-0123456789", "api-key-two-0123456789"] {
            assert!(!l.contains(value), "{value} in {l}");
        }
    }
}
