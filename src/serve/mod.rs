//! `qwm serve`: one [`Controller`] behind a socket (or stdin/stdout), for a robot process in any
//! language. The wire format is [`protocol`]'s; docs/serve.md is the client's reference.
//!
//! One client at a time: the next one waits in the listen queue until the current one
//! disconnects. The controller's state (goal, history, warm start, episode) outlives a
//! connection, so a client that reconnects continues where it was; a request is applied only
//! once it has arrived whole, so a client that disconnects mid-request changes nothing.
//! A request that cannot be understood gets an error reply and the connection stays open; a
//! message whose framing is broken (bad magic, a declared length over the limit, bytes that stop
//! arriving inside a message) gets an error reply and the connection is closed, because the
//! stream can no longer be split into messages. The server itself keeps serving in every case.

pub mod protocol;

use crate::env::Frame;
use crate::error::{QwmError, Result};
use crate::runtime::controller::Controller;
use protocol::{ErrorBody, ErrorCode, FrameFields, ReadError, Request};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// A Unix-domain stream socket at this path (created by the server, removed when it stops).
    Unix(PathBuf),
    /// A TCP address, such as `127.0.0.1:7000` (port 0: any free port, printed at start).
    Tcp(String),
    /// Messages on stdin, replies on stdout (one client: the parent process).
    Stdio,
}

impl Listen {
    /// Parse `unix:PATH`, `tcp:HOST:PORT` or `stdio`.
    pub fn parse(text: &str) -> Result<Listen> {
        if text == "stdio" {
            return Ok(Listen::Stdio);
        }
        if let Some(p) = text.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(QwmError::Usage("--listen unix: needs a path".into()));
            }
            return Ok(Listen::Unix(PathBuf::from(p)));
        }
        if let Some(a) = text.strip_prefix("tcp:") {
            if !a.contains(':') {
                return Err(QwmError::Usage(format!(
                    "--listen tcp:{a}: expected tcp:HOST:PORT, e.g. tcp:127.0.0.1:7000"
                )));
            }
            return Ok(Listen::Tcp(a.to_string()));
        }
        Err(QwmError::Usage(format!(
            "--listen {text}: expected unix:PATH, tcp:HOST:PORT or stdio"
        )))
    }
}

/// Limits of a server.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// Largest payload (frame) accepted, in bytes.
    pub max_blob: u32,
    /// Once a message has started, the rest must arrive within this time (and a reply must be
    /// taken by the client within it); a client may idle as long as it likes between messages.
    pub io_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_blob: 64 << 20,
            io_timeout: Duration::from_secs(10),
        }
    }
}

/// A connection's two directions and its timeout control.
trait Conn {
    fn reader(&mut self) -> &mut dyn Read;
    fn writer(&mut self) -> &mut dyn Write;
    fn set_timeout(&self, t: Option<Duration>);
}

struct SocketConn<S: Read + Write> {
    read: S,
    write: S,
    set: Box<dyn Fn(Option<Duration>)>,
}

impl<S: Read + Write> Conn for SocketConn<S> {
    fn reader(&mut self) -> &mut dyn Read {
        &mut self.read
    }
    fn writer(&mut self) -> &mut dyn Write {
        &mut self.write
    }
    fn set_timeout(&self, t: Option<Duration>) {
        (self.set)(t)
    }
}

struct StdioConn {
    read: std::io::Stdin,
    write: std::io::Stdout,
}

impl Conn for StdioConn {
    fn reader(&mut self) -> &mut dyn Read {
        &mut self.read
    }
    fn writer(&mut self) -> &mut dyn Write {
        &mut self.write
    }
    fn set_timeout(&self, _: Option<Duration>) {}
}

/// What a connection ended with.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The client went away (or was dropped): serve the next one.
    Next,
    /// A `shutdown` request: stop.
    Shutdown,
}

/// Removes the socket file the server created when the server stops.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn bind_unix(path: &Path) -> Result<(std::os::unix::net::UnixListener, SocketFile)> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        // Only a stale socket (no server answers on it) is replaced; any other file is not ours.
        let stale =
            meta.file_type().is_socket() && std::os::unix::net::UnixStream::connect(path).is_err();
        if !stale {
            return Err(QwmError::Usage(format!(
                "--listen unix:{}: the path exists{}; remove it or choose another",
                path.display(),
                if meta.file_type().is_socket() {
                    " and a server answers on it"
                } else {
                    " and is not a socket"
                }
            )));
        }
        log::info!("removing the stale socket {}", path.display());
        std::fs::remove_file(path).map_err(|e| QwmError::io(path, e))?;
    }
    let l = std::os::unix::net::UnixListener::bind(path).map_err(|e| QwmError::io(path, e))?;
    Ok((l, SocketFile(path.to_path_buf())))
}

