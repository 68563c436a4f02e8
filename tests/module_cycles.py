#!/usr/bin/env python3
"""Import cycles between sibling modules of a Rust crate.

Usage: tests/module_cycles.py SRC_DIR... [--graph]

For every folder of modules (the crate root, then each module with children), an edge
A -> B means code in sibling A (any file under it) names sibling B through `crate::`,
`super::` or a `use` tree rooted there. Unit-test code (`#[cfg(test)] mod tests` and
`tests.rs` files) is left out: tests may reach across. Prints each cycle (a strongly
connected set of siblings) and exits 1 when there is one; `--graph` prints every edge.

Why a script rather than cargo-modules: it builds rust-analyzer (minutes on a small
machine) to answer a question the `use` lines answer.
"""

import os
import re
import sys


def module_path(src, path):
    rel = os.path.relpath(path, src)[: -len(".rs")].split(os.sep)
    if rel in (["lib"], ["main"]):
        return ()
    if rel[-1] == "mod":
        rel = rel[:-1]
    if rel[0] == "bin":
        return None  # separate binaries are crates of their own
    return tuple(rel)


def strip_comments_and_tests(text):
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    cut = re.search(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{", text)
    return text[: cut.start()] if cut else text


def use_tree(s, i):
    """Paths of a use tree starting at s[i] (after the root's `::`): [(segments, end)]."""
    paths = []
    segs = []
    while i < len(s):
        m = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*|\{)", s[i:])
        if not m:
            break
        tok = m.group(1)
        i += m.end()
        if tok == "{":
            while True:
                sub, i = use_tree(s, i)
                paths += [segs + p for p in sub]
                m = re.match(r"\s*([,}])", s[i:])
                if not m:
                    return paths, i
                i += m.end()
                if m.group(1) == "}":
                    return paths, i
                if re.match(r"\s*\}", s[i:]):
                    i += re.match(r"\s*\}", s[i:]).end()
                    return paths, i
        segs.append(tok)
        m = re.match(r"\s*::", s[i:])
        if not m:
            break
        i += m.end()
    if segs:
        paths.append(segs)
    return paths, i


def references(text, here):
    """Absolute module paths this file names."""
    refs = []
    for m in re.finditer(r"\b((?:super::)+|crate::|self::)", text):
        prefix = m.group(1)
        paths, _ = use_tree(text, m.end())
        if prefix == "crate::":
            base = ()
        elif prefix == "self::":
            base = here
        else:
            ups = prefix.count("super::")
            base = here[: max(len(here) - ups, 0)]
        for p in paths:
            p = [seg for seg in p if seg not in ("self",)]
            refs.append(base + tuple(p))
    return refs


def edges(src):
    modules = {}
    for root, _, files in os.walk(src):
        for f in files:
            if f.endswith(".rs") and f != "tests.rs":
                path = os.path.join(root, f)
                mp = module_path(src, path)
                if mp is not None:
                    modules[path] = mp
    known = set(modules.values())
    out = set()
    for path, here in modules.items():
        with open(path, encoding="utf-8") as fh:
            text = strip_comments_and_tests(fh.read())
        for ref in references(text, here):
            # the longest prefix of ref that is a module we know
            while ref and ref not in known:
                ref = ref[:-1]
            n = 0
            while n < min(len(here), len(ref)) and here[n] == ref[n]:
                n += 1
            if n < len(here) and n < len(ref):
                out.add((here[:n], here[n], ref[n]))
    return out


def cycles(graph):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def main(argv):
    show = "--graph" in argv
    srcs = [a for a in argv if a != "--graph"]
    if not srcs:
        print(__doc__, file=sys.stderr)
        return 2
    bad = 0
    for src in srcs:
        by_parent = {}
        for parent, a, b in sorted(edges(src)):
            by_parent.setdefault(parent, {}).setdefault(a, set()).add(b)
            if show:
                print(f"{src}: {'::'.join(parent) or 'crate'}: {a} -> {b}")
        for parent, graph in sorted(by_parent.items()):
            for comp in cycles(graph):
                bad += 1
                print(f"{src}: cycle in {'::'.join(parent) or 'crate'}: {' <-> '.join(comp)}")
    print(f"{bad} cycle(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
