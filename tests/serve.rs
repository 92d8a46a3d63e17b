//! `qwm serve` as a client sees it: framing written here by hand from docs/serve.md, the
//! environment on the client's side, and every way a client can misbehave.

mod common;

use qwm::env::{make_env, TaskSeeds};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const PLANNER: &[&str] = &[
    "--samples",
    "60",
    "--topk",
    "6",
    "--opt-steps",
    "3",
    "--threads",
    "1",
];

struct Server {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
    sock: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `qwm serve` on a Unix socket (or `listen` when given) and wait for its ready line.
fn start(extra: &[&str], listen: Option<&str>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qwm.sock");
    let listen = listen
        .map(str::to_string)
        .unwrap_or_else(|| format!("unix:{}", sock.display()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwm"))
        .arg("serve")
        .arg("--listen")
        .arg(&listen)
        .args(PLANNER)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
            let _ = tx.send(line);
        }
    });
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("qwm serve prints its address");
        if let Some(a) = line.split("listening on ").nth(1) {
            break a.to_string();
        }
    };
    Server {
        child,
        addr,
        _dir: dir,
        sock,
    }
}

fn message(json: &Value, blob: &[u8]) -> Vec<u8> {
    let j = serde_json::to_vec(json).unwrap();
    let mut m = b"QWMS".to_vec();
    m.extend((j.len() as u32).to_le_bytes());
    m.extend((blob.len() as u32).to_le_bytes());
    m.extend(j);
    m.extend(blob);
    m
}

fn read_reply(s: &mut dyn Read) -> Value {
    let mut h = [0u8; 12];
    s.read_exact(&mut h).expect("a reply header");
    assert_eq!(&h[..4], b"QWMS");
    let jl = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
    let bl = u32::from_le_bytes(h[8..12].try_into().unwrap()) as usize;
    let mut j = vec![0u8; jl];
    s.read_exact(&mut j).unwrap();
    let mut b = vec![0u8; bl];
    s.read_exact(&mut b).unwrap();
    assert!(b.is_empty(), "replies carry no payload");
    serde_json::from_slice(&j).unwrap()
}

fn call(s: &mut UnixStream, json: Value, blob: &[u8]) -> Value {
    s.write_all(&message(&json, blob)).unwrap();
    read_reply(s)
}

fn connect(sock: &Path) -> UnixStream {
    let s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

fn frame_call(s: &mut UnixStream, op: &str, f: &qwm::env::Frame, p: &[f32]) -> Value {
    call(
        s,
        json!({"op": op, "height": f.height, "width": f.width, "proprio": p}),
        &f.data,
    )
}

fn error_code(v: &Value) -> &str {
    assert_eq!(v["ok"], json!(false), "{v}");
    v["error"]["code"].as_str().unwrap()
}

#[test]
fn episodes_over_the_socket_equal_qwm_plan() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("plan.json");
    let seed = 4;
    let out = Command::new(env!("CARGO_BIN_EXE_qwm"))
        .args(["plan", "--episodes", "2", "--max-iter", "3", "--seed", "4"])
        .args(PLANNER)
        .arg("--json")
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let server = start(&["--seed", "4"], None);
    let mut s = connect(&server.sock);
    let hello = call(
        &mut s,
        json!({"op": "hello", "protocol": 1, "id": "h"}),
        &[],
    );
    assert_eq!(hello["id"], json!("h"));
    assert_eq!(hello["model"]["image_size"], json!(64));
    let mut env = make_env("wall").unwrap();
    for i in 0..2usize {
        let r = call(&mut s, json!({"op": "reset", "episode": i}), &[]);
        assert_eq!(r["episode"], json!(i));
        let task = env.sample_task(TaskSeeds::evaluation(seed, i));
        env.reset_to(&task).unwrap();
        let g = frame_call(
            &mut s,
            "set_goal",
            &env.render_state(&task.goal, 64),
            &env.proprio_of(&task.goal),
        );
        assert_eq!(g["ok"], json!(true), "{g}");
        let mut success = false;
        for _ in 0..3 {
            let a = frame_call(&mut s, "act", &env.render(64), &env.proprio());
            let rows = a["actions"].as_array().expect("actions");
            assert_eq!(rows.len(), 25);
            for row in rows {
                let v: Vec<f32> = row
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect();
                env.step(&v).unwrap();
            }
            if env.is_success(&task.goal) {
                success = true;
                break;
            }
        }
        let want = &plan["episodes"][i];
        assert_eq!(json!(success), want["success"], "episode {i}");
        let state: Vec<f32> = env.state();
        let want_state: Vec<f32> = serde_json::from_value(want["final_state"].clone()).unwrap();
        assert_eq!(state, want_state, "episode {i}");
    }
    let st = call(&mut s, json!({"op": "stats"}), &[]);
    assert!(st["stats"]["acts"].as_u64().unwrap() >= 2, "{st}");
    let bye = call(&mut s, json!({"op": "shutdown"}), &[]);
    assert_eq!(bye["ok"], json!(true));
    let mut server = server;
    let status = server.child.wait().unwrap();
    assert!(status.success());
    assert!(!server.sock.exists(), "the server removes its socket");
}

