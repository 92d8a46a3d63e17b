//! The C ABI of qwm (`libqwmc.so` / `libqwmc.a`, header `include/qwm.h`).
//!
//! Conventions, the same for every function:
//! - Objects are opaque handles made by `*_new` and released by `*_free` (which accept NULL).
//! - Every fallible function returns a [`QwmStatus`]; on anything but `QWM_STATUS_OK`,
//!   [`qwm_last_error`] gives the message (per thread, valid until the next qwm call on it).
//! - Buffers belong to the caller: qwm writes into `(pointer, capacity)` pairs and reports the
//!   length it needed; a buffer too small is `QWM_STATUS_BUFFER_TOO_SMALL` and changes nothing.
//! - No panic crosses the boundary: one is caught and returned as `QWM_STATUS_PANIC`.
//! - A handle is used by one thread at a time (the caller serializes calls on a handle).

#![allow(clippy::missing_safety_doc)] // Each function's contract is in its doc comment.

use qwm::env::{Env, Frame, Task};
use qwm::runtime::controller::Controller;
use qwm::runtime::settings::ControllerArgs;
use qwm::QwmError;
use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

#[global_allocator]
static ALLOC: qwm::util::mem::CountingAlloc = qwm::util::mem::CountingAlloc;

/// Status of a call.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QwmStatus {
    /// Success.
    Ok = 0,
    /// A NULL or invalid argument (pointer, string, option flag, name).
    InvalidArgument = 1,
    /// A bad frame or proprioception (size, length, non-finite values).
    BadInput = 2,
    /// A call out of order (act before set_goal, observe without act, env use before reset).
    BadState = 3,
    /// The operation failed (a model that cannot be loaded, planning without a finite
    /// objective, an engine error).
    Failed = 4,
    /// The output buffer is too small: the needed length was written to the length pointer.
    BufferTooSmall = 5,
    /// A bug inside qwm (a panic), caught at the boundary.
    Panic = 6,
}

/// Facts of a controller's model and plan.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct QwmControllerInfo {
    /// The model's input image side (frames of other sizes are resized).
    pub image_size: usize,
    /// Values per environment action.
    pub action_dim: usize,
    /// Values of raw proprioception.
    pub proprio_dim: usize,
    /// Environment actions per model step.
    pub frameskip: usize,
    /// Frames of history the model keeps.
    pub num_hist: usize,
    /// Planning horizon in model steps.
    pub horizon: usize,
    /// Model steps executed per act.
    pub n_taken: usize,
    /// Environment actions returned by each act (`n_taken * frameskip`).
    pub actions_per_act: usize,
    /// Whether `qwm_controller_observe` must follow each of the first `n_taken - 1` model
    /// steps of an act's actions.
    pub needs_intermediate_frames: bool,
}

/// An MPC controller: a world-model bundle on an engine with a planner.
pub struct QwmController {
    inner: Controller,
}

/// One of qwm's simulators (wall, pointmaze, pusht), for testing a control loop without a robot.
pub struct QwmEnv {
    env: Box<dyn Env>,
    task: Option<Task>,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

type Failure = (QwmStatus, String);

fn status_of(e: &QwmError) -> QwmStatus {
    match e {
        QwmError::Usage(_) => QwmStatus::BadInput,
        QwmError::State(_) => QwmStatus::BadState,
        _ => QwmStatus::Failed,
    }
}

fn fail(e: QwmError) -> Failure {
    (status_of(&e), e.to_string())
}

fn invalid(msg: impl Into<String>) -> Failure {
    (QwmStatus::InvalidArgument, msg.into())
}

/// Run a call body: its error or panic becomes a status and the thread's last error.
fn guard(f: impl FnOnce() -> Result<(), Failure>) -> QwmStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            set_error("");
            QwmStatus::Ok
        }
        Ok(Err((status, msg))) => {
            set_error(&msg);
            status
        }
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_error(&format!("internal error (panic): {msg}"));
            QwmStatus::Panic
        }
    }
}

unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    // SAFETY: the caller passes a NUL-terminated string that lives for the call (the contract
    // of every `const char *` argument).
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| invalid(format!("{what} is not UTF-8")))
}

