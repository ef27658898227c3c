"""What the grader reads in a notebook's code without running it: flags for the instructor,
never a verdict.

The verdict comes from the answers alone (:mod:`ptqlib.classroom.grade`). These flags say
what the answers cannot:

- :func:`exercise_flags`: the code that defines an exercise's function (its last definition
  above the checker cell, and the notebook's own functions it calls) uses the ptqlib names
  that are the exercise's answer (``uses ptqlib.quantization.qparams_from_range``), the
  checkers' own code (``ptqlib.classroom``), or code that hides what it runs (``eval``,
  ``__import__``...). ptqlib implements every exercise, so a student can always call it:
  the flag makes that visible, it cannot prevent it.
- :func:`notebook_flags`: code anywhere in the notebook that only makes sense against a
  grader: patching builtins, ptqlib or ``torch.Tensor``; IPython exception handlers and
  input transformers; reading stack frames; comparison methods of its own or a
  ``torch.Tensor`` subclass; a function's ``__code__`` swapped; reading ``/proc``, the
  grading folder or notebook files; starting processes; a ``check_...`` function of its
  own; shell commands and magics that run code (``!``, ``%run``), ``get_ipython()``. None
  of these appears in the series' notebooks (``tests/test_flags.py`` checks every one,
  solved and unsolved).

``getattr``, ``__dict__`` and ``globals()`` are flagged as hiding what runs, but what such a
lookup reaches is not known: nor is what a name built at run time reaches another way
(``operator.attrgetter``, a helper in a module of the student's), code fetched from a string
or a file, or PyTorch's own implementation of an answer (``torch.ao.quantization``'s
observers compute qparams too). Read the flagged notebooks; a clean one is not proof of
honest work.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ptqlib.classroom.checkers.exercise import Exercise, OpenQuestion
from ptqlib.classroom.submission import Cell, parse

# Builtins and modules whose use hides what a function runs.
HIDING_BUILTINS = ("exec", "eval", "compile", "__import__", "globals", "vars", "open",
                   "getattr")  # fmt: skip
# Attributes that reach a module's or a function's names by a string.
HIDING_ATTRIBUTES = ("__dict__", "__globals__", "__builtins__")
HIDING_MODULES = ("importlib", "sys.modules", "inspect", "pickle", "marshal", "ctypes",
                  "subprocess", "os.system", "gc")  # fmt: skip
# Anywhere in a notebook: code run from text, or objects found at run time.
RUNTIME_LOOKUPS = ("importlib", "sys.modules", "marshal", "ctypes", "gc")
# IPython magics that run code from a file, a string or a shell.
RUNNING_MAGICS = {"run", "load", "sx", "system", "sh", "bash", "script", "python", "python3",
                  "writefile", "file", "macro", "rerun", "recall", "loadpy"}  # fmt: skip
# Attributes only a cheat touches: IPython's hooks and stack frames.
GRADER_HOOKS = {
    "set_custom_exc": "an IPython exception handler",
    "input_transformers_cleanup": "an IPython input transformer",
    "input_transformers_post": "an IPython input transformer",
    "ast_transformers": "an IPython AST transformer",
    "_getframe": "reads the caller's stack frame",
    "currentframe": "reads the caller's stack frame",
    "f_locals": "reads a stack frame",
    "f_globals": "reads a stack frame",
    "f_back": "reads a stack frame",
}
COMPARISONS = {"__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__bool__",
               "__hash__", "__index__", "__int__", "__float__", "__torch_function__"}  # fmt: skip
# What replaces a function's code without a def the flags would read.
REPLACED_INSIDES = {"__code__", "__call__", "__defaults__", "__kwdefaults__", "__class__"}
PATCHED_ROOTS = ("builtins", "__builtins__", "ptqlib", "torch.Tensor", "IPython")
PROCESSES = ("os.fork", "os.setsid", "os.kill", "os.killpg", "subprocess", "multiprocessing",
             "signal", "threading", "os.system", "os.exec", "os.spawn", "os.popen")  # fmt: skip
GRADER_MODULES = ("ptqlib.classroom.collect", "ptqlib.classroom.runner", "ptqlib.classroom.grade")
# What the notebooks import from ptqlib.classroom: the checkers and notebook 03's helpers.
CLASSROOM_IMPORTS = {"changed_digits", "evaluate_observer_choice", "ObserverChoiceResult"}
SUSPICIOUS_TEXT = {
    "/proc": "reads /proc",
    "/grading": "touches the grading folder",
    "PTQLIB_GRADING_DIR": "touches the grading folder",
    ".ipynb": "opens a notebook file",
    "/etc/": "reads system files",
}


def dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of names and attributes, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


class Imports:
    """Every import of the notebook: a name -> the module or object it stands for."""

    def __init__(self, cells: list[Cell]) -> None:
        self.names: dict[str, str] = {}
        self.star: list[str] = []  # modules imported with *
        for tree in _trees(cells):
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.asname:
                            self.names[alias.asname] = alias.name
                        else:
                            head = alias.name.split(".")[0]
                            self.names[head] = head
                elif isinstance(node, ast.ImportFrom) and node.module:
                    for alias in node.names:
                        if alias.name == "*":
                            self.star.append(node.module)
                        else:
                            self.names[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def resolve(self, name: str) -> str:
        head, _, rest = name.partition(".")
        if head in self.names:
            return self.names[head] + (f".{rest}" if rest else "")
        return name

    def imported(self, name: str, prefixes: tuple[str, ...]) -> str | None:
        """What ``name`` stands for if it goes through an import and is one of ``prefixes``
        or inside one (a variable of the same name is not the module)."""
        if name.partition(".")[0] not in self.names:
            return None
        qualified = self.resolve(name)
        inside = any(qualified == p or qualified.startswith(p + ".") for p in prefixes)
        return qualified if inside else None


def _trees(cells: list[Cell]) -> Iterator[ast.Module]:
    for cell in cells:
        if cell.kind == "code":
            tree = parse(cell.source)
            if tree is not None:
                yield tree


def _references(node: ast.AST) -> Iterator[str]:
    """The longest dotted names ``node`` uses (``torch.round``, not ``torch`` as well)."""
    inner: set[int] = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Attribute):
            inner.add(id(child.value))
    for child in ast.walk(node):
        if isinstance(child, (ast.Attribute, ast.Name)) and id(child) not in inner:
            name = dotted(child)
            if name is not None:
                yield name


def _definitions(cells: list[Cell], before: int) -> dict[str, ast.AST]:
    """The last definition of each name the cells above ``before`` make at their top level,
    also inside ``if``, ``for``, ``while``, ``try`` and ``with`` blocks and by ``:=`` (not
    inside functions or classes: those are their own)."""
    found: dict[str, ast.AST] = {}
    for cell in cells[:before]:
        tree = parse(cell.source) if cell.kind == "code" else None
        for statement in _module_level(tree.body if tree is not None else []):
            for name in _bound_names(statement):
                found[name] = statement
    return found


def _local_names(definition: ast.AST) -> set[str]:
    """The parameters and variables of a definition's functions and methods, and the names
    it assigns: its own, not the notebook's of the same name."""
    names = {node.arg for node in ast.walk(definition) if isinstance(node, ast.arg)}
    for node in ast.walk(definition):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def _module_level(statements: list[ast.stmt]) -> Iterator[ast.stmt]:
    """``statements`` and those nested in their blocks, but not in function or class bodies."""
    for statement in statements:
        yield statement
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for block in ("body", "orelse", "finalbody", "handlers"):
            inner = getattr(statement, block, None)
            if isinstance(inner, list):
                yield from _module_level([item for item in inner if isinstance(item, ast.AST)])


