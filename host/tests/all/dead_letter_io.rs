//! Storing a dead letter never holds an async worker: while its file write is stalled (a
//! stalled disk, made here with a real named pipe at the path the store writes, which takes no
//! more than a pipe's buffer until someone reads), a host on a one-thread runtime still answers
//! `/healthz`; once the write fails, the report waits and is stored on the next try.

use crate::helpers::*;
use serde_json::json;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

/// How long the pipe's reader waits for `/healthz` to be answered before it unblocks the write
/// itself (so a host that stalls fails this test instead of hanging it).
const STALL_BOUND: Duration = Duration::from_secs(20);

// One thread runs the test, the host and its delivery workers: a dead-letter write on it would
// stall everything.
#[tokio::test(flavor = "current_thread")]
async fn a_stalled_dead_letter_write_does_not_stall_healthz() {
    let data = tempfile::tempdir().unwrap();
    let closed = format!("http://127.0.0.1:{}", free_port());
    let app = spawn_app_at(plugins_dir(&["opensearch"]), data.path(), |c| {
        c.limits.accept_report_ids = true; // the test names the report, so it knows the file
        c.delivery.max_attempts = 1; // the first failure makes a dead letter
    })
    .await;
    let id = uuid::Uuid::now_v7();
    // The store writes `<id>.<consumer>.tmp`, syncs it, and renames it: a named pipe there
    // takes the first 64 KiB of a larger dead letter and blocks the writer until it is read.
    let fifo = data.path().join(format!("dlq/{id}.openSearch.tmp"));
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");

    let (blocked_tx, blocked_rx) = tokio::sync::oneshot::channel();
    let (answered_tx, answered_rx) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        // Opening waits for the writer; the first byte says it is writing (and, the dead letter
        // being larger than the pipe, now stalled).
        let mut pipe = std::fs::File::open(&fifo).unwrap();
        let mut first = [0u8; 1];
        pipe.read_exact(&mut first).unwrap();
        std::fs::remove_file(&fifo).unwrap(); // the next try writes a real file
        let _ = blocked_tx.send(());
        let stalled = answered_rx.recv_timeout(STALL_BOUND).is_err();
        let mut rest = Vec::new();
        pipe.read_to_end(&mut rest).unwrap(); // unblock the writer; its sync then fails
        stalled
    });

    let body = json!({
        "id": id,
        "config": {"openSearch": {"host_port": closed, "index": "never"}},
        "payload": json!({"blob": "x".repeat(300_000)}).to_string(),
    });
    let (status, receipt) = app.forward(body.to_string()).await;
    assert_eq!(status, 202, "{receipt}");
    tokio::time::timeout(Duration::from_secs(60), blocked_rx)
        .await
        .expect("the dead letter was not written within 60 s")
        .unwrap();
    // The write is stalled now. A new connection (a pooled one may have been closed meanwhile).
    let fresh = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let health = fresh.get(format!("{}/healthz", app.url)).send().await;
    let _ = answered_tx.send(());
    let stalled = tokio::task::spawn_blocking(move || reader.join().unwrap()).await.unwrap();
    assert!(
        !stalled,
        "/healthz was answered only after the stalled dead-letter write was released ({STALL_BOUND:?}): the write \
         held the runtime's only thread"
    );
    assert_eq!(health.unwrap().status(), 200);

    // The failed write is reported, and the next try stores it.
    eventually(Duration::from_secs(30), "the dead letter to be stored", async || {
        let (_, v) = app.get(&format!("/reports/{id}")).await;
        if v["consumers"]["openSearch"]["status"] == "dead_lettered" { Ok(()) } else { Err(v) }
    })
    .await;
    assert!(data.path().join(format!("dlq/{id}.openSearch.json")).exists());
}
