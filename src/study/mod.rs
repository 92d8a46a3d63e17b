//! `qwm study`: a grid of quantization settings x planner budgets, each cell evaluated by planning
//! episodes, with results appended as cells finish (so a killed study resumes) and a report.
//!
//! The grid comes from a TOML file: top-level defaults (model, episodes, backend, planner) and one
//! or more `[[grid]]` tables, each a cartesian product of methods x schemes x modules x opt_steps x
//! max_iter x seeds. The union of the tables, without duplicates, is the study's cells. Cells are
//! ordered by id, so `--shard K/N` picks the same slice on every machine.
//!
//! Each cell runs as its own `qwm plan` process (see [`run`]): its peak memory is its own, a crash
//! costs one cell, `--jobs N` is N processes, and the per-episode `--json --resume` of `qwm plan`
//! makes an interrupted cell continue where it stopped.

pub mod report;
pub mod run;

use crate::engine::BackendKind;
use crate::error::{QwmError, Result};
use crate::quant::scheme::Scheme;
use crate::quant::Method;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Which module a cell quantizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Module {
    /// Encoder and predictor with the same scheme.
    Both,
    /// Encoder only (predictor float).
    Encoder,
    /// Predictor only (encoder float).
    Predictor,
}

impl Module {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Module::Both => "both",
            Module::Encoder => "encoder",
            Module::Predictor => "predictor",
        }
    }
}

/// Planner settings shared by every cell (CEM, DINO-WM's Wall budget by default).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlannerSettings {
    /// Candidates per optimization step.
    pub samples: usize,
    /// CEM elites.
    pub topk: usize,
    /// Horizon (model steps).
    pub horizon: usize,
    /// Actions executed per MPC step.
    pub n_taken: usize,
}

impl Default for PlannerSettings {
    fn default() -> Self {
        PlannerSettings {
            samples: 300,
            topk: 30,
            horizon: 5,
            n_taken: 5,
        }
    }
}

/// One `[[grid]]` table: a cartesian product of settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridSpec {
    /// A label for the table (documentation only).
    #[serde(default)]
    pub name: Option<String>,
    /// Methods (rtn, omse, awq, smoothquant, gptq, omniquant).
    #[serde(default = "default_methods")]
    pub methods: Vec<Method>,
    /// Schemes (`float` or `w<bits>[a<bits>][-g<size>][-token]`).
    pub schemes: Vec<String>,
    /// Which modules are quantized.
    #[serde(default = "default_modules")]
    pub modules: Vec<Module>,
    /// CEM optimization steps per plan.
    #[serde(default = "default_opt_steps")]
    pub opt_steps: Vec<usize>,
    /// Most MPC steps per episode.
    #[serde(default = "default_max_iter")]
    pub max_iter: Vec<usize>,
    /// Evaluation seeds (episode i of seed s uses task seed 99 (s + i) + 1).
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Episodes per cell of this table (default: the study's).
    #[serde(default)]
    pub episodes: Option<usize>,
}

fn default_methods() -> Vec<Method> {
    vec![Method::Rtn]
}
fn default_modules() -> Vec<Module> {
    vec![Module::Both]
}
fn default_opt_steps() -> Vec<usize> {
    vec![10]
}
fn default_max_iter() -> Vec<usize> {
    vec![10]
}
fn default_seeds() -> Vec<u64> {
    vec![0]
}
fn default_episodes() -> usize {
    50
}
fn default_calib() -> usize {
    4
}

/// A study configuration file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyConfig {
    /// Float bundle to study (relative paths are relative to the config file).
    pub model: PathBuf,
    /// Output folder (relative to the config file); `--out` overrides.
    #[serde(default)]
    pub out: Option<PathBuf>,
    /// Episodes per cell (a table's `episodes` overrides).
    #[serde(default = "default_episodes")]
    pub episodes: usize,
    /// Execution engine for the cells: tract or ort.
    #[serde(default)]
    pub backend: BackendKind,
    /// Threads per cell process (default: available cores / jobs).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Calibration episodes for the quantizer.
    #[serde(default = "default_calib")]
    pub calib_episodes: usize,
    /// Planner settings shared by every cell.
    #[serde(default)]
    pub planner: PlannerSettings,
    /// The grid tables.
    pub grid: Vec<GridSpec>,
}

