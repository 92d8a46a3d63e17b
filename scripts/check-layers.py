#!/usr/bin/env python3
"""Check qwm's one-way layering (run by .ci/run; exits 1 on a violation).

Every `crate::` and `super::` path in src/ (test modules excluded: tests may build their fixtures
with higher layers) is resolved to the module it names. Two rules:

1. Between top-level modules, an import must point down the layer order below (a module may
   import only modules of a lower rank; modules of the same rank do not import each other).
2. Inside any module, its child modules must not import each other in a cycle (the parent may
   use its children, and children may use the parent's own items: that is the registry pattern).
3. README.md's "Layout" section names every module (its file `name.rs` or its folder `name/`).

Usage: scripts/check-layers.py [SRC_DIR]
"""

import os
import re
import sys
from collections import defaultdict

# Layer order, lowest first. Keep README's layout section and src/lib.rs in step with it.
RANKS = {
    "error": 0,
    "util": 1,
    "onnx": 2,
    "kernels": 2,
    "bundle": 3,
    "engine": 4,
    "env": 5,
    "plan": 5,
    "runtime": 6,
    "quant": 7,
    "study": 8,
    "serve": 8,
    "cli": 9,
}

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def module_path(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib"):
        rel = rel[:-1]
    return rel


def strip_tests_and_comments(text):
    # Test modules sit at the end of a file by convention: cut from `#[cfg(test)]`.
    cut = text.find("#[cfg(test)]")
    if cut >= 0:
        text = text[:cut]
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    out = []
    for line in text.splitlines():
        s = line.lstrip()
        if s.startswith("//"):
            continue
        # Drop string literals (paths in messages are not imports), then trailing comments.
        line = re.sub(r'"(?:[^"\\]|\\.)*"', '""', line)
        i = line.find("//")
        if i >= 0:
            line = line[:i]
        out.append(line)
    return "\n".join(out)


def use_tree_paths(tree):
    """Expand a use tree (`a::b::{c, d::e}`) into its leading paths."""
    tree = tree.strip()
    m = re.match(r"^((?:%s::)*)\{(.*)\}$" % IDENT, tree, flags=re.S)
    if m:
        prefix = m.group(1)
        inner, depth, cur, parts = m.group(2), 0, "", []
        for ch in inner:
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
                continue
            depth += ch == "{"
            depth -= ch == "}"
            cur += ch
        parts.append(cur)
        out = []
        for p in parts:
            if p.strip():
                out += [prefix + q for q in use_tree_paths(p)]
        return out
    tree = re.split(r"\s+as\s+", tree)[0]
    return [tree.rstrip(":*").rstrip(":")]


def references(text):
    refs = []
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        refs += use_tree_paths(m.group(1))
    for m in re.finditer(r"(?<![A-Za-z0-9_:])((?:crate|super)(?:::%s)+)" % IDENT, text):
        refs.append(m.group(1))
    return refs


def resolve(ref, here, is_mod_file):
    parts = [p for p in ref.split("::") if p]
    if not parts:
        return None
    if parts[0] == "crate":
        return parts[1:]
    if parts[0] in ("super", "self"):
        base = list(here) if is_mod_file else list(here[:-1])
        if parts[0] == "self":
            base = list(here)
            parts = parts[1:]
        while parts and parts[0] == "super":
            # In a mod.rs / lib.rs, `super` is the parent of the folder's module.
            base = base[:-1] if is_mod_file else base
            is_mod_file = True
            parts = parts[1:]
        return base + parts
    return None


def find_cycle(edges):
    colour, stack = {}, []

    def visit(n):
        colour[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if colour.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if colour.get(m) is None:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        colour[n] = 2
        return None

    for n in sorted(edges):
        if colour.get(n) is None:
            c = visit(n)
            if c:
                return c
    return None


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
    src = os.path.normpath(src)
    problems = []
    sibling_edges = defaultdict(lambda: defaultdict(set))  # parent -> child -> {child}
    where = {}
    for root, _, files in os.walk(src):
        for f in sorted(files):
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)
            if f == "tests.rs":
                continue  # a test module in its own file (see strip_tests_and_comments)
            if rel == "main.rs":
                continue  # the binary: only dispatches to qwm::cli
            here = module_path(src, path)
            if here and here[0] not in RANKS:
                problems.append(f"{rel}: top-level module '{here[0]}' has no layer in scripts/check-layers.py")
                continue
            text = strip_tests_and_comments(open(path, encoding="utf-8").read())
            is_mod = f in ("mod.rs", "lib.rs")
            for ref in references(text):
                target = resolve(ref, here, is_mod)
                if not target or not here:
                    continue
                if target[0] not in RANKS:
                    continue  # an item of lib.rs (e.g. the crate's re-exported Result)
                if target[0] != here[0]:
                    if RANKS[target[0]] >= RANKS[here[0]]:
                        problems.append(
                            f"{rel}: imports {'::'.join(target)} (layer {target[0]}, rank "
                            f"{RANKS[target[0]]}) from layer {here[0]} (rank {RANKS[here[0]]}): "
                            "imports must point down"
                        )
                    continue
                k = 0
                while k < len(here) and k < len(target) and here[k] == target[k]:
                    k += 1
                if k >= len(here) or k >= len(target):
                    continue  # parent -> child, or child -> an ancestor's own items
                parent = "::".join(here[:k])
                a, b = here[k], target[k]
                sibling_edges[parent][a].add(b)
                where.setdefault((parent, a, b), rel)
    for parent, edges in sorted(sibling_edges.items()):
        cycle = find_cycle(edges)
        if cycle:
            hops = []
            for a, b in zip(cycle, cycle[1:]):
                hops.append(f"{a} -> {b} ({where[(parent, a, b)]})")
            problems.append(f"import cycle inside {parent}: " + ", ".join(hops))
    readme = os.path.join(os.path.dirname(src), "README.md")
    if os.path.exists(readme):
        text = open(readme, encoding="utf-8").read()
        start = text.find("## Layout")
        end = text.find("\n## ", start + 1)
        layout = text[start:end] if start >= 0 else ""
        for root, _, files in os.walk(src):
            for f in sorted(files):
                if not f.endswith(".rs") or f in ("tests.rs", "lib.rs"):
                    continue
                rel = os.path.relpath(os.path.join(root, f), src)
                if f == "mod.rs":
                    name = os.path.basename(root) + "/"
                else:
                    name = f
                if name not in layout:
                    problems.append(f"{rel}: README.md's Layout section does not name {name}")
    problems = list(dict.fromkeys(problems))
    if problems:
        print("layer check failed:")
        for p in problems:
            print("  " + p)
        return 1
    print(f"layer check: {len(RANKS)} layers, no upward import, no cycle ({src})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
