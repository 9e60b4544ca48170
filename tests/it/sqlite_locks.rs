//! SQLite shared with other processes: while another connection holds the
//! database's write lock (a CLI in the middle of a change, a backup), the
//! gateway's own write (a usage flush) waits for it, and key lookups must
//! not wait behind that write.

use crate::common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_do_not_wait_for_a_write_blocked_by_another_process() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    // Usage is flushed (a write) every 100 ms.
    let text = std::fs::read_to_string(&s.config).unwrap() + "\n[keys]\nusage_flush_interval = \"100ms\"\n";
    std::fs::write(&s.config, text).unwrap();
    let (_, busy) = s.create_key(&["--name", "busy", "--role", "read-only"]);
    let (_, fresh) = s.create_key(&["--name", "fresh", "--role", "read-only"]);
    let gw = s.start();
    let url = s.url("/api/lists");
    assert_eq!(client().get(&url).bearer_auth(&busy).send().await.unwrap().status(), 200);

    // Another connection takes the write lock and keeps it for 4 s.
    let db = s.dir.path().join("keygate.db");
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        locked_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_secs(4));
        conn.execute_batch("COMMIT").unwrap();
    });
    locked_rx.recv().unwrap();
    // Usage is pending again; the next flush blocks on the lock.
    assert_eq!(client().get(&url).bearer_auth(&busy).send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // A key never looked up before needs the store, within its 2 s timeout.
    let started = Instant::now();
    let resp = client().get(&url).bearer_auth(&fresh).send().await.unwrap();
    assert_eq!(resp.status(), 200, "an uncached lookup waited for a blocked write ({:?}):\n{}", started.elapsed(), gw.log_text());
    holder.join().unwrap();
}