/// One evaluation: a quantized model (method, scheme, module) under one planner budget and seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Stable identifier (also the file stem of the cell's files).
    pub id: String,
    /// Method (None for float).
    pub method: Option<Method>,
    /// Scheme string as written (`float` for the float model).
    pub scheme: String,
    /// Quantized module (None for float).
    pub module: Option<Module>,
    /// CEM optimization steps.
    pub opt_steps: usize,
    /// Most MPC steps.
    pub max_iter: usize,
    /// Evaluation seed.
    pub seed: u64,
    /// Episodes.
    pub episodes: usize,
}

impl Cell {
    /// The bundle this cell plans with: the float model, or a quantized bundle's folder name.
    pub fn bundle_name(&self) -> Option<String> {
        match (self.method, self.module) {
            (Some(m), Some(module)) => Some(format!(
                "{}-{}-{}",
                method_name(m),
                module.name(),
                self.scheme
            )),
            _ => None,
        }
    }

    /// Encoder and predictor schemes of the cell's bundle.
    pub fn module_schemes(&self) -> (&str, &str) {
        match self.module {
            None => ("float", "float"),
            Some(Module::Both) => (&self.scheme, &self.scheme),
            Some(Module::Encoder) => (&self.scheme, "float"),
            Some(Module::Predictor) => ("float", &self.scheme),
        }
    }
}

/// Lower-case method name as the command line writes it.
pub fn method_name(m: Method) -> &'static str {
    match m {
        Method::Rtn => "rtn",
        Method::Omse => "omse",
        Method::Awq => "awq",
        Method::Smoothquant => "smoothquant",
        Method::Gptq => "gptq",
        Method::Omniquant => "omniquant",
    }
}

