//! The ONNX Runtime backend (cargo feature `ort`), loading `libonnxruntime` at run time.
//!
//! Nothing is downloaded: the shared library comes from `ORT_DYLIB_PATH`, an explicit path
//! (`--ort-lib`), or the `onnxruntime` Python package (`pip install onnxruntime==1.32.0`).

use super::{order_inputs, Backend, LoadOptions, Session, Tensor, TensorRef, Tuning};
use crate::bundle::MappedGraph;
use crate::error::{QwmError, Result};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The ONNX Runtime engine.
pub struct OrtBackend {
    env: &'static ::ort::environment::Environment,
}

static ENV: OnceLock<std::result::Result<::ort::environment::Environment, String>> =
    OnceLock::new();

fn err(graph: &str, msg: impl std::fmt::Display) -> QwmError {
    QwmError::Backend {
        backend: "ort",
        graph: graph.to_string(),
        msg: msg.to_string(),
    }
}

/// Where libonnxruntime is: explicit path, `ORT_DYLIB_PATH`, or the Python package.
pub fn find_library(explicit: Option<&Path>) -> Result<PathBuf> {
    let hint = "install it with `pip install onnxruntime==1.32.0` or point ORT_DYLIB_PATH / --ort-lib at libonnxruntime.so";
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(QwmError::Usage(format!(
                "--ort-lib {}: no such file ({hint})",
                p.display()
            )))
        };
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(QwmError::Usage(format!(
                "ORT_DYLIB_PATH={}: no such file ({hint})",
                p.display()
            )))
        };
    }
    for py in ["python3", "python"] {
        let out = std::process::Command::new(py)
            .args(["-c", "import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))"])
            .output();
        if let Ok(out) = out {
            if out.status.success() {
                let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if let Ok(rd) = std::fs::read_dir(&dir) {
                    let mut libs: Vec<PathBuf> = rd
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| {
                            p.file_name()
                                .and_then(|n| n.to_str())
                                .is_some_and(|n| n.starts_with("libonnxruntime.so"))
                        })
                        .collect();
                    libs.sort();
                    if let Some(l) = libs.pop() {
                        return Ok(l);
                    }
                }
            }
        }
    }
    Err(QwmError::Usage(format!(
        "ONNX Runtime shared library not found; {hint}"
    )))
}

impl OrtBackend {
    /// Load ONNX Runtime (once per process).
    pub fn new(explicit: Option<&Path>) -> Result<OrtBackend> {
        let env = ENV.get_or_init(|| {
            let lib = find_library(explicit).map_err(|e| e.to_string())?;
            let builder = ::ort::init_from(&lib)
                .map_err(|e| format!("cannot load {}: {e}", lib.display()))?;
            builder
                .with_name("qwm")
                .build()
                .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", lib.display()))
        });
        match env {
            Ok(env) => Ok(OrtBackend { env }),
            Err(e) => Err(QwmError::Usage(format!("--backend ort: {e}"))),
        }
    }
}

impl OrtBackend {
    /// A session builder with qwm's settings: `threads` intra-op threads, all graph optimizations
    /// except QDQ fusion.
    fn builder(
        &self,
        name: &str,
        threads: usize,
    ) -> Result<::ort::session::builder::SessionBuilder> {
        let builder = ::ort::session::Session::builder(self.env).map_err(|e| err(name, e))?;
        let builder = builder
            .with_intra_threads(threads.max(1))
            .map_err(|e| err(name, e))?;
        let builder = builder.with_inter_threads(1).map_err(|e| err(name, e))?;
        // QDQ fusion off: at the extended level ONNX Runtime turns a weight-only
        // DequantizeLinear -> MatMul into an integer matmul that also quantizes the activations
        // (measured: 1.1e-3 relative deviation on a W8 weight-only graph), which is not what a
        // simulate-form bundle means. The other fusions (LayerNorm, GELU, attention) stay on.
        let builder = builder.with_quant_qdq(false).map_err(|e| err(name, e))?;
        builder
            .with_optimization_level(::ort::session::builder::GraphOptimizationLevel::All)
            .map_err(|e| err(name, e))
    }

