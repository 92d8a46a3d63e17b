//! The library `Controller` driven the way a robot's loop drives it: the environment on the
//! caller's side, frames and proprioception in, environment actions out.

mod common;

use qwm::bundle::Bundle;
use qwm::engine::{make_backend, LoadOptions};
use qwm::env::{make_env, Env, Frame, TaskSeeds};
use qwm::runtime::controller::Controller;
use qwm::runtime::episode::run_episode;
use qwm::runtime::settings::ControlArgs;

fn small() -> ControlArgs {
    ControlArgs {
        samples: 60,
        topk: 6,
        opt_steps: 3,
        ..ControlArgs::default()
    }
}

fn controller(dir: &std::path::Path, control: &ControlArgs, seed: u64) -> Controller {
    let bundle = Bundle::open(dir).unwrap();
    let backend = make_backend("tract").unwrap();
    Controller::load(
        &bundle,
        backend.as_ref(),
        &LoadOptions::with_threads(1),
        control,
        None,
        seed,
    )
    .unwrap()
}

/// One episode with the loop on the caller's side; returns (success, final state, env actions).
fn client_episode(
    ctl: &mut Controller,
    env: &mut dyn Env,
    task_seed: u64,
    max_iter: usize,
) -> (bool, Vec<f32>, Vec<f32>) {
    let size = ctl.model().manifest.image_size;
    let task = env.sample_task(task_seed);
    env.reset_to(&task).unwrap();
    ctl.set_goal(
        &env.render_state(&task.goal, size),
        &env.proprio_of(&task.goal),
    )
    .unwrap();
    let mut all = vec![];
    let step = ctl.model().manifest.frameskip * env.action_dim();
    for _ in 0..max_iter {
        let act = ctl.act(&env.render(size), &env.proprio()).unwrap();
        assert_eq!(act.actions.len(), ctl.actions_per_act() * env.action_dim());
        for (k, model_step) in act.actions.chunks(step).enumerate() {
            for a in model_step.chunks(env.action_dim()) {
                env.step(a).unwrap();
            }
            if ctl.needs_intermediate_frames() && k + 1 < ctl.shape().n_taken {
                ctl.observe(&env.render(size), &env.proprio()).unwrap();
            }
        }
        all.extend(act.actions);
        if env.is_success(&task.goal) {
            return (true, env.state(), all);
        }
    }
    (false, env.state(), all)
}

#[test]
fn a_caller_side_loop_reproduces_the_episode_runner() {
    for (dir, control) in [
        (common::wall(), small()),
        (
            common::tiny_h3(),
            ControlArgs {
                horizon: 4,
                n_taken: 3,
                ..small()
            },
        ),
    ] {
        let seed = 3;
        let mut runner = controller(&dir, &control, seed);
        let mut ctl = controller(&dir, &control, seed);
        let mut env = make_env("wall").unwrap();
        for i in 0..2 {
            let task_seed = TaskSeeds::evaluation(seed, i);
            let r = run_episode(&mut runner, env.as_mut(), 3, i, task_seed, None).unwrap();
            // The caller's episodes follow one another with reset() (episode 0 needs none).
            if i > 0 {
                ctl.reset();
            }
            let (success, state, actions) = client_episode(&mut ctl, env.as_mut(), task_seed, 3);
            assert_eq!(success, r.success, "{} episode {i}", dir.display());
            assert_eq!(state, r.final_state, "{} episode {i}", dir.display());
            assert!(actions.iter().all(|a| a.is_finite()));
            assert_eq!(ctl.stats().episode, i as u64);
        }
    }
}

#[test]
fn same_seed_same_actions_and_reset_to_equals_reset() {
    let dir = common::wall();
    let mut env = make_env("wall").unwrap();
    let mut a = controller(&dir, &small(), 9);
    let mut b = controller(&dir, &small(), 9);
    a.reset();
    a.reset();
    b.reset_to(2);
    let (_, sa, aa) = client_episode(&mut a, env.as_mut(), 5, 2);
    let (_, sb, ab) = client_episode(&mut b, env.as_mut(), 5, 2);
    assert_eq!((&sa, &aa), (&sb, &ab));
    // Another seed draws other planner noise.
    let mut c = controller(&dir, &small(), 10);
    c.reset_to(2);
    let (_, _, ac) = client_episode(&mut c, env.as_mut(), 5, 2);
    assert_ne!(ab, ac);
}