/// Serve `ctl` on `listen` until a `shutdown` request. `ready` gets the address once the server
/// accepts connections (`qwm serve` prints it).
pub fn serve(
    ctl: &mut Controller,
    listen: &Listen,
    opts: &ServeOptions,
    ready: &mut dyn FnMut(&str),
) -> Result<()> {
    match listen {
        Listen::Stdio => {
            ready("stdio");
            let mut conn = StdioConn {
                read: std::io::stdin(),
                write: std::io::stdout(),
            };
            session(ctl, &mut conn, opts);
            Ok(())
        }
        Listen::Unix(path) => {
            let (listener, _file) = bind_unix(path)?;
            ready(&format!("unix:{}", path.display()));
            accept_loop(ctl, listener.incoming(), opts);
            Ok(())
        }
        Listen::Tcp(addr) => {
            let listener = std::net::TcpListener::bind(addr.as_str())
                .map_err(|e| QwmError::Usage(format!("--listen tcp:{addr}: cannot listen: {e}")))?;
            let local = listener
                .local_addr()
                .map_err(|e| QwmError::Usage(format!("--listen tcp:{addr}: {e}")))?;
            if !local.ip().is_loopback() {
                log::warn!(
                    "listening on {local}, which is not a loopback address: the protocol has no authentication"
                );
            }
            ready(&format!("tcp:{local}"));
            accept_loop(ctl, listener.incoming(), opts);
            Ok(())
        }
    }
}

/// A connected stream socket (Unix or TCP): duplicable, with timeouts.
trait Socket: Read + Write + Sized + 'static {
    fn duplicate(&self) -> std::io::Result<Self>;
    fn set_timeouts(&self, t: Option<Duration>);
}

