//! `qwm._native`: the controller and the simulators for Python, on plain bytes and lists. The
//! `qwm` package (python/qwm/__init__.py) turns numpy arrays into these and back, so this module
//! needs only the stable ABI (abi3) and no numpy headers.

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use qwm::env::{Env, Frame, Task};
use qwm::runtime::controller::Controller;
use qwm::runtime::settings::ControllerArgs;
use qwm::QwmError;
use std::path::Path;

#[global_allocator]
static ALLOC: qwm::util::mem::CountingAlloc = qwm::util::mem::CountingAlloc;

fn to_py(e: QwmError) -> PyErr {
    match e {
        QwmError::Usage(m) => PyValueError::new_err(m),
        other => PyRuntimeError::new_err(other.to_string()),
    }
}

fn frame(rgb: &[u8], height: usize, width: usize) -> PyResult<Frame> {
    let n = height
        .checked_mul(width)
        .and_then(|n| n.checked_mul(3))
        .filter(|&n| n > 0);
    if n != Some(rgb.len()) {
        return Err(PyValueError::new_err(format!(
            "frame {height}x{width}x3 needs {} bytes, got {}",
            n.map(|n| n.to_string())
                .unwrap_or_else(|| "a positive size:".into()),
            rgb.len()
        )));
    }
    Ok(Frame {
        height,
        width,
        data: rgb.to_vec(),
    })
}

/// The MPC controller (see qwm.Controller).
#[pyclass(module = "qwm._native", unsendable)]
struct NativeController {
    inner: Controller,
}

#[pymethods]
impl NativeController {
    #[new]
    fn new(py: Python<'_>, model: &str, flags: Vec<String>) -> PyResult<Self> {
        qwm::util::mem::mark_installed();
        let args = ControllerArgs::parse_flags(flags).map_err(to_py)?;
        let inner = py
            .allow_threads(|| {
                Controller::open(Path::new(model), &args.control, &args.run, args.seed)
            })
            .map_err(|e| match e {
                QwmError::Usage(m) => PyValueError::new_err(m),
                other => PyRuntimeError::new_err(format!("loading {model}: {other}")),
            })?;
        Ok(NativeController { inner })
    }

    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.inner;
        let m = &c.model().manifest;
        let s = c.shape();
        let d = PyDict::new(py);
        d.set_item("env", &m.env)?;
        d.set_item("image_size", m.image_size)?;
        d.set_item("action_dim", m.action_dim)?;
        d.set_item("proprio_dim", m.proprio_dim)?;
        d.set_item("frameskip", m.frameskip)?;
        d.set_item("num_hist", m.num_hist)?;
        d.set_item("horizon", s.horizon)?;
        d.set_item("n_taken", s.n_taken)?;
        d.set_item("chunk", s.chunk)?;
        d.set_item("seed", c.seed())?;
        d.set_item("actions_per_act", c.actions_per_act())?;
        d.set_item("needs_intermediate_frames", c.needs_intermediate_frames())?;
        Ok(d)
    }

    fn set_goal(
        &mut self,
        py: Python<'_>,
        rgb: &[u8],
        height: usize,
        width: usize,
        proprio: Vec<f32>,
    ) -> PyResult<()> {
        let f = frame(rgb, height, width)?;
        let c = &mut self.inner;
        py.allow_threads(|| c.set_goal(&f, &proprio)).map_err(to_py)
    }

    /// Returns (actions as little-endian float32 bytes, objective, non_finite,
    /// (encode_s, plan_s, predict_s)).
    #[allow(clippy::type_complexity)]
    fn act<'py>(
        &mut self,
        py: Python<'py>,
        rgb: &[u8],
        height: usize,
        width: usize,
        proprio: Vec<f32>,
    ) -> PyResult<(Bound<'py, PyBytes>, f32, usize, (f64, f64, f64))> {
        let f = frame(rgb, height, width)?;
        let c = &mut self.inner;
        let a = py.allow_threads(|| c.act(&f, &proprio)).map_err(to_py)?;
        let bytes: Vec<u8> = a.actions.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok((
            PyBytes::new(py, &bytes),
            a.objective,
            a.non_finite,
            (a.timing.encode_s, a.timing.plan_s, a.timing.predict_s),
        ))
    }

    fn observe(
        &mut self,
        py: Python<'_>,
        rgb: &[u8],
        height: usize,
        width: usize,
        proprio: Vec<f32>,
    ) -> PyResult<f64> {
        let f = frame(rgb, height, width)?;
        let c = &mut self.inner;
        py.allow_threads(|| c.observe(&f, &proprio)).map_err(to_py)
    }

    #[pyo3(signature = (episode=None))]
    fn reset(&mut self, episode: Option<u64>) -> u64 {
        match episode {
            Some(e) => self.inner.reset_to(e),
            None => self.inner.reset(),
        }
        self.inner.stats().episode
    }

    fn stats_json(&self) -> PyResult<String> {
        serde_json::to_string(&self.inner.stats())
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }
}