unsafe fn slice_arg<'a, T>(p: *const T, len: usize, what: &str) -> Result<&'a [T], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(invalid(format!("{what} is NULL with length {len}")));
    }
    if len > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return Err(invalid(format!("{what}: length {len} is impossible")));
    }
    // SAFETY: the caller passes `len` readable, initialized elements at `p` for the call.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

unsafe fn out_slice<'a, T>(p: *mut T, cap: usize, what: &str) -> Result<&'a mut [T], Failure> {
    if cap == 0 {
        return Ok(&mut []);
    }
    if p.is_null() {
        return Err(invalid(format!("{what} is NULL with capacity {cap}")));
    }
    if cap > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return Err(invalid(format!("{what}: capacity {cap} is impossible")));
    }
    // SAFETY: the caller passes `cap` writable elements at `p`, not aliased for the call.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, cap) })
}

unsafe fn handle<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: a non-NULL handle comes from the matching `*_new` and is not yet freed, and no
    // other thread uses it during the call (the API's contract).
    unsafe { p.as_mut() }.ok_or_else(|| invalid(format!("{what} is NULL")))
}

unsafe fn frame_arg(rgb: *const u8, height: usize, width: usize) -> Result<Frame, Failure> {
    let n = height
        .checked_mul(width)
        .and_then(|n| n.checked_mul(3))
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            (
                QwmStatus::BadInput,
                format!("frame {height}x{width}: not a positive size"),
            )
        })?;
    // SAFETY: the caller passes height * width * 3 bytes at `rgb` (the contract).
    let data = unsafe { slice_arg(rgb, n, "rgb") }?.to_vec();
    Ok(Frame {
        height,
        width,
        data,
    })
}

/// A frame and its proprioception from the caller's buffers (the arguments every
/// observation-taking function shares).
unsafe fn observation<'a>(
    rgb: *const u8,
    height: usize,
    width: usize,
    proprio: *const f32,
    proprio_len: usize,
) -> Result<(Frame, &'a [f32]), Failure> {
    // SAFETY: the caller's buffers, as each public function documents.
    let frame = unsafe { frame_arg(rgb, height, width) }?;
    let p = unsafe { slice_arg(proprio, proprio_len, "proprio") }?;
    Ok((frame, p))
}

fn write_len(p: *mut usize, n: usize) {
    if !p.is_null() {
        // SAFETY: a non-NULL length pointer is writable (the contract).
        unsafe { *p = n };
    }
}

/// qwm's version, a static NUL-terminated string.
#[no_mangle]
pub extern "C" fn qwm_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The message of the last failed call on this thread ("" after a successful one). Valid until
/// the next qwm call on this thread; never NULL.
#[no_mangle]
pub extern "C" fn qwm_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Load the bundle in `model_dir` and build a controller. `argv[0..argc]` are option flags, the
/// same as `qwm serve`'s (for example `"--samples", "300", "--seed", "0", "--backend",
/// "tract", "--threads", "2", "--mem-limit", "512M"`); `argv` may be NULL when `argc` is 0.
/// On success `*out` is the new handle (free it with `qwm_controller_free`).
#[no_mangle]
pub unsafe extern "C" fn qwm_controller_new(
    model_dir: *const c_char,
    argv: *const *const c_char,
    argc: usize,
    out: *mut *mut QwmController,
) -> QwmStatus {
    guard(|| {
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        // SAFETY: `out` is writable (checked non-NULL); NULL until success.
        unsafe { *out = std::ptr::null_mut() };
        // SAFETY: the caller's strings and arrays, as documented.
        let dir = unsafe { str_arg(model_dir, "model_dir") }?;
        let ptrs = unsafe { slice_arg(argv, argc, "argv") }?;
        let mut flags = Vec::with_capacity(argc);
        for (i, &p) in ptrs.iter().enumerate() {
            flags.push(unsafe { str_arg(p, &format!("argv[{i}]")) }?.to_string());
        }
        qwm::util::mem::mark_installed();
        let args = ControllerArgs::parse_flags(flags).map_err(|e| invalid(e.to_string()))?;
        let inner =
            Controller::open(Path::new(dir), &args.control, &args.run, args.seed).map_err(|e| {
                match e {
                    QwmError::Usage(m) => invalid(m),
                    other => (QwmStatus::Failed, format!("loading {dir}: {other}")),
                }
            })?;
        let boxed = Box::new(QwmController { inner });
        // SAFETY: as above.
        unsafe { *out = Box::into_raw(boxed) };
        Ok(())
    })
}