#[test]
fn malformed_requests_get_error_replies_and_the_server_keeps_serving() {
    let server = start(&["--io-timeout", "1"], None);
    let env = make_env("wall").unwrap();
    let (f, p) = (env.render(64), env.proprio());
    let mut s = connect(&server.sock);
    // Not JSON, not an object, an unknown op, a missing field: the connection stays open.
    s.write_all(b"QWMS\x03\x00\x00\x00\x00\x00\x00\x00{{{")
        .unwrap();
    assert_eq!(error_code(&read_reply(&mut s)), "bad_request");
    assert_eq!(error_code(&call(&mut s, json!([1, 2]), &[])), "bad_request");
    let r = call(&mut s, json!({"op": "fly", "id": 7}), &[]);
    assert_eq!((error_code(&r), &r["id"]), ("bad_request", &json!(7)));
    let r = call(&mut s, json!({"op": "act", "height": 64}), &f.data);
    assert_eq!(error_code(&r), "bad_request");
    assert_eq!(
        error_code(&call(&mut s, json!({"op": "hello"}), b"xyz")),
        "bad_request"
    );
    assert_eq!(
        error_code(&call(&mut s, json!({"op": "hello", "protocol": 2}), &[])),
        "unsupported"
    );
    // Out of order, wrong sizes, NaN proprioception.
    assert_eq!(error_code(&frame_call(&mut s, "act", &f, &p)), "bad_state");
    let r = call(
        &mut s,
        json!({"op": "set_goal", "height": 64, "width": 64, "proprio": p}),
        &f.data[1..],
    );
    assert_eq!(error_code(&r), "bad_input");
    assert!(r["error"]["message"].as_str().unwrap().contains("12288"));
    let r = call(
        &mut s,
        json!({"op": "set_goal", "height": 1u64 << 62, "width": 1u64 << 62, "proprio": p}),
        &f.data,
    );
    assert_eq!(error_code(&r), "bad_input");
    let r = call(
        &mut s,
        json!({"op": "set_goal", "height": 64, "width": 64, "proprio": [1.0]}),
        &f.data,
    );
    assert_eq!(error_code(&r), "bad_input");
    // JSON has no NaN: a null in proprio is a bad request, not a number.
    let r = call(
        &mut s,
        json!({"op": "set_goal", "height": 64, "width": 64, "proprio": [null, 1.0]}),
        &f.data,
    );
    assert_eq!(error_code(&r), "bad_request");
    let r = call(
        &mut s,
        json!({"op": "set_goal", "height": 64, "width": 64, "proprio": [1e39, 1.0]}),
        &f.data,
    );
    assert!(r["ok"] == json!(false), "an f32 overflow is refused: {r}");
    assert_eq!(frame_call(&mut s, "set_goal", &f, &p)["ok"], json!(true));
    let small = env.render(32);
    assert_eq!(
        error_code(&frame_call(&mut s, "act", &small, &p)),
        "bad_input"
    );
    let a = frame_call(&mut s, "act", &f, &p);
    assert_eq!(a["ok"], json!(true), "{a}");
    // Broken framing: an error reply, then the connection is closed.
    s.write_all(b"GARBAGE GARBAGE GARBAGE").unwrap();
    assert_eq!(error_code(&read_reply(&mut s)), "bad_message");
    let mut rest = vec![];
    // Closed (a reset, since the rest of the garbage was never read).
    match s.read_to_end(&mut rest) {
        Ok(n) => assert_eq!(n, 0, "closed after bad framing"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
    let mut s = connect(&server.sock);
    s.write_all(b"QWMS\x10\x00\x00\x00\xff\xff\xff\xff")
        .unwrap();
    let r = read_reply(&mut s);
    assert_eq!(error_code(&r), "bad_message");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("4294967295"));
    let mut s = connect(&server.sock);
    s.write_all(b"QWMS\xff\xff\xff\x7f\x00\x00\x00\x00")
        .unwrap();
    assert_eq!(error_code(&read_reply(&mut s)), "bad_message");
    // A message that stops arriving (header, then half a frame): the reply after --io-timeout.
    let mut s = connect(&server.sock);
    let m = message(
        &json!({"op": "act", "height": 64, "width": 64, "proprio": p}),
        &f.data,
    );
    s.write_all(&m[..m.len() / 2]).unwrap();
    let r = read_reply(&mut s);
    assert_eq!(error_code(&r), "bad_message");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("truncated"));
    // A client that disconnects mid-frame changes nothing.
    let before = call(&mut connect(&server.sock), json!({"op": "stats"}), &[]);
    {
        let mut s = connect(&server.sock);
        s.write_all(&m[..m.len() - 100]).unwrap();
    }
    {
        let mut s = connect(&server.sock);
        s.write_all(&m[..5]).unwrap();
    }
    let mut s = connect(&server.sock);
    let after = call(&mut s, json!({"op": "stats"}), &[]);
    assert_eq!(before["stats"]["acts"], after["stats"]["acts"]);
    assert_eq!(before["stats"]["encodes"], after["stats"]["encodes"]);
    // Still serving: the goal set above is still there.
    assert_eq!(frame_call(&mut s, "act", &f, &p)["ok"], json!(true));
}

