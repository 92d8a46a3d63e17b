"""Time one ONNX graph with onnxruntime's Python API, as `qwm bench --vs-python` does with qwm.

Same inputs policy as qwm (standard-normal values of the graph's input shapes, dynamic dims set to
--batch), same session settings as qwm's ort backend (intra-op threads = --threads, one inter-op
thread, all graph optimizations but QDQ fusion). Prints one JSON line: {"onnxruntime", "p50_ms", "mean_ms"}.
"""
import argparse, json, time

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--graph", required=True)
    ap.add_argument("--batch", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.disable_quant_qdq", "1")  # as qwm: exact QDQ semantics
    s = ort.InferenceSession(a.graph, so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {}
    for i in s.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else a.batch for d in i.shape]
        feed[i.name] = rng.standard_normal(shape).astype(np.float32)
    for _ in range(1 + a.warmup):
        s.run(None, feed)
    ms = []
    for _ in range(a.iters):
        t = time.perf_counter()
        out = s.run(None, feed)
        ms.append((time.perf_counter() - t) * 1e3)
        if not all(np.isfinite(o).all() for o in out):
            raise SystemExit("non-finite output")
    print(json.dumps({"onnxruntime": ort.__version__, "p50_ms": float(np.median(ms)), "mean_ms": float(np.mean(ms))}))


if __name__ == "__main__":
    main()