/// Release a controller (NULL is ignored).
#[no_mangle]
pub unsafe extern "C" fn qwm_controller_free(ctl: *mut QwmController) {
    if !ctl.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: `ctl` came from qwm_controller_new and is freed once (the contract).
            drop(unsafe { Box::from_raw(ctl) });
        }));
    }
}

/// The model's and plan's facts.
#[no_mangle]
pub unsafe extern "C" fn qwm_controller_info(
    ctl: *mut QwmController,
    out: *mut QwmControllerInfo,
) -> QwmStatus {
    guard(|| {
        // SAFETY: the caller's handle and output struct.
        let c = &unsafe { handle(ctl, "ctl") }?.inner;
        let o = unsafe { handle(out, "out") }?;
        let m = &c.model().manifest;
        let s = c.shape();
        *o = QwmControllerInfo {
            image_size: m.image_size,
            action_dim: m.action_dim,
            proprio_dim: m.proprio_dim,
            frameskip: m.frameskip,
            num_hist: m.num_hist,
            horizon: s.horizon,
            n_taken: s.n_taken,
            actions_per_act: c.actions_per_act(),
            needs_intermediate_frames: c.needs_intermediate_frames(),
        };
        Ok(())
    })
}

/// Encode the goal observation: `rgb` is `height * width * 3` bytes (RGB, row-major HWC),
/// `proprio` `proprio_len` raw values.
#[no_mangle]
pub unsafe extern "C" fn qwm_controller_set_goal(
    ctl: *mut QwmController,
    rgb: *const u8,
    height: usize,
    width: usize,
    proprio: *const f32,
    proprio_len: usize,
) -> QwmStatus {
    guard(|| {
        // SAFETY: the caller's handle and buffers.
        let c = &mut unsafe { handle(ctl, "ctl") }?.inner;
        let (frame, p) = unsafe { observation(rgb, height, width, proprio, proprio_len) }?;
        c.set_goal(&frame, p).map_err(fail)
    })
}

/// Plan from the current observation. Writes `actions_per_act * action_dim` floats (the
/// environment actions to execute, in order, denormalized) to `actions` and their count to
/// `*written`; `objective`, when not NULL, receives the plan's objective. A buffer of fewer
/// floats is `QWM_STATUS_BUFFER_TOO_SMALL` (with the needed count in `*written`) and plans
/// nothing.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn qwm_controller_act(
    ctl: *mut QwmController,
    rgb: *const u8,
    height: usize,
    width: usize,
    proprio: *const f32,
    proprio_len: usize,
    actions: *mut f32,
    capacity: usize,
    written: *mut usize,
    objective: *mut f32,
) -> QwmStatus {
    guard(|| {
        // SAFETY: the caller's handle and buffers.
        let c = &mut unsafe { handle(ctl, "ctl") }?.inner;
        let need = c.actions_per_act() * c.model().manifest.action_dim;
        write_len(written, need);
        if capacity < need {
            return Err((
                QwmStatus::BufferTooSmall,
                format!("actions: {capacity} floats given, {need} needed"),
            ));
        }
        let out = unsafe { out_slice(actions, capacity, "actions") }?;
        let (frame, p) = unsafe { observation(rgb, height, width, proprio, proprio_len) }?;
        let act = c.act(&frame, p).map_err(fail)?;
        out[..act.actions.len()].copy_from_slice(&act.actions);
        write_len(written, act.actions.len());
        if !objective.is_null() {
            // SAFETY: a non-NULL objective pointer is writable.
            unsafe { *objective = act.objective };
        }
        Ok(())
    })
}

/// The observation after a model step inside the last act's actions (see
/// `QwmControllerInfo::needs_intermediate_frames`; other models ignore it).
#[no_mangle]
pub unsafe extern "C" fn qwm_controller_observe(
    ctl: *mut QwmController,
    rgb: *const u8,
    height: usize,
    width: usize,
    proprio: *const f32,
    proprio_len: usize,
) -> QwmStatus {
    guard(|| {
        // SAFETY: the caller's handle and buffers.
        let c = &mut unsafe { handle(ctl, "ctl") }?.inner;
        let (frame, p) = unsafe { observation(rgb, height, width, proprio, proprio_len) }?;
        c.observe(&frame, p).map(|_| ()).map_err(fail)
    })
}