impl StudyConfig {
    /// Read and validate a config file; relative paths become relative to its folder.
    pub fn load(path: &Path) -> Result<StudyConfig> {
        let text = crate::util::fs::read_text(path).map_err(|e| QwmError::io(path, e))?;
        let mut cfg: StudyConfig = toml::from_str(&text)
            .map_err(|e| QwmError::Usage(format!("study config {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        if cfg.model.is_relative() {
            cfg.model = base.join(&cfg.model);
        }
        if let Some(o) = &cfg.out {
            if o.is_relative() {
                cfg.out = Some(base.join(o));
            }
        }
        cfg.validate()
            .map_err(|e| QwmError::Usage(format!("study config {}: {e}", path.display())))?;
        Ok(cfg)
    }

    /// Check values that TOML types cannot.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(QwmError::Usage(m));
        if self.episodes == 0 {
            return bad("episodes must be at least 1".into());
        }
        if self.threads == Some(0) {
            return bad("threads must be at least 1".into());
        }
        if self.calib_episodes == 0 {
            return bad("calib_episodes must be at least 1".into());
        }
        let p = &self.planner;
        if p.samples < 2 || p.topk == 0 || p.topk > p.samples {
            return bad(format!(
                "planner: samples {} must be at least 2 and topk {} in 1..=samples",
                p.samples, p.topk
            ));
        }
        if p.horizon == 0 || p.n_taken == 0 || p.n_taken > p.horizon {
            return bad(format!(
                "planner: horizon {} must be at least 1 and n_taken {} in 1..=horizon",
                p.horizon, p.n_taken
            ));
        }
        if self.grid.is_empty() {
            return bad("no [[grid]] table: nothing to evaluate".into());
        }
        for (i, g) in self.grid.iter().enumerate() {
            let table = format!(
                "[[grid]] #{} ({})",
                i + 1,
                g.name.as_deref().unwrap_or("unnamed")
            );
            for (what, empty) in [
                ("methods", g.methods.is_empty()),
                ("schemes", g.schemes.is_empty()),
                ("modules", g.modules.is_empty()),
                ("opt_steps", g.opt_steps.is_empty()),
                ("max_iter", g.max_iter.is_empty()),
                ("seeds", g.seeds.is_empty()),
            ] {
                if empty {
                    return bad(format!("{table}: {what} is empty"));
                }
            }
            for s in &g.schemes {
                Scheme::parse(s, &format!("{table} schemes"))?;
            }
            if g.opt_steps.contains(&0) || g.max_iter.contains(&0) || g.episodes == Some(0) {
                return bad(format!(
                    "{table}: opt_steps, max_iter and episodes must be at least 1"
                ));
            }
            if g.methods.contains(&Method::Smoothquant) {
                for s in &g.schemes {
                    let sc = Scheme::parse(s, "schemes")?;
                    if !sc.is_float() && (sc.act_bits.is_none() || sc.per_token) {
                        return bad(format!("{table}: smoothquant needs static activation bits, but scheme '{s}' has none; put it in its own table"));
                    }
                }
            }
        }
        Ok(())
    }

    /// The study's cells, sorted by id, without duplicates (a cell listed twice keeps the larger
    /// episode count).
    pub fn cells(&self) -> Vec<Cell> {
        let mut out: BTreeMap<String, Cell> = BTreeMap::new();
        for g in &self.grid {
            let episodes = g.episodes.unwrap_or(self.episodes);
            for scheme in &g.schemes {
                let float = scheme == "float";
                let variants: Vec<(Option<Method>, Option<Module>)> = if float {
                    vec![(None, None)]
                } else {
                    g.methods
                        .iter()
                        .flat_map(|m| g.modules.iter().map(move |md| (Some(*m), Some(*md))))
                        .collect()
                };
                for (method, module) in variants {
                    for &opt_steps in &g.opt_steps {
                        for &max_iter in &g.max_iter {
                            for &seed in &g.seeds {
                                let id = cell_id(method, module, scheme, opt_steps, max_iter, seed);
                                let cell = Cell {
                                    id: id.clone(),
                                    method,
                                    scheme: scheme.clone(),
                                    module,
                                    opt_steps,
                                    max_iter,
                                    seed,
                                    episodes,
                                };
                                out.entry(id)
                                    .and_modify(|c| c.episodes = c.episodes.max(episodes))
                                    .or_insert(cell);
                            }
                        }
                    }
                }
            }
        }
        out.into_values().collect()
    }
}

impl StudyConfig {
    /// Sort cells into run order: by the first `[[grid]]` table that lists them (so the tables
    /// written first, the key cells, finish first), then by id. Sharding uses id order, not this.
    pub fn sort_run_order(&self, cells: &mut [Cell]) {
        // The first table listing each id, from one expansion per table.
        let mut first: std::collections::HashMap<String, usize> = Default::default();
        for (t, g) in self.grid.iter().enumerate() {
            let one = StudyConfig {
                grid: vec![g.clone()],
                ..self.clone()
            };
            for c in one.cells() {
                first.entry(c.id).or_insert(t);
            }
        }
        cells.sort_by_key(|c| {
            (
                first.get(&c.id).copied().unwrap_or(usize::MAX),
                c.id.clone(),
            )
        });
    }
}

fn cell_id(
    method: Option<Method>,
    module: Option<Module>,
    scheme: &str,
    opt_steps: usize,
    max_iter: usize,
    seed: u64,
) -> String {
    let head = match (method, module) {
        (Some(m), Some(md)) => format!("{}-{}-{scheme}", method_name(m), md.name()),
        _ => "float".to_string(),
    };
    format!("{head}-o{opt_steps}-i{max_iter}-s{seed}")
}

/// A slice of the grid: shard `index` of `count` (0-based), as `--shard K/N` writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This shard (0-based: Slurm's SLURM_ARRAY_TASK_ID, Kubernetes' JOB_COMPLETION_INDEX).
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

impl Shard {
    /// Parse `K/N` with 0 <= K < N.
    pub fn parse(s: &str) -> Result<Shard> {
        let bad = || {
            QwmError::Usage(format!(
                "--shard '{s}': expected K/N with 0 <= K < N (K is 0-based, e.g. 0/4 .. 3/4)"
            ))
        };
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = k.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// The cells of this shard: every count-th cell of the id-sorted list, from index.
    pub fn select(&self, cells: &[Cell]) -> Vec<Cell> {
        cells
            .iter()
            .enumerate()
            .filter(|(i, _)| i % self.count == self.index)
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// Results file name of this shard.
    pub fn results_file(&self) -> String {
        format!("results.shard-{}-of-{}.jsonl", self.index, self.count)
    }
}

/// One episode's outcome, as the report needs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpisodePoint {
    /// Reached the goal.
    pub success: bool,
    /// Final distance to the goal.
    pub final_distance: f64,
    /// The planner's final objective.
    pub final_objective: f64,
    /// MPC steps the episode ran (it stops at its first success, so a success after k steps
    /// counts for every MPC budget >= k); absent in results from before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mpc_steps: Option<usize>,
}

/// A finished cell: one line of the results JSONL.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    /// The cell.
    #[serde(flatten)]
    pub cell: Cell,
    /// Weight bits of the quantized module(s) (32 for float).
    pub weight_bits: u32,
    /// Activation bits (None: float activations).
    pub act_bits: Option<u32>,
    /// Weight group size (None: per channel).
    pub group: Option<usize>,
    /// Per-token dynamic activations.
    pub per_token: bool,
    /// Backend that ran the cell.
    pub backend: String,
    /// Threads of the cell's process.
    pub threads: usize,
    /// Episodes that reached the goal.
    pub successes: usize,
    /// successes / episodes.
    pub success_rate: f64,
    /// Mean final distance to the goal.
    pub mean_final_distance: f64,
    /// Mean final planner objective.
    pub mean_final_objective: f64,
    /// Spearman rank correlation between final objective and final distance across episodes
    /// (the objective-success alignment); None when undefined (constant values, < 3 episodes).
    pub spearman_objective_distance: Option<f64>,
    /// Median plan time per MPC step (s).
    pub plan_time_p50_s: f64,
    /// Mean MPC steps per episode.
    pub mean_mpc_steps: f64,
    /// Bytes of all weights at their stored precision: quantized Linear weights as integer codes
    /// at their bit width plus scales, everything else f32. This is what a deploy form keeps
    /// resident; the simulate form that the cell ran keeps f32 (see `peak_rss_bytes`).
    pub weight_bytes_at_bits: u64,
    /// Bytes of the same weights in f32.
    pub weight_bytes_float: u64,
    /// Bytes of the encoder and predictor ONNX files.
    pub model_file_bytes: u64,
    /// Peak RSS of the cell's process.
    pub peak_rss_bytes: u64,
    /// Per-episode outcomes.
    pub per_episode: Vec<EpisodePoint>,
}

/// Read results JSONL files; the last line for an id with the most episodes wins. Lines that do
/// not parse are errors naming file and line (a half-written last line from a killed process is
/// skipped with a warning, since appends are one write each).
pub fn read_results(paths: &[PathBuf]) -> Result<Vec<CellResult>> {
    let mut by_id: BTreeMap<String, CellResult> = BTreeMap::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| QwmError::io(path, e))?;
        if !meta.is_file() {
            return Err(QwmError::Usage(format!(
                "{}: not a regular file (a qwm study results file is JSON lines)",
                path.display()
            )));
        }
        let text = crate::util::fs::read_text(path).map_err(|e| QwmError::io(path, e))?;
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let r: CellResult = match serde_json::from_str(line) {
                Ok(r) => r,
                Err(e) if n + 1 == lines.len() && !text.ends_with('\n') => {
                    log::warn!("{}: ignoring an unfinished last line ({e})", path.display());
                    continue;
                }
                Err(e) => {
                    return Err(QwmError::Usage(format!(
                        "{} line {}: not a qwm study result: {e}",
                        path.display(),
                        n + 1
                    )))
                }
            };
            match by_id.get(&r.cell.id) {
                Some(old) if old.cell.episodes > r.cell.episodes => {}
                _ => {
                    by_id.insert(r.cell.id.clone(), r);
                }
            }
        }
    }
    Ok(by_id.into_values().collect())
}

