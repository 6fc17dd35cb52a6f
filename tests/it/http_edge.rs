//! The HTTP edge under hostile clients, against the real binary over raw
//! sockets: slow bodies, endless headers and idle connections never stop
//! anyone else from being served, and requests framed in ways a proxy could
//! read differently are refused with 400 and the connection closed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::TestServer;

fn connect(server: &TestServer) -> TcpStream {
    let host = server.base_url().trim_start_matches("http://");
    let socket = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect {host}: {e}"));
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    socket
}

/// Everything the server sends until it closes the connection.
fn read_to_close(socket: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    match socket.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the connection stayed open ({e}); so far: {answer:?}"),
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status of each response in `answer` ("200 OK", ...).
fn statuses(answer: &str) -> Vec<&str> {
    answer
        .split("HTTP/1.1 ")
        .skip(1)
        .map(|r| r.lines().next().unwrap_or(""))
        .collect()
}

fn status_of(process: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{process}/status"))
}

fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

#[test]
fn malformed_framing_is_400_and_closes_the_connection() {
    let server = TestServer::start();
    let smuggled = "GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n";
    for framing in [
        "Content-Length: -1\r\n",
        "Content-Length: abc\r\n",
        "Content-Length: 12345678901234567890123\r\n",
        "Content-Length: 2\r\nContent-Length: 40\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "Content-Length : 5\r\n",
    ] {
        let mut socket = connect(&server);
        let request = format!(
            "POST /v1/events HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n{framing}\r\n{smuggled}"
        );
        socket.write_all(request.as_bytes()).unwrap();
        let answer = read_to_close(&mut socket);
        assert_eq!(
            statuses(&answer),
            ["400 Bad Request"],
            "{framing:?}: one 400 and nothing for the smuggled request; got {answer:?}"
        );
        assert!(answer.contains("Connection: close\r\n"), "{answer}");
    }
    // A sound request and a pipelined one on the same connection both
    // get their answers.
    let mut socket = connect(&server);
    socket
        .write_all(
            b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\nGET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let answer = read_to_close(&mut socket);
    assert_eq!(statuses(&answer), ["200 OK", "200 OK"], "{answer}");
}

#[test]
fn oversized_heads_and_late_requests_are_refused() {
    let server = TestServer::builder()
        .env("HERALD_HTTP_HEADER_TIMEOUT_MS", "300")
        .env("HERALD_HTTP_BODY_TIMEOUT_MS", "300")
        .start();
    let mut socket = connect(&server);
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    // The server may close before taking it all.
    let _ = socket.write_all(head.as_bytes());
    let answer = read_to_close(&mut socket);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");

    let mut socket = connect(&server);
    socket.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();
    let answer = read_to_close(&mut socket);
    assert!(
        answer.starts_with("HTTP/1.1 408 "),
        "a head that never ends: {answer}"
    );

    let mut socket = connect(&server);
    socket
        .write_all(b"POST /v1/events HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n{\"a")
        .unwrap();
    let answer = read_to_close(&mut socket);
    assert!(
        answer.starts_with("HTTP/1.1 408 "),
        "a body that never ends: {answer}"
    );

    // A chunked body is read whole.
    let mut socket = connect(&server);
    let key = server.service_key().to_string();
    let body = r#"{"type": "system.announcement", "recipients": [], "payload": {"title": "t", "body": "b"}}"#;
    let (first, rest) = body.split_at(10);
    let request = format!(
        "POST /v1/events HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{rest}\r\n0\r\n\r\n",
        first.len(),
        rest.len()
    );
    socket.write_all(request.as_bytes()).unwrap();
    let answer = read_to_close(&mut socket);
    assert!(answer.starts_with("HTTP/1.1 202 "), "{answer}");
}

#[test]
fn slow_bodies_and_endless_headers_never_stop_other_requests() {
    let server = TestServer::start();
    let token = server.create_user("ann", "ann@acme.test", "Ann");
    let pid = server.pid().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // 50 bodies that promise 100,000 bytes and send 6 (issue 17's attack).
    let slow: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut socket = connect(&server);
            socket
                .write_all(
                    b"POST /login HTTP/1.1\r\nHost: h\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\ntoken=",
                )
                .unwrap();
            socket
        })
        .collect();
    // 50 header lines that never end, fed a kilobyte every 10 ms.
    let endless: Vec<_> = (0..50)
        .map(|_| {
            let mut socket = connect(&server);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let _ = socket.write_all(b"GET /healthz HTTP/1.1\r\nHost: h\r\nX-Endless: ");
                let kilobyte = [b'a'; 1024];
                while !stop.load(Ordering::SeqCst) && socket.write_all(&kilobyte).is_ok() {
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        })
        .collect();

    let mut samples = Vec::new();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for path in ["/healthz", "/v1/inbox"] {
            let started = Instant::now();
            let (status, body) = server.get(path, Some(&token));
            samples.push(started.elapsed());
            assert_eq!(status, 200, "{path}: {body}");
        }
    }
    let rss_kb = status_of(pid, "VmRSS:");
    stop.store(true, Ordering::SeqCst);
    for thread in endless {
        thread.join().unwrap();
    }
    drop(slow);
    let (count, p99) = (samples.len(), p99(samples));
    eprintln!("under 50 slow bodies and 50 endless headers: {count} requests, p99 {p99:?}, RSS {rss_kb} kB");
    assert!(p99 < Duration::from_millis(50), "p99 {p99:?}");
    assert!(rss_kb < 100 * 1024, "RSS {rss_kb} kB");
}

#[test]
fn five_thousand_idle_connections_hold_no_threads_and_new_clients_are_served() {
    let server = TestServer::start();
    let pid = server.pid().unwrap();
    let (status, _) = server.get("/healthz", None);
    assert_eq!(status, 200);
    let threads_before = status_of(pid, "Threads:");
    let idle: Vec<TcpStream> = (0..5000).map(|_| connect(&server)).collect();
    // Each is accepted: a request on the last one is answered.
    let mut last = connect(&server);
    last.write_all(b"GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert!(read_to_close(&mut last).starts_with("HTTP/1.1 200 "));
    let threads = status_of(pid, "Threads:");
    let (status, _) = server.get("/healthz", None);
    assert_eq!(status, 200, "a new client is served beside 5,000 idle ones");
    eprintln!("threads: {threads_before} before, {threads} with 5,000 idle connections");
    // Background threads (the webhook and mail senders, the database pools)
    // may start one more meanwhile; a thread per connection would add
    // thousands, a pool per connection burst at least its size.
    assert!(
        threads <= threads_before + 2,
        "idle connections hold no thread: {threads_before} before, {threads} after"
    );
    drop(idle);
}
