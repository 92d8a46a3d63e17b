//! The C ABI's contract from the caller's side: statuses, last-error messages, NULLs, buffers
//! too small, bad options, calls out of order.

use qwmc::*;
use std::ffi::{CStr, CString};
use std::ptr::{null, null_mut};

fn last() -> String {
    // SAFETY: qwm_last_error never returns NULL and the string lives until the next call.
    unsafe { CStr::from_ptr(qwm_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn wall() -> CString {
    CString::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/wall")).unwrap()
}

fn controller(flags: &[&str]) -> (QwmStatus, *mut QwmController) {
    let owned: Vec<CString> = flags.iter().map(|f| CString::new(*f).unwrap()).collect();
    let ptrs: Vec<*const std::ffi::c_char> = owned.iter().map(|c| c.as_ptr()).collect();
    let mut ctl = null_mut();
    // SAFETY: valid strings and an output pointer.
    let s = unsafe { qwm_controller_new(wall().as_ptr(), ptrs.as_ptr(), ptrs.len(), &mut ctl) };
    (s, ctl)
}

#[test]
fn nulls_bad_options_and_missing_models_are_statuses_with_messages() {
    let mut ctl = null_mut();
    // SAFETY: deliberately NULL arguments; the API must refuse them.
    unsafe {
        assert_eq!(
            qwm_controller_new(null(), null(), 0, &mut ctl),
            QwmStatus::InvalidArgument
        );
        assert!(last().contains("model_dir"), "{}", last());
        assert_eq!(
            qwm_controller_new(wall().as_ptr(), null(), 0, null_mut()),
            QwmStatus::InvalidArgument
        );
        assert_eq!(
            qwm_controller_new(wall().as_ptr(), null(), 3, &mut ctl),
            QwmStatus::InvalidArgument
        );
        assert!(last().contains("argv"), "{}", last());
        let missing = CString::new("/nonexistent/model").unwrap();
        assert_eq!(
            qwm_controller_new(missing.as_ptr(), null(), 0, &mut ctl),
            QwmStatus::Failed
        );
        assert!(last().contains("/nonexistent/model"), "{}", last());
        assert!(ctl.is_null());
        let mut info = QwmControllerInfo::default();
        assert_eq!(
            qwm_controller_info(null_mut(), &mut info),
            QwmStatus::InvalidArgument
        );
        assert_eq!(
            qwm_controller_reset(null_mut(), 0),
            QwmStatus::InvalidArgument
        );
        qwm_controller_free(null_mut());
        qwm_env_free(null_mut());
    }
    let (s, ctl) = controller(&["--smples", "3"]);
    assert_eq!(s, QwmStatus::InvalidArgument);
    assert!(last().contains("--smples"), "{}", last());
    assert!(ctl.is_null());
    let (s, _) = controller(&["--samples", "0"]);
    assert_ne!(s, QwmStatus::Ok);
    assert!(!last().is_empty());
}

#[test]
fn buffers_order_and_inputs() {
    let (s, ctl) = controller(&[
        "--samples",
        "30",
        "--topk",
        "3",
        "--opt-steps",
        "1",
        "--threads",
        "1",
    ]);
    assert_eq!(s, QwmStatus::Ok, "{}", last());
    let mut info = QwmControllerInfo::default();
    let frame = vec![0u8; 64 * 64 * 3];
    let p = [0f32, 0.0];
    let mut actions = vec![0f32; 50];
    let (mut written, mut objective) = (0usize, 0f32);
    // SAFETY: a live handle and buffers of the stated sizes.
    unsafe {
        assert_eq!(qwm_controller_info(ctl, &mut info), QwmStatus::Ok);
        assert_eq!(
            (info.image_size, info.actions_per_act, info.action_dim),
            (64, 25, 2)
        );
        let act =
            |buf: &mut [f32], w: &mut usize, o: &mut f32, frame: &[u8], side: usize, p: &[f32]| {
                qwm_controller_act(
                    ctl,
                    frame.as_ptr(),
                    side,
                    side,
                    p.as_ptr(),
                    p.len(),
                    buf.as_mut_ptr(),
                    buf.len(),
                    w,
                    o,
                )
            };
        assert_eq!(
            act(
                &mut actions[..10],
                &mut written,
                &mut objective,
                &frame,
                64,
                &p
            ),
            QwmStatus::BufferTooSmall
        );
        assert_eq!(written, 50);
        assert_eq!(
            act(&mut actions, &mut written, &mut objective, &frame, 64, &p),
            QwmStatus::BadState
        );
        assert!(last().contains("set_goal"), "{}", last());
        assert_eq!(
            qwm_controller_set_goal(ctl, frame.as_ptr(), 64, 64, p.as_ptr(), 1),
            QwmStatus::BadInput
        );
        assert!(last().contains("proprio"), "{}", last());
        assert_eq!(
            qwm_controller_set_goal(ctl, frame.as_ptr(), 0, 64, p.as_ptr(), 2),
            QwmStatus::BadInput
        );
        assert_eq!(
            qwm_controller_set_goal(ctl, frame.as_ptr(), usize::MAX, 3, p.as_ptr(), 2),
            QwmStatus::BadInput
        );
        assert_eq!(
            qwm_controller_set_goal(ctl, frame.as_ptr(), 64, 64, p.as_ptr(), 2),
            QwmStatus::Ok
        );
        let nan = [f32::NAN, 0.0];
        assert_eq!(
            act(&mut actions, &mut written, &mut objective, &frame, 64, &nan),
            QwmStatus::BadInput
        );
        assert_eq!(
            act(&mut actions, &mut written, &mut objective, &frame, 64, &p),
            QwmStatus::Ok,
            "{}",
            last()
        );
        assert_eq!(written, 50);
        assert!(objective.is_finite() && actions.iter().all(|a| a.is_finite()));
        assert_eq!(last(), "");
        let mut small = [0 as std::ffi::c_char; 4];
        let mut need = 0usize;
        assert_eq!(
            qwm_controller_stats_json(ctl, small.as_mut_ptr(), small.len(), &mut need),
            QwmStatus::BufferTooSmall
        );
        let mut buf = vec![0 as std::ffi::c_char; need];
        assert_eq!(
            qwm_controller_stats_json(ctl, buf.as_mut_ptr(), buf.len(), &mut need),
            QwmStatus::Ok
        );
        let text = CStr::from_ptr(buf.as_ptr()).to_str().unwrap();
        assert!(text.contains("\"acts\":1"), "{text}");
        qwm_controller_free(ctl);
    }
}

#[test]
fn simulators_refuse_use_before_reset_and_bad_actions() {
    let mut env = null_mut();
    let name = CString::new("wall").unwrap();
    let moon = CString::new("moon").unwrap();
    // SAFETY: valid strings, handles and buffers.
    unsafe {
        assert_eq!(
            qwm_env_new(moon.as_ptr(), &mut env),
            QwmStatus::InvalidArgument
        );
        assert!(last().contains("moon"), "{}", last());
        assert_eq!(qwm_env_new(name.as_ptr(), &mut env), QwmStatus::Ok);
        let a = [0f32, 0.0];
        assert_eq!(
            qwm_env_step(env, a.as_ptr(), 2, null_mut(), null_mut()),
            QwmStatus::BadState
        );
        assert_eq!(qwm_env_reset(env, qwm_task_seed(0, 0)), QwmStatus::Ok);
        assert_eq!(qwm_task_seed(0, 0), 1);
        assert_eq!(
            qwm_env_step(env, a.as_ptr(), 1, null_mut(), null_mut()),
            QwmStatus::BadInput
        );
        let mut rgb = vec![0u8; 10];
        let mut w = 0usize;
        assert_eq!(
            qwm_env_render(env, 0, 64, rgb.as_mut_ptr(), rgb.len(), &mut w),
            QwmStatus::BufferTooSmall
        );
        assert_eq!(w, 64 * 64 * 3);
        let (mut ok, mut d) = (true, 0f32);
        assert_eq!(
            qwm_env_step(env, a.as_ptr(), 2, &mut ok, &mut d),
            QwmStatus::Ok
        );
        assert!(!ok && d > 0.0);
        qwm_env_free(env);
    }
}