/// The results files in a study folder (`results*.jsonl` regular files, or links to them), sorted.
pub fn results_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| QwmError::io(dir, e))? {
        let p = e.map_err(|e| QwmError::io(dir, e))?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("results") && name.ends_with(".jsonl") && p.is_file() {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Result<StudyConfig> {
        let c: StudyConfig = toml::from_str(text).map_err(|e| QwmError::Usage(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn grid_expands_dedups_and_sorts() {
        let c = cfg(r#"
model = "m"
episodes = 5
[[grid]]
schemes = ["float", "w8a8", "w4-g32"]
modules = ["both", "encoder"]
[[grid]]
schemes = ["float", "w4-g32"]
opt_steps = [10, 30]
episodes = 7
"#)
        .unwrap();
        let cells = c.cells();
        let ids: Vec<&str> = cells.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "float-o10-i10-s0",
                "float-o30-i10-s0",
                "rtn-both-w4-g32-o10-i10-s0",
                "rtn-both-w4-g32-o30-i10-s0",
                "rtn-both-w8a8-o10-i10-s0",
                "rtn-encoder-w4-g32-o10-i10-s0",
                "rtn-encoder-w8a8-o10-i10-s0",
            ]
        );
        // Listed in both tables: the larger episode count wins.
        assert_eq!(cells[0].episodes, 7);
        assert_eq!(cells[6].episodes, 5);
        assert_eq!(cells[5].module_schemes(), ("w4-g32", "float"));
        assert_eq!(
            cells[5].bundle_name().as_deref(),
            Some("rtn-encoder-w4-g32")
        );
        assert_eq!(cells[0].bundle_name(), None);
    }

    #[test]
    fn run_order_follows_the_tables() {
        let c = cfg("model='m'\n[[grid]]\nschemes=['w8','float']\n[[grid]]\nschemes=['float','w4']\nopt_steps=[5]\n").unwrap();
        let mut cells = c.cells();
        c.sort_run_order(&mut cells);
        let ids: Vec<&str> = cells.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "float-o10-i10-s0",
                "rtn-both-w8-o10-i10-s0",
                "float-o5-i10-s0",
                "rtn-both-w4-o5-i10-s0"
            ]
        );
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let e = cfg("model='m'\n[[grid]]\nschemes=['w5']\n").unwrap_err();
        assert!(e.to_string().contains("w5"), "{e}");
        let e = cfg("model='m'\n[[grid]]\nschemes=['w4']\nmethods=['smoothquant']\n").unwrap_err();
        assert!(e.to_string().contains("smoothquant"), "{e}");
        let e = cfg("model='m'\nbackend='cuda'\n[[grid]]\nschemes=['w4']\n").unwrap_err();
        assert!(e.to_string().contains("cuda"), "{e}");
        let e = cfg("model='m'\ngrid=[]\n").unwrap_err();
        assert!(e.to_string().contains("grid"), "{e}");
        let e = cfg("model='m'\n[[grid]]\nschemes=['w4']\nopt_steps=[0]\n").unwrap_err();
        assert!(e.to_string().contains("opt_steps"), "{e}");
        assert!(cfg("model='m'\n[[grid]]\nschemes=['w4']\nbogus=1\n").is_err());
        let e = cfg("model='m'\n[planner]\ntopk=500\n[[grid]]\nschemes=['w4']\n").unwrap_err();
        assert!(e.to_string().contains("topk"), "{e}");
    }

    #[test]
    fn shards_partition_the_grid() {
        let c = cfg("model='m'\n[[grid]]\nschemes=['float','w8','w4','w3']\nmodules=['both','encoder','predictor']\nseeds=[0,1]\n").unwrap();
        let cells = c.cells();
        assert_eq!(cells.len(), 2 + 3 * 3 * 2);
        for n in [1, 3, 4, 7] {
            let mut all: Vec<String> = (0..n)
                .flat_map(|k| {
                    Shard { index: k, count: n }
                        .select(&cells)
                        .into_iter()
                        .map(|c| c.id)
                })
                .collect();
            all.sort();
            let want: Vec<String> = cells.iter().map(|c| c.id.clone()).collect();
            assert_eq!(all, want, "{n} shards");
        }
        assert_eq!(Shard::parse("2/4").unwrap(), Shard { index: 2, count: 4 });
        for bad in ["4/4", "1", "a/2", "0/0", "-1/3"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }
}