/// Start episode `episode` (its planner noise stream), or the next one when `episode` is
/// negative: forget the history and the warm start; the goal is kept.
#[no_mangle]
pub unsafe extern "C" fn qwm_controller_reset(ctl: *mut QwmController, episode: i64) -> QwmStatus {
    guard(|| {
        // SAFETY: the caller's handle.
        let c = &mut unsafe { handle(ctl, "ctl") }?.inner;
        if episode < 0 {
            c.reset();
        } else {
            c.reset_to(episode as u64);
        }
        Ok(())
    })
}

/// Counters, timings and memory as a NUL-terminated JSON object (the fields of `qwm serve`'s
/// `stats`) in `buf`; `*needed` gets its length including the NUL.
#[no_mangle]
pub unsafe extern "C" fn qwm_controller_stats_json(
    ctl: *mut QwmController,
    buf: *mut c_char,
    capacity: usize,
    needed: *mut usize,
) -> QwmStatus {
    guard(|| {
        // SAFETY: the caller's handle and buffer.
        let c = &unsafe { handle(ctl, "ctl") }?.inner;
        let text = serde_json::to_string(&c.stats()).map_err(|e| invalid(e.to_string()))?;
        write_len(needed, text.len() + 1);
        if capacity < text.len() + 1 {
            return Err((
                QwmStatus::BufferTooSmall,
                format!("buf: {capacity} bytes given, {} needed", text.len() + 1),
            ));
        }
        let out = unsafe { out_slice(buf.cast::<u8>(), capacity, "buf") }?;
        out[..text.len()].copy_from_slice(text.as_bytes());
        out[text.len()] = 0;
        Ok(())
    })
}

/// The task seed of episode `episode` of `qwm plan --seed seed`: `99 * (seed + episode) + 1`.
#[no_mangle]
pub extern "C" fn qwm_task_seed(seed: u64, episode: u64) -> u64 {
    qwm::env::TaskSeeds::evaluation(seed, episode as usize)
}

/// Make simulator `name` ("wall", "pointmaze" or "pusht").
#[no_mangle]
pub unsafe extern "C" fn qwm_env_new(name: *const c_char, out: *mut *mut QwmEnv) -> QwmStatus {
    guard(|| {
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        // SAFETY: `out` is writable; the name is the caller's string.
        unsafe { *out = std::ptr::null_mut() };
        let name = unsafe { str_arg(name, "name") }?;
        let env = qwm::env::make_env(name).map_err(|e| invalid(e.to_string()))?;
        unsafe { *out = Box::into_raw(Box::new(QwmEnv { env, task: None })) };
        Ok(())
    })
}

/// Release a simulator (NULL is ignored).
#[no_mangle]
pub unsafe extern "C" fn qwm_env_free(env: *mut QwmEnv) {
    if !env.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: `env` came from qwm_env_new and is freed once.
            drop(unsafe { Box::from_raw(env) });
        }));
    }
}

/// Reset to the task drawn from `task_seed` (its layout, start and goal).
#[no_mangle]
pub unsafe extern "C" fn qwm_env_reset(env: *mut QwmEnv, task_seed: u64) -> QwmStatus {
    guard(|| {
        // SAFETY: the caller's handle.
        let e = unsafe { handle(env, "env") }?;
        let task = e.env.sample_task(task_seed);
        e.env.reset_to(&task).map_err(fail)?;
        e.task = Some(task);
        Ok(())
    })
}

fn task_of(e: &QwmEnv) -> Result<&Task, Failure> {
    e.task.as_ref().ok_or_else(|| {
        (
            QwmStatus::BadState,
            "the simulator has no task: call qwm_env_reset first".into(),
        )
    })
}