    /// Per-operator profile of calls of `graph` at `batch` with ONNX Runtime's own profiler
    /// (its per-node kernel times), over `reps` calls on seeded random inputs.
    pub fn op_profile(
        &self,
        graph: &MappedGraph,
        batch: usize,
        threads: usize,
        reps: usize,
        top: usize,
    ) -> Result<super::OpProfile> {
        let name = graph.spec.file.clone();
        let dir = std::env::temp_dir().join(format!("qwm-ort-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| QwmError::io(&dir, e))?;
        let builder = self
            .builder(&name, threads)?
            .with_profiling(dir.join("profile"))
            .map_err(|e| err(&name, e))?;
        let session = commit(builder, graph, false, &Tuning::from_env())?;
        let s = OrtSession::new(name.clone(), session, graph);
        let data = crate::engine::random_inputs(graph, batch, 0);
        let refs: Vec<(&str, TensorRef<'_>)> = data
            .iter()
            .map(|(n, sh, d)| (n.as_str(), TensorRef { shape: sh, data: d }))
            .collect();
        let reps = reps.max(1);
        let t0 = std::time::Instant::now();
        for _ in 0..reps {
            s.run(&refs)?;
        }
        let total = t0.elapsed().as_secs_f64() / reps as f64;
        let file = s
            .session
            .lock()
            .map_err(|_| err(&name, "session lock poisoned"))?
            .end_profiling()
            .map_err(|e| err(&name, format!("profiler: {e}")))?;
        let text = std::fs::read_to_string(&file).map_err(|e| QwmError::io(&file, e));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(&file);
        let events: Vec<ProfileEvent> = serde_json::from_str(&text?)
            .map_err(|e| err(&name, format!("profiler output {file}: {e}")))?;
        super::summarize_op_times(&name, batch, total, reps, kernel_times(&events), top)
    }
}

/// One event of ONNX Runtime's profiler output (a Chrome trace: a JSON array of events); only
/// the fields qwm reads.
#[derive(serde::Deserialize)]
struct ProfileEvent {
    #[serde(default)]
    cat: String,
    #[serde(default)]
    name: String,
    /// Microseconds.
    #[serde(default)]
    dur: Option<f64>,
    #[serde(default)]
    args: ProfileArgs,
}

#[derive(serde::Deserialize, Default)]
struct ProfileArgs {
    #[serde(default)]
    op_name: Option<String>,
}

/// `(node, op, seconds)` of every node kernel event in an ONNX Runtime profile.
fn kernel_times(events: &[ProfileEvent]) -> Vec<(String, String, f64)> {
    events
        .iter()
        .filter(|e| e.cat == "Node")
        .filter_map(|e| {
            let n = e.name.strip_suffix("_kernel_time")?;
            Some((
                n.to_string(),
                e.args.op_name.clone().unwrap_or_else(|| "?".into()),
                e.dur? * 1e-6,
            ))
        })
        .collect()
}

/// A graph loaded in ONNX Runtime.
pub struct OrtSession {
    name: String,
    session: Mutex<::ort::session::Session>,
    inputs: Vec<(String, Vec<i64>)>,
    outputs: Vec<String>,
}

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        "ort"
    }

    fn load(&self, graph: &MappedGraph, opts: &LoadOptions) -> Result<Box<dyn Session>> {
        let name = graph.spec.file.clone();
        let session = commit(
            self.builder(&name, opts.threads)?,
            graph,
            opts.low_mem,
            &opts.tuning,
        )?;
        let have_in: Vec<String> = session
            .inputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let want_in: Vec<String> = graph.spec.inputs.iter().map(|t| t.name.clone()).collect();
        if have_in != want_in {
            return Err(err(
                &name,
                format!("graph inputs {have_in:?} disagree with the manifest's {want_in:?}"),
            ));
        }
        let have_out: Vec<String> = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let want_out: Vec<String> = graph.spec.outputs.iter().map(|t| t.name.clone()).collect();
        if have_out != want_out {
            return Err(err(
                &name,
                format!("graph outputs {have_out:?} disagree with the manifest's {want_out:?}"),
            ));
        }
        Ok(Box::new(OrtSession::new(name, session, graph)))
    }
}

/// Create the session for `graph`: from its file when it is one (see [`load_from_file`]), else
/// from the protobuf in memory, which `low_mem` cannot serve. Freed load-time memory goes back to
/// the OS.
fn commit(
    builder: ::ort::session::builder::SessionBuilder,
    graph: &MappedGraph,
    low_mem: bool,
    tuning: &Tuning,
) -> Result<::ort::session::Session> {
    let name = &graph.spec.file;
    let session = if graph.on_disk {
        load_from_file(builder, graph, low_mem, tuning)?
    } else if low_mem {
        return Err(err(
            name,
            "--low-mem reads weights from the graph file, but this graph was built in memory; \
             load it without --low-mem",
        ));
    } else {
        let fused = fused_proto(name, &graph.bytes[..], None, tuning)?;
        let mut builder = builder;
        builder
            .commit_from_memory(fused.as_deref().unwrap_or(&graph.bytes[..]))
            .map_err(|e| err(name, format!("cannot load graph: {e}")))?
    };
    crate::util::mem::release_free_memory();
    Ok(session)
}

/// Load a graph that is a file on disk: ONNX Runtime gets the graph's structure only, with every
/// large initializer as external data at its own offset in that file (see
/// [`crate::onnx::external_data`]), and maps the weights from the file itself. Handing it the whole
/// protobuf instead made it hold a decoded copy of every weight next to its prepacked one while
/// loading (full-size float predictor: load peak 134.8 MiB for 88.0 MiB resident).
///
/// `low_mem` also turns weight prepacking off, so that ONNX Runtime keeps no repacked copy and
/// reads the weights from the mapped file at every call.
fn load_from_file(
    builder: ::ort::session::builder::SessionBuilder,
    graph: &MappedGraph,
    low_mem: bool,
    tuning: &Tuning,
) -> Result<::ort::session::Session> {
    let name = &graph.spec.file;
    let (Some(dir), Some(file)) = (
        graph.path.parent(),
        graph.path.file_name().and_then(|f| f.to_str()),
    ) else {
        return Err(err(
            name,
            format!("{}: not a file path", graph.path.display()),
        ));
    };
    let dir = if dir.as_os_str().is_empty() {
        std::path::Path::new(".")
    } else {
        dir
    };
    let ext = crate::onnx::external_data::externalize(
        &graph.bytes[..],
        file,
        crate::onnx::external_data::DEFAULT_MIN_BYTES,
    )
    .map_err(|e| err(name, format!("not a valid ONNX protobuf: {e}")))?;
    log::debug!(
        "{name}: {} initializers ({} bytes) read from {} by ONNX Runtime; graph protobuf {} bytes",
        ext.tensors,
        ext.moved_bytes,
        graph.path.display(),
        ext.proto.len()
    );
    let dir_text = dir
        .to_str()
        .ok_or_else(|| err(name, format!("folder {} is not UTF-8", dir.display())))?;
    let builder = if low_mem {
        builder.with_prepacking(false).map_err(|e| err(name, e))?
    } else {
        builder
    };
    let mut builder = builder
        .with_config_entry(
            "session.model_external_initializers_file_folder_path",
            dir_text,
        )
        .map_err(|e| err(name, e))?;
    let fused = fused_proto(name, &ext.proto, Some(&graph.bytes[..]), tuning)?;
    builder
        .commit_from_memory(fused.as_deref().unwrap_or(&ext.proto))
        .map_err(|e| err(name, format!("cannot load graph: {e}")))
}

/// Whether ONNX Runtime's `uint8 x int8` products are exact on this CPU: they are with VNNI
/// (and off x86), not on AVX2 alone (see [`crate::onnx::passes::ort::unsigned_int8_weights`]).
fn signed_weights_exact() -> bool {
    !cfg!(target_arch = "x86_64") || crate::kernels::int8_gemm::has_vnni()
}

/// The graph's protobuf with [`crate::onnx::passes::ort`]'s rewrites, or `None` when they change
/// nothing: the fusions (unless [`Tuning::ort_fusion`] is off) and, on CPUs where ONNX Runtime's
/// signed-weight products saturate, unsigned weights (always: it is what makes them exact).
fn fused_proto(
    name: &str,
    proto: &[u8],
    file: Option<&[u8]>,
    tuning: &Tuning,
) -> Result<Option<Vec<u8>>> {
    use prost::Message;
    let unsigned = !signed_weights_exact();
    let mut m = tract_onnx::pb::ModelProto::decode(proto)
        .map_err(|e| err(name, format!("not a valid ONNX protobuf: {e}")))?;
    // External data of the graph's own (not qwm's, which `file` is for) is refused: for a graph
    // from a file, its initializers were checked when qwm externalized them.
    crate::onnx::proto::refuse_external_data(&m, file.is_none()).map_err(|e| err(name, e))?;
    if !tuning.ort_fusion && !unsigned {
        return Ok(None);
    }
    let fused = if tuning.ort_fusion {
        crate::onnx::passes::ort::fuse_model(&mut m)
    } else {
        Default::default()
    };
    let converted = if unsigned {
        crate::onnx::passes::ort::unsigned_int8_weights(&mut m, file)
    } else {
        0
    };
    log::debug!(
        "{name}: {} int8 products and {} attention blocks handed to ONNX Runtime's fused kernels; {converted} products on unsigned weights",
        fused.int8_linears,
        fused.attention
    );
    if fused == crate::onnx::passes::ort::Fused::default() && converted == 0 {
        return Ok(None);
    }
    Ok(Some(m.encode_to_vec()))
}

impl OrtSession {
    /// Wrap a committed session with the graph's manifest inputs and outputs.
    fn new(name: String, session: ::ort::session::Session, graph: &MappedGraph) -> OrtSession {
        OrtSession {
            name,
            session: Mutex::new(session),
            inputs: graph
                .spec
                .inputs
                .iter()
                .map(|t| (t.name.clone(), t.shape.clone()))
                .collect(),
            outputs: graph.spec.outputs.iter().map(|t| t.name.clone()).collect(),
        }
    }
}

impl Session for OrtSession {
    fn run(&self, inputs: &[(&str, TensorRef<'_>)]) -> Result<Vec<Tensor>> {
        let (ordered, _) = order_inputs("ort", &self.name, &self.inputs, inputs)?;
        let mut values = Vec::with_capacity(ordered.len());
        for ((n, _), t) in self.inputs.iter().zip(&ordered) {
            // Borrowed: ONNX Runtime reads the caller's buffer without a copy.
            let v = ::ort::value::TensorRef::from_array_view((t.shape.to_vec(), t.data))
                .map_err(|e| err(&self.name, format!("input '{n}': {e}")))?;
            values.push((
                std::borrow::Cow::<str>::from(n.clone()),
                ::ort::session::SessionInputValue::from(v),
            ));
        }
        let mut session = self
            .session
            .lock()
            .map_err(|_| err(&self.name, "session lock poisoned"))?;
        let out = session
            .run(values)
            .map_err(|e| err(&self.name, format!("run failed: {e}")))?;
        self.outputs
            .iter()
            .map(|n| {
                let (shape, data) = out[n.as_str()]
                    .try_extract_tensor::<f32>()
                    .map_err(|e| err(&self.name, format!("output '{n}': {e}")))?;
                Ok(Tensor {
                    shape: shape.iter().map(|d| *d as usize).collect(),
                    data: data.to_vec(),
                })
            })
            .collect()
    }

    fn input_names(&self) -> Vec<String> {
        self.inputs.iter().map(|(n, _)| n.clone()).collect()
    }

    fn output_names(&self) -> Vec<String> {
        self.outputs.clone()
    }
}
