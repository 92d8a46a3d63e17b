"""The Python module `qwm` (pip install .) and the stdlib socket client, against `qwm plan`.

Run from the repository root: .venv/bin/python -m pytest python/tests
QWM_BIN names the qwm binary (default target/release/qwm).
"""

import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import qwm

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
QWM_BIN = os.environ.get("QWM_BIN", os.path.join(ROOT, "target", "release", "qwm"))
WALL = os.path.join(ROOT, "models", "wall")
PLANNER = dict(samples=60, topk=6, opt_steps=3, threads=1)
FLAGS = ["--samples", "60", "--topk", "6", "--opt-steps", "3", "--threads", "1"]
SEED, EPISODES, MAX_ITER = 4, 3, 3

sys.path.insert(0, os.path.join(ROOT, "examples", "python"))
from qwm_client import Client, ServerError  # noqa: E402


def f32(v):
    return struct.unpack("f", struct.pack("f", v))[0]


@pytest.fixture(scope="module")
def plan_report():
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "plan.json")
        subprocess.run(
            [QWM_BIN, "plan", "--model", WALL, "--episodes", str(EPISODES), "--seed", str(SEED),
             "--max-iter", str(MAX_ITER), *FLAGS, "--json", out],
            check=True, stdout=subprocess.DEVNULL)
        with open(out) as f:
            return json.load(f)


def run_episodes(act, set_goal, reset):
    """The Gymnasium-style loop of the README, with the controller behind three callables."""
    env = qwm.Env("wall")
    results = []
    for i in range(EPISODES):
        reset(i)
        obs, info = env.reset(seed=qwm.task_seed(SEED, i))
        set_goal(info["goal_frame"], info["goal_proprio"])
        steps, actions = 0, []
        for _ in range(MAX_ITER):
            steps += 1
            for a in act(obs["frame"], obs["proprio"]):
                obs, reward, terminated, truncated, info = env.step(a)
                actions.append(np.asarray(a, dtype=np.float32))
            if info["success"]:
                break
        results.append((info["success"], steps, env.state(), np.array(actions)))
    return results


def check_against_plan(results, report):
    assert len(results) == len(report["episodes"])
    for (success, steps, state, _), want in zip(results, report["episodes"]):
        assert success == want["success"]
        assert steps == want["mpc_steps"]
        assert state.tolist() == [f32(v) for v in want["final_state"]]


def test_module_episodes_equal_qwm_plan(plan_report):
    ctl = qwm.Controller(WALL, backend="tract", seed=SEED, **PLANNER)
    assert ctl.info["actions_per_act"] == 25
    results = run_episodes(ctl.act, ctl.set_goal, lambda i: ctl.reset(episode=i))
    check_against_plan(results, plan_report)
    a = ctl.act(np.zeros((64, 64, 3), np.uint8), [0.0, 0.0])
    assert a.dtype == np.float32 and a.shape == (25, 2)
    assert ctl.stats()["acts"] >= EPISODES


def test_socket_client_episodes_equal_qwm_plan_and_the_module(plan_report):
    with tempfile.TemporaryDirectory() as d:
        sock = os.path.join(d, "qwm.sock")
        srv = subprocess.Popen(
            [QWM_BIN, "serve", "--model", WALL, "--listen", f"unix:{sock}", "--seed", str(SEED),
             *FLAGS], stderr=subprocess.PIPE, text=True)
        try:
            assert "listening on" in srv.stderr.readline()
            c = Client.unix(sock)
            hello = c.hello()
            assert hello["model"]["action_dim"] == 2

            def act(frame, proprio):
                rows = c.act(frame.tobytes(), frame.shape[0], frame.shape[1], proprio.tolist())
                return np.asarray(rows["actions"], dtype=np.float32)

            def set_goal(frame, proprio):
                c.set_goal(frame.tobytes(), frame.shape[0], frame.shape[1], proprio.tolist())

            socket_results = run_episodes(act, set_goal, lambda i: c.reset(i))
            check_against_plan(socket_results, plan_report)
            with pytest.raises(ServerError) as e:
                c.act(b"\0" * 10, 64, 64, [0.0, 0.0])
            assert e.value.code == "bad_input"
            c.shutdown()
            assert srv.wait(timeout=30) == 0
        finally:
            srv.kill()
    ctl = qwm.Controller(WALL, seed=SEED, **PLANNER)
    module_results = run_episodes(ctl.act, ctl.set_goal, lambda i: ctl.reset(episode=i))
    for (_, _, _, a), (_, _, _, b) in zip(socket_results, module_results):
        assert a.shape == b.shape
        assert np.max(np.abs(a - b)) <= 1e-6


def test_bad_input_is_a_clear_error():
    ctl = qwm.Controller(WALL, **PLANNER)
    frame = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(RuntimeError, match="no goal set"):
        ctl.act(frame, [0.0, 0.0])
    with pytest.raises(ValueError, match="uint8"):
        ctl.set_goal(frame.astype(np.float32), [0.0, 0.0])
    with pytest.raises(ValueError, match="shape"):
        ctl.set_goal(frame[:, :, :2], [0.0, 0.0])
    with pytest.raises(ValueError, match="finite"):
        ctl.set_goal(frame, [float("nan"), 0.0])
    with pytest.raises(ValueError, match="proprio"):
        ctl.set_goal(frame, [0.0])
    ctl.set_goal(frame, [0.0, 0.0])
    with pytest.raises(ValueError, match="48x48"):
        ctl.act(np.zeros((48, 48, 3), np.uint8), [0.0, 0.0])
    with pytest.raises(ValueError, match="--smples"):
        qwm.Controller(WALL, smples=3)
    with pytest.raises(RuntimeError, match="nowhere"):
        qwm.Controller(os.path.join(ROOT, "nowhere"))
    env = qwm.Env("wall")
    with pytest.raises(RuntimeError, match="reset"):
        env.step([0.0, 0.0])
    env.reset(seed=1)
    with pytest.raises(ValueError, match="action"):
        env.step([0.0, 0.0, 0.0])
    with pytest.raises(ValueError):
        qwm.Env("moon")
