#!/usr/bin/env python3
"""Checks the shape of src/ that ARCHITECTURE.md promises, so it stays true:

- no function longer than FN_LIMIT lines (rustfmt-formatted source);
- no file longer than FILE_LIMIT lines, not counting its #[cfg(test)] module
  (inline, or moved out to `<module>/tests.rs` and its `<module>/tests/`);
- no import cycle between sibling modules (crate::a <-> crate::b, or
  crate::a::x <-> crate::a::y), from `crate::` and `super::` paths outside
  comments and test modules.

Prints each violation as `file:line: message` and exits 1 if there is any.
"""
import os
import re
import sys

FN_LIMIT = 80
FILE_LIMIT = 800
FN_RE = re.compile(r"^(\s*)(pub(\([^)]*\))? )?(async )?(const )?(unsafe )?fn (\w+)")


def source_files(root="src"):
    """Every source file, except `<module>/tests.rs` and the files of its
    `<module>/tests/` directory: a module's unit tests moved out of its file
    (`#[cfg(test)] mod tests;`), held to the same rules as an inline test
    module, that is, none."""
    for base, _, files in os.walk(root):
        if os.path.basename(base) == "tests":
            continue
        for f in sorted(files):
            if f.endswith(".rs") and f != "tests.rs":
                yield os.path.join(base, f)


def without_tests(lines):
    for i, line in enumerate(lines):
        if line.startswith("#[cfg(test)]"):
            return lines[:i]
    return lines


def check_sizes(path, lines, problems):
    body = without_tests(lines)
    if len(body) > FILE_LIMIT:
        problems.append(f"{path}:1: {len(body)} lines without tests (limit {FILE_LIMIT})")
    for i, line in enumerate(body):
        m = FN_RE.match(line)
        if not m or line.rstrip().endswith(";"):
            continue
        end = next((j for j in range(i, len(body)) if body[j] == m.group(1) + "}"), i)
        if end - i + 1 > FN_LIMIT:
            problems.append(f"{path}:{i + 1}: fn {m.group(7)} is {end - i + 1} lines (limit {FN_LIMIT})")


def module_name(path):
    parts = path[len("src/"):-len(".rs")].split("/")
    if parts[-1] == "mod":
        parts = parts[:-1]
    return parts


def dependencies(parts, lines):
    """The modules one file names through `crate::` and `super::` paths."""
    code = [l for l in without_tests(lines) if not l.strip().startswith("//")]
    text = "\n".join(code)
    deps = {tuple(m.group(1).split("::")) for m in re.finditer(r"crate::([a-z_]+(?:::[a-z_]+)*)", text)}
    for m in re.finditer(r"super::([a-z_]+)", text):
        deps.add(tuple(parts[:-1]) + (m.group(1),))
    return deps


def find_cycles(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

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
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def check_cycles(modules, problems):
    names = set(modules)

    def resolve(dep):
        for k in range(len(dep), 0, -1):
            if dep[:k] in names:
                return dep[:k]
        return None

    for depth in range(1, 4):
        graph = {}
        for name, deps in modules.items():
            for dep in filter(None, map(resolve, deps)):
                a, b = name[:depth], dep[:depth]
                if a != b and a[:-1] == b[:-1] and len(a) == depth and len(b) == depth:
                    graph.setdefault(a, set()).add(b)
        for cycle in find_cycles(graph):
            shown = ", ".join("::".join(c) for c in cycle)
            problems.append(f"src/: import cycle between modules {shown}")


def main():
    problems, modules = [], {}
    for path in source_files():
        lines = open(path, encoding="utf-8").read().split("\n")
        check_sizes(path, lines, problems)
        parts = module_name(path)
        if parts not in (["lib"], ["main"]):
            modules[tuple(parts)] = dependencies(parts, lines)
    check_cycles(modules, problems)
    for p in problems:
        print(p)
    print(f"structure: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