def _bound_names(statement: ast.stmt) -> Iterator[str]:
    """The names ``statement`` itself binds (not the statements of its blocks)."""
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        yield statement.name
        return
    if isinstance(statement, ast.ExceptHandler):
        return
    targets: list[ast.AST] = []
    if isinstance(statement, ast.Assign):
        targets = list(statement.targets)
    elif isinstance(statement, (ast.AnnAssign, ast.AugAssign, ast.For, ast.AsyncFor)):
        targets = [statement.target]
    elif isinstance(statement, (ast.With, ast.AsyncWith)):
        targets = [item.optional_vars for item in statement.items if item.optional_vars]
    blocks = {id(item) for block in ("body", "orelse", "finalbody", "handlers")
              for item in getattr(statement, block, None) or []}  # fmt: skip
    walrus = [
        node.target for node in _walk_outside(statement, blocks) if isinstance(node, ast.NamedExpr)
    ]
    pending = targets + walrus
    while pending:  # a, (b, *c) = ...; not f.x = ... or d[k] = ..., which bind no name
        target = pending.pop()
        if isinstance(target, ast.Name):
            yield target.id
        elif isinstance(target, (ast.Tuple, ast.List)):
            pending.extend(target.elts)
        elif isinstance(target, ast.Starred):
            pending.append(target.value)


def _walk_outside(node: ast.AST, skipped: set[int]) -> Iterator[ast.AST]:
    """ast.walk of ``node`` without the subtrees whose id is in ``skipped`` and without
    function and class bodies."""
    pending = [node]
    while pending:
        current = pending.pop()
        yield current
        for child in ast.iter_child_nodes(current):
            if id(child) in skipped:
                continue
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue
            pending.append(child)


