//! Shutdown as a load balancer sees it: on SIGTERM the data listener closes
//! at once (new clients are refused, not left hanging), `/readyz` answers
//! 503 `draining` from the first instant, requests in flight finish, and
//! `server.drain_timeout` bounds how long that may take.

use crate::common::*;
use std::time::{Duration, Instant};

/// Polls `ok` every 10 ms for at most `within`.
fn soon(within: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_the_listener_at_once_and_finishes_what_is_in_flight() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    let (_, token) = s.create_key(&["--name", "drain", "--role", "read-only"]);
    let gw = s.start();
    let in_flight = tokio::spawn({
        let (url, token) = (s.url("/api/slow/1500"), token.clone());
        async move { client().get(url).bearer_auth(token).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    gw.signal("TERM");
    let data = gw.data;
    let refused = tokio::task::spawn_blocking(move || {
        soon(Duration::from_millis(500), || std::net::TcpStream::connect_timeout(&data, Duration::from_millis(50)).is_err())
    });
    assert!(refused.await.unwrap(), "new connections were still accepted 500 ms after SIGTERM");
    let ready = client().get(s.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "readyz during the drain");
    let body = json_of(ready).await;
    assert_eq!(body["code"], "draining", "{body}");
    assert!(signalled.elapsed() < Duration::from_secs(1));
    // The container health check says the same: alive, not ready.
    assert!(s.cli(&["health"]).status.success());
    let probe = s.cli(&["health", "--ready"]);
    assert_eq!(probe.status.code(), Some(1), "{}", String::from_utf8_lossy(&probe.stderr));
    assert!(String::from_utf8_lossy(&probe.stderr).contains("503"));
    assert_eq!(in_flight.await.unwrap().unwrap(), 200, "the request in flight was not finished");
    let status = gw.stop();
    assert!(status.success(), "{status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(4),
        "exited {:?} after SIGTERM, with nothing left in flight",
        signalled.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_timeout_bounds_the_wait_for_requests_in_flight() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "drain_timeout = \"1s\"", "");
    let (_, token) = s.create_key(&["--name", "drain", "--role", "read-only"]);
    let gw = s.start();
    let url = s.url("/api/slow/10000");
    let _held = tokio::spawn(async move { client().get(url).bearer_auth(token).send().await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    let status = gw.stop();
    assert!(status.success(), "{status}");
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(4), "a 1 s drain took {took:?}");
}

#[test]
fn the_process_ends_as_soon_as_it_says_it_stopped() {
    let s = Setup::new("http://127.0.0.1:9", "", "");
    let gw = s.start();
    gw.signal("TERM");
    assert!(soon(Duration::from_secs(10), || gw.log_text().contains("keygate stopped")), "{}", gw.log_text());
    let said = std::time::Instant::now();
    assert!(gw.wait_exit().success());
    // Measured by waiting on the process, not `kill -0`: a process its
    // parent has not reaped yet still answers that, for as long as the
    // parent takes (which is how "it exits a second late" was once seen).
    assert!(said.elapsed() < Duration::from_millis(500), "{:?} after saying it stopped", said.elapsed());
}

/// A SIGTERM that comes the instant the data port answers drains and
/// stops like any other: keygate listens for signals before it binds, so
/// the default action (an exit on the spot, usage unwritten, no "stopped")
/// never applies. Signalled from this process within microseconds; a
/// `kill` process would arrive too late to reach that window.
#[test]
fn a_sigterm_as_soon_as_the_port_answers_still_drains() {
    use rustix::process::{kill_process, Pid, Signal};
    let s = Setup::new("http://127.0.0.1:9", "", "");
    for trial in 0..10 {
        let gw = Gateway::spawn(&s);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(gw.data).is_err() {
            assert!(Instant::now() < deadline, "trial {trial}: keygate did not listen:\n{}", gw.log_text());
        }
        kill_process(Pid::from_child(gw.process()), Signal::TERM).unwrap();
        assert!(soon(Duration::from_secs(10), || gw.log_text().contains("keygate stopped")), "trial {trial}:\n{}", gw.log_text());
        let status = gw.wait_exit();
        assert!(status.success(), "trial {trial}: {status}");
    }
}