#[test]
fn bad_calls_are_clear_errors() {
    let dir = common::wall();
    let mut ctl = controller(&dir, &small(), 0);
    let env = make_env("wall").unwrap();
    let frame = env.render(64);
    let p = env.proprio();
    let err = ctl.act(&frame, &p).unwrap_err().to_string();
    assert!(err.contains("no goal set"), "{err}");
    ctl.set_goal(&frame, &p).unwrap();
    let nan = vec![f32::NAN; p.len()];
    let err = ctl.act(&frame, &nan).unwrap_err().to_string();
    assert!(err.contains("act") && err.contains("finite"), "{err}");
    let err = ctl.act(&frame, &p[..1]).unwrap_err().to_string();
    assert!(err.contains("proprio"), "{err}");
    let short = Frame {
        data: frame.data[1..].to_vec(),
        ..frame.clone()
    };
    let err = ctl.act(&short, &p).unwrap_err().to_string();
    assert!(err.contains("bytes"), "{err}");
    let other = env.render(48);
    let err = ctl.act(&other, &p).unwrap_err().to_string();
    assert!(err.contains("48x48") && err.contains("64x64"), "{err}");
    // None of the refused calls changed the controller: the next act is the first of episode 0.
    assert_eq!(ctl.stats().acts, 0);
    let act = ctl.act(&frame, &p).unwrap();
    assert_eq!(act.actions.len(), 5 * 5 * 2);
    assert!(act.objective.is_finite());
    // A goal of another camera size resets the accepted size.
    ctl.set_goal(&other, &p).unwrap();
    ctl.act(&other, &p).unwrap();
}

#[test]
fn a_multi_frame_model_requires_the_intermediate_frames() {
    let control = ControlArgs {
        horizon: 4,
        n_taken: 3,
        ..small()
    };
    let mut ctl = controller(&common::tiny_h3(), &control, 0);
    assert!(ctl.needs_intermediate_frames());
    let env = make_env("wall").unwrap();
    let (frame, p) = (env.render(32), env.proprio());
    ctl.set_goal(&frame, &p).unwrap();
    assert!(ctl.observe(&frame, &p).is_err(), "observe before any act");
    ctl.act(&frame, &p).unwrap();
    let err = ctl.act(&frame, &p).unwrap_err().to_string();
    assert!(err.contains("observe()"), "{err}");
    ctl.observe(&frame, &p).unwrap();
    ctl.observe(&frame, &p).unwrap();
    assert!(
        ctl.observe(&frame, &p).is_err(),
        "a third observe for n_taken 3"
    );
    ctl.act(&frame, &p).unwrap();
    // Models with a one-frame history need none and ignore them.
    let mut one = controller(&common::wall(), &small(), 0);
    assert!(!one.needs_intermediate_frames());
    assert_eq!(one.observe(&env.render(64), &p).unwrap(), 0.0);
}

#[test]
fn stats_count_calls_and_memory() {
    let mut ctl = controller(&common::wall(), &small(), 0);
    let mut env = make_env("wall").unwrap();
    client_episode(&mut ctl, env.as_mut(), 1, 2);
    let s = ctl.stats();
    assert!(s.acts >= 1 && s.acts <= 2 && s.acts == s.acts_in_episode);
    assert_eq!(s.encodes, s.acts + 1);
    assert!(s.plan_s > 0.0 && s.predict_s > 0.0 && s.predict_s <= s.plan_s);
    assert!(s.peak_rss_bytes > 0);
    assert_eq!(s.chunk, 60);
    ctl.reset();
    assert_eq!(ctl.stats().acts_in_episode, 0);
    assert_eq!(ctl.stats().episode, 1);
}