/// One of qwm's simulators (see qwm.Env).
#[pyclass(module = "qwm._native", unsendable)]
struct NativeEnv {
    env: Box<dyn Env>,
    task: Option<Task>,
}

impl NativeEnv {
    fn task(&self) -> PyResult<&Task> {
        self.task.as_ref().ok_or_else(|| {
            PyRuntimeError::new_err("the environment has no task: call reset() first")
        })
    }
}

#[pymethods]
impl NativeEnv {
    #[new]
    fn new(name: &str) -> PyResult<Self> {
        let env = qwm::env::make_env(name).map_err(to_py)?;
        Ok(NativeEnv { env, task: None })
    }

    #[getter]
    fn action_dim(&self) -> usize {
        self.env.action_dim()
    }

    #[getter]
    fn proprio_dim(&self) -> usize {
        self.env.proprio_dim()
    }

    fn reset(&mut self, task_seed: u64) -> PyResult<()> {
        let task = self.env.sample_task(task_seed);
        self.env.reset_to(&task).map_err(to_py)?;
        self.task = Some(task);
        Ok(())
    }

    fn render<'py>(
        &self,
        py: Python<'py>,
        goal: bool,
        size: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let task = self.task()?;
        if size == 0 || size > 4096 {
            return Err(PyValueError::new_err(format!(
                "size {size}: must be in 1..=4096"
            )));
        }
        let f = if goal {
            self.env.render_state(&task.goal, size)
        } else {
            self.env.render(size)
        };
        Ok(PyBytes::new(py, &f.data))
    }

    fn proprio(&self, goal: bool) -> PyResult<Vec<f32>> {
        let task = self.task()?;
        Ok(if goal {
            self.env.proprio_of(&task.goal)
        } else {
            self.env.proprio()
        })
    }

    /// Apply one action; returns (success, distance).
    fn step(&mut self, action: Vec<f32>) -> PyResult<(bool, f32)> {
        let goal = self.task()?.goal.clone();
        if action.len() != self.env.action_dim() || action.iter().any(|v| !v.is_finite()) {
            return Err(PyValueError::new_err(format!(
                "action: {} values given, {} finite values needed",
                action.len(),
                self.env.action_dim()
            )));
        }
        self.env.step(&action).map_err(to_py)?;
        Ok((self.env.is_success(&goal), self.env.distance(&goal)))
    }

    fn distance(&self) -> PyResult<f32> {
        let goal = &self.task()?.goal;
        Ok(self.env.distance(goal))
    }

    fn state(&self) -> PyResult<Vec<f32>> {
        self.task()?;
        Ok(self.env.state())
    }
}

/// The task seed of episode `episode` of `qwm plan --seed seed`: 99 * (seed + episode) + 1.
#[pyfunction]
fn task_seed(seed: u64, episode: u64) -> u64 {
    qwm::env::TaskSeeds::evaluation(seed, episode as usize)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeController>()?;
    m.add_class::<NativeEnv>()?;
    m.add_function(wrap_pyfunction!(task_seed, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