def exercise_flags(cells: list[Cell], exercise: Exercise | OpenQuestion, before: int) -> list[str]:
    """Flags on the code defining ``exercise``'s function above cell ``before``."""
    imports = Imports(cells)
    definitions = _definitions(cells, before)
    answers = getattr(exercise, "answers", ())
    answer_names = {answer.rsplit(".", 1)[1]: answer for answer in answers}
    flags: dict[str, None] = {}
    if exercise.function not in definitions and exercise.function in imports.names:
        flags[f"is {imports.resolve(exercise.function)} itself"] = None
    pending, seen = [exercise.function], set()
    while pending:
        name = pending.pop()
        if name in seen or name not in definitions:
            continue
        seen.add(name)
        local = _local_names(definitions[name])
        for reference in _references(definitions[name]):
            qualified = imports.resolve(reference)
            final = qualified.rsplit(".", 1)[-1]
            if qualified in answers or (qualified.startswith("ptqlib.") and final in answer_names):
                flags[f"uses {answer_names.get(final, qualified)}"] = None
            elif final in answer_names and reference == final and imports.star:
                flags[f"uses {answer_names[final]} (from a * import)"] = None
            if qualified.startswith("ptqlib.classroom"):
                flags[f"uses {qualified} (the checkers' own code)"] = None
            hiding = imports.imported(reference, HIDING_MODULES)
            if reference in HIDING_BUILTINS and reference not in definitions:
                hiding = reference
            if hiding is not None:
                flags[f"uses {hiding} (hides what it runs)"] = None
            if reference.rsplit(".", 1)[-1] in HIDING_ATTRIBUTES:
                flags[f"uses {reference} (hides what it runs)"] = None
            head = reference.partition(".")[0]  # Tools.helper: read the class Tools too
            if head in definitions and head not in imports.names and head not in local:
                pending.append(head)  # a function (or class, or value) of the notebook
    return list(flags)


def notebook_flags(cells: list[Cell]) -> list[str]:
    """Code anywhere in the notebook that only makes sense against a grader."""
    imports = Imports(cells)
    flags: dict[str, None] = {}
    for cell in cells:
        tree = parse(cell.source) if cell.kind == "code" else None
        if tree is None:
            continue
        for problem in [*_running_magics(cell.source), *_tampering(tree, imports)]:
            flags[f"cell {cell.index + 1}: {problem}"] = None
    return list(flags)


def _running_magics(source: str) -> Iterator[str]:
    """IPython lines that run code the flags cannot read (``parse`` leaves them out):
    shell commands (``!python x.py``) and magics such as ``%run``."""
    for line in source.splitlines():
        words = line.strip().split(maxsplit=1)
        if not words or not words[0].startswith(("!", "%")):
            continue
        if words[0].startswith("!") or words[0].lstrip("%") in RUNNING_MAGICS:
            yield f"runs code the flags cannot read ({words[0][:20]})"


def _tampering(tree: ast.Module, imports: Imports) -> Iterator[str]:
    for statement in tree.body:
        if isinstance(statement, ast.FunctionDef) and statement.name.startswith("check_"):
            yield f"defines its own {statement.name}"
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for target in targets:
                yield from _patched(target, imports)
        elif isinstance(node, ast.Call) and dotted(node.func) in ("setattr", "delattr"):
            if node.args:
                yield from _patched(node.args[0], imports, through_call=True)
        elif isinstance(node, ast.Attribute) and node.attr in GRADER_HOOKS:
            yield f"{GRADER_HOOKS[node.attr]} ({node.attr})"
        elif isinstance(node, ast.ClassDef):
            for base in node.bases:
                if imports.resolve(dotted(base) or "") == "torch.Tensor":
                    yield f"subclasses torch.Tensor ({node.name})"
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name in COMPARISONS:
                    yield f"defines {item.name} ({node.name})"
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            yield from _classroom_import(node)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            for text, problem in SUSPICIOUS_TEXT.items():
                if text in node.value:
                    yield problem
    for reference in _references(tree):
        hiding = imports.imported(reference, RUNTIME_LOOKUPS)
        if reference in ("exec", "eval", "compile", "__import__", "globals", "get_ipython"):
            hiding = reference
        if hiding is not None and not hiding.startswith("importlib.metadata"):
            yield f"hides what it runs ({hiding})"
        processes = imports.imported(reference, PROCESSES)
        if processes is not None:
            yield f"starts or signals processes ({processes})"
        grader = imports.imported(reference, GRADER_MODULES)
        if grader is not None:
            yield f"uses the grader's own code ({grader})"


def _patched(target: ast.AST, imports: Imports, through_call: bool = False) -> Iterator[str]:
    """A flag if assigning to ``target`` (or setattr on it) patches a module or a class."""
    name = dotted(target)
    if name is None or ("." not in name and not through_call):
        return
    qualified = imports.resolve(name)
    if any(qualified == root or qualified.startswith(root + ".") for root in PATCHED_ROOTS):
        yield f"patches {qualified}"
    elif name.rsplit(".", 1)[-1] in COMPARISONS | REPLACED_INSIDES:
        yield f"patches {qualified}"


def _classroom_import(node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """A flag for importing anything of ptqlib.classroom but the checkers and the helpers."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if (
                alias.name.startswith("ptqlib.classroom.")
                and alias.name != "ptqlib.classroom.checkers"
            ):
                yield f"imports {alias.name}"
        return
    module = node.module or ""
    if not module.startswith("ptqlib.classroom"):
        return
    for alias in node.names:
        name = alias.name
        allowed = name.startswith("check_") or name in CLASSROOM_IMPORTS
        if module == "ptqlib.classroom" and name == "checkers":
            allowed = True
        if not allowed:
            yield f"imports {module}.{name}"
