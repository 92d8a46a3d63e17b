#!/usr/bin/env python3
"""What `qwm serve` adds to an `act` call: round trip over a Unix socket minus the controller's
own time (encode + plan, as the server measures it), for a 224x224 frame.

    scripts/serve-overhead.py [QWM_BINARY] [--out results/serve_overhead.json] [--calls 300]

Uses a minimal planner (2 samples, 1 step, horizon 1) so that planning does not drown the
overhead; the overhead does not depend on the planner. Writes a JSON results file; the README's
number comes from it.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples", "python"))
from qwm_client import Client  # noqa: E402


def module_overhead(a, s, frame, proprio):
    """The same through the Python module: `act` wall time minus the controller's own time."""
    try:
        import numpy as np
        import qwm
    except ImportError as e:
        print(f"python module not measured: {e} (pip install . first)", file=sys.stderr)
        return {}
    ctl = qwm.Controller(os.path.join(HERE, "..", "models", "wall"), threads=1, samples=2,
                         topk=1, opt_steps=1, horizon=1, n_taken=1)
    img = np.frombuffer(frame, dtype=np.uint8).reshape(s, s, 3)
    ctl.set_goal(img, proprio)
    over = []
    for i in range(a.calls + 20):
        t0 = time.perf_counter()
        ctl.act(img, proprio)
        t1 = time.perf_counter()
        t = ctl.last["timing"]
        if i >= 20:
            over.append((t1 - t0) - (t["encode_s"] + t["plan_s"]))
    return {
        "module_overhead_median_s": statistics.median(over),
        "module_overhead_p90_s": sorted(over)[int(0.9 * len(over))],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("qwm", nargs="?", default=os.path.join(HERE, "..", "target", "release", "qwm"))
    ap.add_argument("--out", default=os.path.join(HERE, "..", "results", "serve_overhead.json"))
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--size", type=int, default=224)
    a = ap.parse_args()
    d = tempfile.mkdtemp()
    sock = os.path.join(d, "qwm.sock")
    srv = subprocess.Popen(
        [a.qwm, "serve", "--listen", f"unix:{sock}", "--threads", "1", "--samples", "2",
         "--topk", "1", "--opt-steps", "1", "--horizon", "1", "--n-taken", "1"],
        stderr=subprocess.PIPE, text=True)
    line = srv.stderr.readline()
    assert "listening on" in line, line
    c = Client.unix(sock)
    h = c.hello()
    s = a.size
    frame = bytes((i * 7) % 251 for i in range(s * s * 3))
    proprio = [0.0] * h["model"]["proprio_dim"]
    c.set_goal(frame, s, s, proprio)
    rtt, inside, hello = [], [], []
    for i in range(a.calls + 20):
        t0 = time.perf_counter()
        r = c.act(frame, s, s, proprio)
        t1 = time.perf_counter()
        t2 = time.perf_counter()
        c.hello()
        t3 = time.perf_counter()
        if i >= 20:  # warm-up
            rtt.append(t1 - t0)
            inside.append(r["timing"]["encode_s"] + r["timing"]["plan_s"])
            hello.append(t3 - t2)
    c.shutdown()
    srv.wait(timeout=30)
    over = [x - y for x, y in zip(rtt, inside)]
    module = module_overhead(a, s, frame, proprio)
    res = {
        "frame": f"{s}x{s} RGB ({s * s * 3} bytes)",
        "transport": "unix socket",
        "calls": a.calls,
        "act_round_trip_median_s": statistics.median(rtt),
        "act_inside_controller_median_s": statistics.median(inside),
        "overhead_median_s": statistics.median(over),
        "overhead_p90_s": sorted(over)[int(0.9 * len(over))],
        "hello_round_trip_median_s": statistics.median(hello),
        **module,
        "cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(" :\t"),
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