impl Socket for std::os::unix::net::UnixStream {
    fn duplicate(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn set_timeouts(&self, t: Option<Duration>) {
        let _ = self.set_read_timeout(t);
        let _ = self.set_write_timeout(t);
    }
}

impl Socket for std::net::TcpStream {
    fn duplicate(&self) -> std::io::Result<Self> {
        let _ = self.set_nodelay(true);
        self.try_clone()
    }
    fn set_timeouts(&self, t: Option<Duration>) {
        let _ = self.set_read_timeout(t);
        let _ = self.set_write_timeout(t);
    }
}

/// Serve the accepted clients one after another until one asks to shut down.
fn accept_loop<S: Socket>(
    ctl: &mut Controller,
    incoming: impl Iterator<Item = std::io::Result<S>>,
    opts: &ServeOptions,
) {
    for stream in incoming {
        let s = match stream {
            Ok(s) => s,
            Err(e) => {
                log::warn!("accept: {e}");
                continue;
            }
        };
        let (Ok(read), Ok(handle)) = (s.duplicate(), s.duplicate()) else {
            log::warn!("could not duplicate a client socket; dropped it");
            continue;
        };
        log::info!("client connected");
        let mut conn = SocketConn {
            read,
            write: s,
            set: Box::new(move |t| handle.set_timeouts(t)),
        };
        if session(ctl, &mut conn, opts) == End::Shutdown {
            break;
        }
    }
}

fn error_reply(id: &Option<Value>, code: ErrorCode, message: String) -> Value {
    let mut v = json!({"ok": false, "error": ErrorBody { code, message }});
    if let Some(id) = id {
        v["id"] = id.clone();
    }
    v
}

fn send(conn: &mut dyn Conn, v: &Value) -> bool {
    let text = serde_json::to_vec(v).expect("a JSON value serializes");
    match protocol::write_message(conn.writer(), &text, &[]) {
        Ok(()) => true,
        Err(e) => {
            log::warn!("could not send a reply: {e}");
            false
        }
    }
}

/// Serve one client until it leaves, breaks the framing, or asks to shut down.
fn session(ctl: &mut Controller, conn: &mut dyn Conn, opts: &ServeOptions) -> End {
    loop {
        conn.set_timeout(None);
        let msg = protocol::read_first_byte(conn.reader()).and_then(|first| {
            conn.set_timeout(Some(opts.io_timeout));
            protocol::read_message_after(conn.reader(), first, max_blob_now(opts.max_blob))
        });
        let msg = match msg {
            Ok(m) => m,
            Err(ReadError::Closed) => {
                log::info!("client disconnected");
                return End::Next;
            }
            Err(e) => {
                log::warn!("{e}; closing the connection");
                send(
                    conn,
                    &error_reply(&None, ErrorCode::BadMessage, e.to_string()),
                );
                return End::Next;
            }
        };
        let (reply, end) = handle(ctl, &msg);
        if !send(conn, &reply) {
            return End::Next;
        }
        if end {
            return End::Shutdown;
        }
    }
}

/// The payload limit, lowered so that a declared payload never crosses the memory limit (which
/// would stop the process).
fn max_blob_now(max: u32) -> u32 {
    match crate::util::mem::limit() {
        Some(l) => {
            let room = l.saturating_sub(crate::util::mem::current_bytes()) / 2;
            max.min(room.min(u32::MAX as usize) as u32)
        }
        None => max,
    }
}

fn frame_of(f: &FrameFields, blob: &[u8]) -> std::result::Result<Frame, String> {
    let want = f
        .height
        .checked_mul(f.width)
        .and_then(|n| n.checked_mul(3))
        .filter(|&n| n > 0);
    match want {
        Some(n) if n == blob.len() => Ok(Frame {
            height: f.height,
            width: f.width,
            data: blob.to_vec(),
        }),
        _ => Err(format!(
            "a {}x{} RGB frame needs {} payload bytes, the message has {}",
            f.height,
            f.width,
            want.map(|n| n.to_string())
                .unwrap_or_else(|| "a positive size and".into()),
            blob.len()
        )),
    }
}

fn code_of(e: &QwmError) -> ErrorCode {
    match e {
        QwmError::Usage(_) => ErrorCode::BadInput,
        QwmError::State(_) => ErrorCode::BadState,
        _ => ErrorCode::Failed,
    }
}

/// Apply one whole request; returns the reply and whether to stop.
fn handle(ctl: &mut Controller, msg: &protocol::Message) -> (Value, bool) {
    // The id first, so that even a request of an unknown shape gets its id back.
    let value: Value = match serde_json::from_slice(&msg.json) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return (
                error_reply(
                    &None,
                    ErrorCode::BadRequest,
                    "request JSON: expected an object such as {\"op\": \"hello\"}".into(),
                ),
                false,
            )
        }
        Err(e) => {
            return (
                error_reply(&None, ErrorCode::BadRequest, format!("request JSON: {e}")),
                false,
            )
        }
    };
    let id = value.get("id").cloned();
    let request: Request = match serde_json::from_value(value) {
        Ok(e) => e,
        Err(e) => {
            return (
                error_reply(
                    &id,
                    ErrorCode::BadRequest,
                    format!("request: {e} (see docs/serve.md for the operations)"),
                ),
                false,
            )
        }
    };
    let carries_frame = matches!(
        request,
        Request::SetGoal(_) | Request::Act(_) | Request::Observe(_)
    );
    if !carries_frame && !msg.blob.is_empty() {
        return (
            error_reply(
                &id,
                ErrorCode::BadRequest,
                format!(
                    "this operation takes no payload, the message has {} bytes",
                    msg.blob.len()
                ),
            ),
            false,
        );
    }
    let mut stop = false;
    let result: std::result::Result<Value, (ErrorCode, String)> = match &request {
        Request::Hello { protocol: p } => match p {
            Some(v) if *v != protocol::PROTOCOL => Err((
                ErrorCode::Unsupported,
                format!(
                    "protocol {v}: this server speaks protocol {}",
                    protocol::PROTOCOL
                ),
            )),
            _ => Ok(hello(ctl)),
        },
        Request::SetGoal(f) | Request::Act(f) | Request::Observe(f) => {
            match frame_of(f, &msg.blob) {
                Err(m) => Err((ErrorCode::BadInput, m)),
                Ok(frame) => match &request {
                    Request::SetGoal(_) => ctl
                        .set_goal(&frame, &f.proprio)
                        .map(|()| json!({}))
                        .map_err(|e| (code_of(&e), e.to_string())),
                    Request::Observe(_) => ctl
                        .observe(&frame, &f.proprio)
                        .map(|s| json!({"encode_s": s}))
                        .map_err(|e| (code_of(&e), e.to_string())),
                    _ => ctl
                        .act(&frame, &f.proprio)
                        .map(|a| {
                            let d = ctl.model().manifest.action_dim;
                            let rows: Vec<&[f32]> = a.actions.chunks(d).collect();
                            json!({
                                "actions": rows,
                                "objective": finite_or_null(a.objective),
                                "non_finite": a.non_finite,
                                "timing": a.timing,
                            })
                        })
                        .map_err(|e| (code_of(&e), e.to_string())),
                },
            }
        }
        Request::Reset { episode } => {
            match episode {
                Some(e) => ctl.reset_to(*e),
                None => ctl.reset(),
            }
            Ok(json!({"episode": ctl.stats().episode}))
        }
        Request::Stats {} => Ok(json!({"stats": ctl.stats()})),
        Request::Shutdown {} => {
            stop = true;
            Ok(json!({}))
        }
    };
    let reply = match result {
        Ok(mut v) => {
            v["ok"] = json!(true);
            if let Some(id) = &id {
                v["id"] = id.clone();
            }
            v
        }
        Err((code, m)) => {
            log::info!("request refused ({code:?}): {m}");
            error_reply(&id, code, m)
        }
    };
    (reply, stop)
}

fn finite_or_null(v: f32) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

fn hello(ctl: &Controller) -> Value {
    let m = &ctl.model().manifest;
    let s = ctl.shape();
    json!({
        "protocol": protocol::PROTOCOL,
        "qwm_version": env!("CARGO_PKG_VERSION"),
        "model": {
            "env": m.env,
            "image_size": m.image_size,
            "action_dim": m.action_dim,
            "proprio_dim": m.proprio_dim,
            "frameskip": m.frameskip,
            "num_hist": m.num_hist,
        },
        "controller": {
            "horizon": s.horizon,
            "n_taken": s.n_taken,
            "chunk": s.chunk,
            "seed": ctl.seed(),
            "actions_per_act": ctl.actions_per_act(),
            "needs_intermediate_frames": ctl.needs_intermediate_frames(),
            "has_goal": ctl.has_goal(),
            "episode": ctl.stats().episode,
        },
    })
}