#[test]
fn one_client_at_a_time_the_next_waits() {
    let server = start(&[], None);
    let mut a = connect(&server.sock);
    assert_eq!(call(&mut a, json!({"op": "hello"}), &[])["ok"], json!(true));
    let mut b = UnixStream::connect(&server.sock).unwrap();
    b.write_all(&message(&json!({"op": "hello", "id": "b"}), &[]))
        .unwrap();
    let waited = read_for(&mut b, Duration::from_millis(500));
    assert!(
        matches!(&waited, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the second client is not served while the first is connected: {waited:?}"
    );
    assert_eq!(call(&mut a, json!({"op": "stats"}), &[])["ok"], json!(true));
    drop(a);
    b.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let r = read_reply(&mut b);
    assert_eq!(r["id"], json!("b"));
}

#[test]
fn stdio_and_tcp_transports() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwm"))
        .args(["serve", "--listen", "stdio"])
        .args(PLANNER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    stdin
        .write_all(&message(&json!({"op": "hello"}), &[]))
        .unwrap();
    assert_eq!(read_reply(&mut stdout)["protocol"], json!(1));
    stdin
        .write_all(&message(&json!({"op": "shutdown"}), &[]))
        .unwrap();
    assert_eq!(read_reply(&mut stdout)["ok"], json!(true));
    assert!(child.wait().unwrap().success());

    let server = start(&[], Some("tcp:127.0.0.1:0"));
    let addr = server.addr.strip_prefix("tcp:").unwrap().to_string();
    let mut t = std::net::TcpStream::connect(&addr).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    t.write_all(&message(&json!({"op": "hello"}), &[])).unwrap();
    assert_eq!(read_reply(&mut t)["model"]["env"], json!("wall"));
}

#[test]
fn the_socket_path_is_never_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "keep me").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qwm"))
        .args(["serve", "--listen"])
        .arg(format!("unix:{}", file.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    for bad in ["udp:1", "unix:", "tcp:nohost"] {
        let out = Command::new(env!("CARGO_BIN_EXE_qwm"))
            .args(["serve", "--listen", bad])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
    }
    // A live server's socket is not replaced by a second server.
    let server = start(&[], None);
    let out = Command::new(env!("CARGO_BIN_EXE_qwm"))
        .args(["serve", "--listen"])
        .arg(format!("unix:{}", server.sock.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("a server answers"));
    let _ = common::root();
}

/// One byte from `s` within `wait`, or the read's error (`WouldBlock` when nothing came). A read
/// interrupted before the deadline is retried: a socket read with a timeout fails with EINTR
/// whenever the process is stopped and resumed (signal(7)), which the machine running the tests
/// may do at any time; it says nothing about the server.
fn read_for(s: &mut UnixStream, wait: Duration) -> std::io::Result<usize> {
    let deadline = std::time::Instant::now() + wait;
    let mut byte = [0u8; 1];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}
