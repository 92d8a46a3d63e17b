"""qwm for Python: the MPC controller of a quantized world model, and qwm's simulators.

    import qwm
    env = qwm.Env("wall")                                   # wall, pointmaze, pusht
    obs, info = env.reset(seed=qwm.task_seed(0, 0))         # episode 0 of `qwm plan --seed 0`
    ctl = qwm.Controller("models/wall", backend="tract", seed=0)
    ctl.set_goal(info["goal_frame"], info["goal_proprio"])
    for _ in range(10):
        for a in ctl.act(obs["frame"], obs["proprio"]):     # float32[n_taken * frameskip, action_dim]
            obs, reward, terminated, truncated, info = env.step(a)
        if info["success"]:
            break

Episode i of `qwm plan --seed S` is `env.reset(seed=qwm.task_seed(S, i))` (task seed
99 * (S + i) + 1) with `Controller(..., seed=S)` after `ctl.reset(episode=i)` (a new controller
starts at episode 0; `ctl.reset()` moves to the next episode). Success is checked after all the
actions of an `act` have been executed, as `qwm plan` does.
"""

import json

import numpy as np

from . import _native

__version__ = _native.__version__
__all__ = ["Controller", "Env", "task_seed"]


def task_seed(seed, episode):
    """The task seed of episode `episode` of `qwm plan --seed seed`: 99 * (seed + episode) + 1."""
    return _native.task_seed(int(seed), int(episode))


def _frame(frame, what):
    a = np.asarray(frame)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(
            f"{what}: expected a uint8 array of shape (height, width, 3) (RGB), "
            f"got {a.dtype} of shape {a.shape}"
        )
    return np.ascontiguousarray(a).tobytes(), a.shape[0], a.shape[1]


def _proprio(p, what):
    a = np.asarray(p, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what}: proprioception must be finite, got {a.tolist()}")
    return [float(v) for v in a]


def _flags(kwargs):
    flags = []
    for key, value in kwargs.items():
        name = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if value:
                flags.append(name)
            continue
        if value is None:
            continue
        flags += [name, str(value)]
    return flags


class Controller:
    """The MPC controller: a bundle on an engine with a planner.

    Keywords are `qwm plan`'s planner and run flags, with underscores: `backend`, `threads`,
    `planner`, `samples`, `topk`, `opt_steps`, `horizon`, `n_taken`, `var_scale`, `temperature`,
    `chunk`, `mem_limit`, `target`, `ort_lib`, `low_mem`; `seed` seeds the planner noise.
    """

    def __init__(self, model, seed=0, **kwargs):
        self._c = _native.NativeController(str(model), _flags(dict(seed=seed, **kwargs)))
        self.info = self._c.info()
        #: The last act's planner objective, non-finite candidate count and timings.
        self.last = None

    def set_goal(self, frame, proprio):
        """Encode the goal observation (RGB uint8 [H, W, 3], raw proprioception)."""
        rgb, h, w = _frame(frame, "goal frame")
        self._c.set_goal(rgb, h, w, _proprio(proprio, "goal proprio"))

    def act(self, frame, proprio):
        """Plan from this observation; returns float32[n_taken * frameskip, action_dim]."""
        rgb, h, w = _frame(frame, "frame")
        raw, objective, non_finite, (enc, plan, pred) = self._c.act(
            rgb, h, w, _proprio(proprio, "proprio")
        )
        self.last = {
            "objective": objective,
            "non_finite": non_finite,
            "timing": {"encode_s": enc, "plan_s": plan, "predict_s": pred},
        }
        return np.frombuffer(raw, dtype="<f4").reshape(-1, self.info["action_dim"]).copy()

    def observe(self, frame, proprio):
        """The observation after a model step inside the last act (multi-frame models)."""
        rgb, h, w = _frame(frame, "frame")
        return self._c.observe(rgb, h, w, _proprio(proprio, "proprio"))

    def reset(self, episode=None):
        """Start episode `episode` (or the next one); returns the episode."""
        return self._c.reset(None if episode is None else int(episode))

    def stats(self):
        """Counters, timings and memory (a dict)."""
        return json.loads(self._c.stats_json())


class Env:
    """One of qwm's simulators with a Gymnasium-like interface.

    Observations are {"frame": uint8[size, size, 3], "proprio": float32[P]}; `size` defaults to
    64, the shipped models' image size (render at the model's `image_size` to reproduce
    `qwm plan`). reward is minus the distance to the goal; terminated is success.
    """

    def __init__(self, name, size=64):
        self._e = _native.NativeEnv(str(name))
        self.name = str(name)
        self.size = int(size)
        self.action_dim = self._e.action_dim
        self.proprio_dim = self._e.proprio_dim

    def _obs(self):
        frame = np.frombuffer(self._e.render(False, self.size), dtype=np.uint8)
        return {
            "frame": frame.reshape(self.size, self.size, 3).copy(),
            "proprio": np.asarray(self._e.proprio(False), dtype=np.float32),
        }

    def reset(self, seed=None, options=None):
        """Reset to the task drawn from `seed` (a task seed; default 1). Returns (obs, info)."""
        seed = 1 if seed is None else int(seed)
        self._e.reset(seed)
        goal = np.frombuffer(self._e.render(True, self.size), dtype=np.uint8)
        info = {
            "task_seed": seed,
            "goal_frame": goal.reshape(self.size, self.size, 3).copy(),
            "goal_proprio": np.asarray(self._e.proprio(True), dtype=np.float32),
            "distance": self._e.distance(),
            "success": False,
        }
        return self._obs(), info

    def step(self, action):
        """Apply one action. Returns (obs, reward, terminated, truncated, info)."""
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        success, distance = self._e.step([float(v) for v in a])
        info = {"success": bool(success), "distance": float(distance)}
        return self._obs(), -float(distance), bool(success), False, info

    def state(self):
        """The full simulator state (float32)."""
        return np.asarray(self._e.state(), dtype=np.float32)