fn copy_out<T: Copy>(
    src: &[T],
    dst: *mut T,
    cap: usize,
    len: *mut usize,
    what: &str,
) -> Result<(), Failure> {
    write_len(len, src.len());
    if cap < src.len() {
        return Err((
            QwmStatus::BufferTooSmall,
            format!("{what}: {cap} elements given, {} needed", src.len()),
        ));
    }
    // SAFETY: the caller's buffer of `cap` elements.
    let out = unsafe { out_slice(dst, cap, what) }?;
    out[..src.len()].copy_from_slice(src);
    Ok(())
}

/// Render the current state (`goal` 0) or the goal (`goal` 1) as a `size x size` RGB frame
/// into `rgb` (`size * size * 3` bytes; `*written` gets that count).
#[no_mangle]
pub unsafe extern "C" fn qwm_env_render(
    env: *mut QwmEnv,
    goal: i32,
    size: usize,
    rgb: *mut u8,
    capacity: usize,
    written: *mut usize,
) -> QwmStatus {
    guard(|| {
        // SAFETY: the caller's handle and buffer.
        let e = unsafe { handle(env, "env") }?;
        let task = task_of(e)?;
        if size == 0 || size > 4096 {
            return Err(invalid(format!("size {size}: must be in 1..=4096")));
        }
        let f = if goal != 0 {
            e.env.render_state(&task.goal, size)
        } else {
            e.env.render(size)
        };
        copy_out(&f.data, rgb, capacity, written, "rgb")
    })
}

/// Raw proprioception of the current state (`goal` 0) or of the goal (`goal` 1).
#[no_mangle]
pub unsafe extern "C" fn qwm_env_proprio(
    env: *mut QwmEnv,
    goal: i32,
    out: *mut f32,
    capacity: usize,
    written: *mut usize,
) -> QwmStatus {
    guard(|| {
        // SAFETY: the caller's handle and buffer.
        let e = unsafe { handle(env, "env") }?;
        let task = task_of(e)?;
        let p = if goal != 0 {
            e.env.proprio_of(&task.goal)
        } else {
            e.env.proprio()
        };
        copy_out(&p, out, capacity, written, "proprio")
    })
}

/// The full simulator state (for comparing runs).
#[no_mangle]
pub unsafe extern "C" fn qwm_env_state(
    env: *mut QwmEnv,
    out: *mut f32,
    capacity: usize,
    written: *mut usize,
) -> QwmStatus {
    guard(|| {
        // SAFETY: the caller's handle and buffer.
        let e = unsafe { handle(env, "env") }?;
        task_of(e)?;
        copy_out(&e.env.state(), out, capacity, written, "state")
    })
}

/// Apply one environment action (`action_len` = the simulator's action width), then report
/// whether the goal is reached and the distance to it (either pointer may be NULL).
#[no_mangle]
pub unsafe extern "C" fn qwm_env_step(
    env: *mut QwmEnv,
    action: *const f32,
    action_len: usize,
    success: *mut bool,
    distance: *mut f32,
) -> QwmStatus {
    guard(|| {
        // SAFETY: the caller's handle and buffers.
        let e = unsafe { handle(env, "env") }?;
        let goal = task_of(e)?.goal.clone();
        let a = unsafe { slice_arg(action, action_len, "action") }?;
        if a.len() != e.env.action_dim() || a.iter().any(|v| !v.is_finite()) {
            return Err((
                QwmStatus::BadInput,
                format!(
                    "action: {} values given, {} finite values needed",
                    a.len(),
                    e.env.action_dim()
                ),
            ));
        }
        e.env.step(a).map_err(fail)?;
        if !success.is_null() {
            // SAFETY: non-NULL output pointers are writable.
            unsafe { *success = e.env.is_success(&goal) };
        }
        if !distance.is_null() {
            // SAFETY: as above.
            unsafe { *distance = e.env.distance(&goal) };
        }
        Ok(())
    })
}

/// The simulator's action and proprioception widths (either pointer may be NULL).
#[no_mangle]
pub unsafe extern "C" fn qwm_env_info(
    env: *mut QwmEnv,
    action_dim: *mut usize,
    proprio_dim: *mut usize,
) -> QwmStatus {
    guard(|| {
        // SAFETY: the caller's handle.
        let e = unsafe { handle(env, "env") }?;
        write_len(action_dim, e.env.action_dim());
        write_len(proprio_dim, e.env.proprio_dim());
        Ok(())
    })
}
