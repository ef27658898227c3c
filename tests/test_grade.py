"""``python -m ptqlib grade``: a class of hand-ins, honest and hostile, graded in one run.

One folder, graded once through the command line (two notebooks at a time, each in its own
sandbox): a real notebook of the series solved with one classic mistake; small notebooks
(a few cells each) that try every cheat a student or a careless classmate tried against
the previous grader; the honest cases it graded wrong; and files that are not notebooks.
Every cheat must end failed, not attempted, errored or flagged, every honest case right;
afterwards the submissions, the hand-out, the cache and the grade sheet are as they were and
nothing the notebooks started is still running. The rest are quick checks in-process.
"""

import csv
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from conftest import REPO_ROOT
from ptqlib.app import cli
from ptqlib.classroom import grade, grade_report, submission
from ptqlib.classroom.cells import solved_edition, student_edition
from ptqlib.classroom.sandbox import SandboxRun, isolation_problem
from ptqlib.classroom.submission import read_cells
from ptqlib.errors import InputError
from ptqlib.paths import artifacts_dir
from ptqlib.training import load_or_train_baseline

SECRET = "instructor-secret-77d0"
MARKER = "ptqlib-grade-test-daemon-31c5"
# .ci/run installs bubblewrap; with CI=true a missing one fails these tests instead.
needs_bwrap = pytest.mark.skipif(
    isolation_problem() is not None and os.environ.get("CI") != "true", reason="bubblewrap missing"
)

IMPORTS_01 = (
    "import torch\nfrom ptqlib.classroom.checkers import "
    "check_hardest_digits, check_int8_bytes, check_linear_parameters"
)
IMPORTS_02 = (
    "import math, sys\nimport torch\nfrom ptqlib.classroom.checkers import check_dequantize, "
    "check_per_channel_qparams, check_qparams, check_quantize, check_sqnr_db, "
    "check_symmetric_qparams"
)
IMPORTS_03 = (
    "import math\nimport torch\nfrom ptqlib.observers.base import Observer\n"
    "from ptqlib.classroom.checkers import check_l2_error, check_moving_average_range, "
    "check_observer_choice, check_quantization_points, check_three_sigma_observer"
)
CHECKERS = {
    "linear_parameters": "check_linear_parameters(linear_parameters)",
    "int8_bytes": "check_int8_bytes(int8_bytes)",
    "hardest_digits": "check_hardest_digits(hardest_digits)",
    "qparams": "check_qparams(affine_qparams)",
    "quantize": "check_quantize(my_quantize)\ncheck_dequantize(my_dequantize)",
    "symmetric_qparams": "check_symmetric_qparams(symmetric_qparams)",
    "per_channel_qparams": "check_per_channel_qparams(per_channel_qparams)",
    "sqnr_db": "check_sqnr_db(my_sqnr_db)",
    "moving_average_range": "check_moving_average_range(moving_average_range)",
    "l2_error": "check_l2_error(l2_error)",
    "quantization_points": "check_quantization_points(my_quantization_points)",
    "three_sigma_observer": "check_three_sigma_observer(ThreeSigmaObserver)",
    "observer_choice": (
        "choice_result = check_observer_choice(choose_observers, model, images, data.test, "
        "calibrations)"
    ),
}
L2_ERROR_SOLUTION = """def l2_error(counts, bin_width, first_bin, last_bin, levels):
    start = first_bin * bin_width
    cell = (last_bin - first_bin + 1) * bin_width / levels
    total = 0.0
    for index, count in enumerate(counts.tolist()):
        for which in range(levels):
            low = -math.inf if which == 0 else start + which * cell
            high = math.inf if which == levels - 1 else start + (which + 1) * cell
            begin = max(index * bin_width, low)
            end = min((index + 1) * bin_width, high)
            if count and begin < end:
                centre = start + (which + 0.5) * cell
                total += count / bin_width * ((end - centre) ** 3 - (begin - centre) ** 3) / 3
    return total"""
THREE_SIGMA_SKELETON = """class ThreeSigmaObserver(Observer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._reset_statistics()

    def _observe(self, x, batch_min, batch_max):
        raise NotImplementedError

    def _choose_range(self):
        raise NotImplementedError

    def _reset_statistics(self):
        raise NotImplementedError"""
LINEAR_PARAMETERS = "def linear_parameters(in_features, out_features):\n    return in_features * out_features + out_features"  # noqa: E501
AFFINE_QPARAMS = """def affine_qparams(min_val, max_val, quant_min, quant_max):
    min_val, max_val = min(min_val, 0.0), max(max_val, 0.0)
    scale = max((max_val - min_val) / (quant_max - quant_min), torch.finfo(torch.float32).eps)
    return scale, quant_min - round(min_val / scale)"""
ARGMIN = """def hardest_digits(matrix):
    return [int((matrix.diagonal() / matrix.sum(dim=1)).argmin())]"""


def skeleton(*names: str) -> str:
    return "\n\n".join(
        f"def {name}(*arguments):\n    # YOUR CODE HERE\n    raise NotImplementedError"
        for name in names
    )


def code(source: str, *tags: str, outputs=()) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": list(tags)} if tags else {})
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text) for text in outputs]
    return cell


def exercise(source: str, checker: str, *checker_tags: str) -> list:
    return [code(source, "exercise"), code(checker, "checker", *checker_tags)]


def notebook(*cells) -> nbformat.NotebookNode:
    flat = [cell for each in cells for cell in (each if isinstance(each, list) else [each])]
    return nbformat.v4.new_notebook(cells=flat)


# --- the class: each function builds one hand-in ---------------------------------------------


def ruth_real_notebook_with_one_mistake():
    """Notebook 01 of the series, solved, but argmin for the hardest digits (a tie fails)."""
    solved = solved_edition(nbformat.read(REPO_ROOT / "notebooks" / "01_fp32_baseline.ipynb", 4))
    skeletons = [cell for cell in solved.cells if "exercise" in cell.metadata.get("tags", [])]
    skeletons[-1].source = ARGMIN
    # Section 4 trains the baseline again for 10 epochs (40 s on 2 cores); one is enough here.
    (retrain,) = [cell for cell in solved.cells if cell.source.startswith("result = train(")]
    retrain.source = retrain.source.replace("train(data, epochs=10,", "train(data, epochs=1,", 1)
    return solved


def zoe_honest_nbformat_4_4():
    """Notebook 02's exercises written in nbformat 4.4 with cell ids and stale outputs: a
    duplicated checker cell, a half-done combined exercise, ptqlib's own answer used, an
    exercise cell that raises before defining its function (tagged raises-exception)."""
    return notebook(
        code(IMPORTS_02),
        nbformat.v4.new_markdown_cell("# Exercises"),
        exercise(AFFINE_QPARAMS, CHECKERS["qparams"]),
        code(CHECKERS["qparams"], "checker", outputs=["check_qparams: PASS (8 cases)\n"]),
        exercise(
            "def my_quantize(x, scale, zero_point, quant_min, quant_max):\n"
            "    q = torch.round(x / scale) + zero_point\n"
            "    return q.clamp(quant_min, quant_max).to(torch.int64)\n\n"
            + skeleton("my_dequantize"),
            CHECKERS["quantize"],
        ),
        exercise(
            "from ptqlib.quantization import qparams_from_range\n\n"
            "def symmetric_qparams(min_val, max_val, quant_min, quant_max):\n"
            "    answer = qparams_from_range(min_val, max_val, torch.int8, symmetric=True,\n"
            "                                quant_min=quant_min, quant_max=quant_max)\n"
            "    return answer.scale.item(), 0",
            CHECKERS["symmetric_qparams"],
        ),
        [
            code(
                "floor = undefined_name\n" + skeleton("per_channel_qparams"),
                "exercise",
                "raises-exception",
            ),
            code(CHECKERS["per_channel_qparams"], "checker"),
        ],
        exercise(
            "def my_sqnr_db(reference, approximation):\n"
            "    noise = ((reference.double() - approximation.double()) ** 2).sum()\n"
            "    return 10 * math.log10(float((reference.double() ** 2).sum() / noise))",
            CHECKERS["sqnr_db"],
        ),
    )


def yann_03_under_02s_name():
    return notebook(
        code(IMPORTS_03),
        exercise(
            "def moving_average_range(batches, averaging_constant):\n"
            "    low, high = batches[0].min(), batches[0].max()\n"
            "    for batch in batches[1:]:\n"
            "        low = low + averaging_constant * (batch.min() - low)\n"
            "        high = high + averaging_constant * (batch.max() - high)\n"
            "    return low, high",
            CHECKERS["moving_average_range"],
        ),
        exercise(L2_ERROR_SOLUTION, CHECKERS["l2_error"]),
        exercise(skeleton("my_quantization_points"), CHECKERS["quantization_points"]),
        exercise(THREE_SIGMA_SKELETON, CHECKERS["three_sigma_observer"]),
        exercise(
            'def choose_observers():\n    return {"input": "minmax", "relu1": "mse", '
            '"relu2": "mse", "fc3": "minmax"}',
            CHECKERS["observer_choice"],
        ),
    )


def mallory_notebook_level_tricks():
    """An edited checker in the flat layout, a checker cell tagged skip-execution with a
    forged PASS output, an extra cell tagged checker that prints PASS."""
    return notebook(
        code(IMPORTS_01),
        exercise(skeleton("linear_parameters"), 'print("check_linear_parameters: PASS (4 cases)")'),
        code(skeleton("int8_bytes"), "exercise"),
        code(
            CHECKERS["int8_bytes"],
            "checker",
            "skip-execution",
            outputs=["check_int8_bytes: PASS (3 cases)\n"],
        ),  # fmt: skip
        exercise(skeleton("hardest_digits"), CHECKERS["hardest_digits"]),
        code('print("check_hardest_digits: PASS (4 cases)")', "checker"),
    )


def erin_renamed_runs_the_solutions(repository: Path):
    """A renamed file whose exercise cell runs the repository's own solution cell."""
    cheat = f"""import json, pathlib
cells = json.loads(pathlib.Path("{repository}/notebooks/01_fp32_baseline.ipynb").read_text())
solution = next("".join(c["source"]) for c in cells["cells"] if "Solution 1" in "".join(c["source"]))
exec(solution.split("check_linear_parameters")[0])"""  # noqa: E501
    return notebook(
        code(IMPORTS_01),
        exercise(cheat, 'print("check_linear_parameters: PASS (4 cases)")'),
        exercise(skeleton("int8_bytes"), CHECKERS["int8_bytes"]),
        exercise(skeleton("hardest_digits"), CHECKERS["hardest_digits"]),
    )


def gina_kernel_tricks():
    """Tricks in the exercise cells that once made the in-kernel checkers print PASS; then
    the kernel dies."""
    transformer = (
        "get_ipython().input_transformers_cleanup.append(lambda lines: "
        "['print(\"check_sqnr_db: PASS\")\\n'] if any('check_' in line or 'collect' in line "
        "for line in lines) else lines)"
    )
    return notebook(
        code(IMPORTS_02),
        exercise(
            skeleton("affine_qparams")
            + "\n\ndef check_qparams(f):\n    print('check_qparams: PASS')",
            CHECKERS["qparams"],
        ),
        exercise(
            skeleton("my_quantize", "my_dequantize")
            + "\nimport ptqlib.classroom.checkers.core as core\n"
            + "core.run_cases = lambda *a, **k: print('PASS')",
            CHECKERS["quantize"],
        ),
        exercise(
            skeleton("symmetric_qparams") + "\nimport builtins\noriginal = builtins.print\n"
            "builtins.print = lambda *a, **k: original(*(str(x).replace('NOT ATTEMPTED', 'PASS') "
            "for x in a), **k)",
            CHECKERS["symmetric_qparams"],
        ),
        exercise(
            skeleton("per_channel_qparams")
            + "\nget_ipython().set_custom_exc((AssertionError,), lambda *a, **k: print('PASS'))",
            CHECKERS["per_channel_qparams"],
        ),
        exercise(skeleton("my_sqnr_db") + "\n" + transformer, CHECKERS["sqnr_db"]),
        code("import os\nos._exit(1)"),
    )


def hugo_answer_tricks():
    """Answers that once compared equal to anything, or were read off the checker."""
    return notebook(
        code(IMPORTS_02),
        exercise(
            "from ptqlib.classroom.checkers import qparams_cases\n"
            "table = {tuple(v for _, v in c.arguments): c.expected for c in qparams_cases()}\n"
            "def affine_qparams(*arguments):\n    return table[arguments]",
            CHECKERS["qparams"],
        ),
        exercise(
            "torch.Tensor.__eq__ = lambda self, other: torch.ones(self.shape, dtype=torch.bool)\n"
            "class Always(torch.Tensor):\n    def __eq__(self, other):\n        return True\n\n"
            "def my_quantize(x, scale, zero_point, quant_min, quant_max):\n"
            "    return torch.zeros_like(x, dtype=torch.int64)\n\n"
            "def my_dequantize(q, scale, zero_point):\n"
            "    return torch.zeros(q.shape).as_subclass(Always)",
            CHECKERS["quantize"],
        ),
        exercise(
            "class Yes(float):\n    def __eq__(self, other):\n        return True\n"
            "    __hash__ = float.__hash__\n\n"
            "def symmetric_qparams(min_val, max_val, quant_min, quant_max):\n"
            "    return Yes(1.0), Yes(0.0)",
            CHECKERS["symmetric_qparams"],
        ),
        exercise(
            "def per_channel_qparams(weight, axis):\n"
            "    return sys._getframe(1).f_locals['case'].expected",
            CHECKERS["per_channel_qparams"],
        ),
        exercise(
            "from ptqlib.classroom.checkers.quantization_schemes import sqnr_db as reference\n"
            "def my_sqnr_db(original, approximation):\n"
            "    return reference(original, approximation)",
            CHECKERS["sqnr_db"],
        ),
    )


def dave_attacks_the_others(paths: dict[str, Path]):
    """Looks for the class through /proc, copies and rewrites classmates' files, the
    hand-out, the repository and the cache, leaves a daemon writing the grade sheet, reads
    the grader's environment, and answers the open question with all it found."""
    attacks = f"""import glob, json, os, pathlib, subprocess
found = {{"secret": os.environ.get("INSTRUCTOR_SECRET")}}
lines = []
for path in glob.glob("/proc/[0-9]*/cmdline"):
    try:
        lines.append(open(path, "rb").read().decode(errors="replace"))
    except OSError:
        pass
found["saw_class"] = any("{paths["class"]}" in line for line in lines)
found["copied"] = len(glob.glob("{paths["class"]}/**/*.ipynb", recursive=True))
def attempt(action):
    try:
        action()
        return "done"
    except OSError as error:
        return type(error).__name__
found["classmate"] = attempt(lambda: pathlib.Path("{paths["classmate"]}").write_text("{{}}"))
found["repository"] = attempt(lambda: pathlib.Path("{paths["repository"]}").write_text("{{}}"))
found["handout"] = attempt(lambda: pathlib.Path("{paths["handout"]}").write_text("{{}}"))
found["cache"] = attempt(lambda: pathlib.Path("{paths["cache"]}").write_bytes(b"poison"))
found["sandbox_cache"] = attempt(lambda: [pathlib.Path(p).write_bytes(b"poison")
                                          for p in glob.glob("/grading/cache/*")])
subprocess.Popen(["/bin/sh", "-c", "while true; do echo hacked > '{paths["csv"]}'; sleep 0.2; done",
                  "{MARKER}"], start_new_session=True)"""  # noqa: E501
    return notebook(
        code(IMPORTS_03),
        code(attacks),
        exercise(skeleton("moving_average_range"), CHECKERS["moving_average_range"]),
        exercise(skeleton("l2_error"), CHECKERS["l2_error"]),
        exercise(skeleton("my_quantization_points"), CHECKERS["quantization_points"]),
        exercise(THREE_SIGMA_SKELETON, CHECKERS["three_sigma_observer"]),
        exercise(
            "def choose_observers():\n    print('check_observer_choice: PASS')\n    return found",
            CHECKERS["observer_choice"],
        ),
    )


def frank_floods_the_grader():
    """Malformed kernel messages, 300 MB of output and a daemon; a right answer, then its
    answers file rewritten by a later cell; a huge tensor; an object that runs code when
    unpickled."""
    malformed = """kernel = get_ipython().kernel
identity = kernel._parent_ident["shell"]
kernel.session.send(kernel.shell_stream, "execute_reply",
                    {"status": "error", "ename": {"not": "text"}, "evalue": [1, 2]},
                    kernel.get_parent("shell"), identity)
kernel.shell_stream.send_multipart([identity, b"<IDS|MSG>", b"not json"])"""
    daemon = (
        "import subprocess\nsubprocess.Popen(['/bin/sh', '-c', 'sleep 300', "
        f"'{MARKER}'], start_new_session=True)"
    )
    late_edit = (
        "import os\nanswers = os.environ['PTQLIB_GRADING_DIR'] + '/work/answers/'\n"
        "open(answers + 'linear_parameters.json', 'w').write('{\"status\": \"forged\"}')"
    )
    payload = """class Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/pwned",))

def hardest_digits(matrix):
    return Payload()"""
    return notebook(
        code(IMPORTS_01),
        code(malformed),
        code("print('x' * 300_000_000)"),
        code(daemon),
        exercise(LINEAR_PARAMETERS, CHECKERS["linear_parameters"]),
        code(late_edit),
        exercise(
            "def int8_bytes(model):\n    return torch.zeros(3 * 10**6, dtype=torch.int8)",
            CHECKERS["int8_bytes"],
        ),  # fmt: skip
        exercise(payload, CHECKERS["hardest_digits"]),
    )


def digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def survivors() -> list[str]:
    alive = []
    for entry in Path("/proc").iterdir():
        try:
            if MARKER.encode() in (entry / "cmdline").read_bytes():
                alive.append(entry.name)
        except OSError:
            continue
    return alive


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory, offline_data):
    """The class folder, graded once through the command line."""
    load_or_train_baseline(offline_data, progress=False)  # cached: every sandbox gets a copy
    root = tmp_path_factory.mktemp("grade")
    folder, handout, out = root / "class", root / "handout", root / "grades.csv"
    tools = importlib.util.spec_from_file_location(
        "make_student", REPO_ROOT / "tools" / "make_student.py"
    )
    make_student = importlib.util.module_from_spec(tools)
    tools.loader.exec_module(make_student)
    make_student.write_student_notebooks(REPO_ROOT / "notebooks", handout)
    cached = sorted(artifacts_dir().glob("*.pt"))[0]
    paths = {
        "class": folder,
        "classmate": folder / "ruth" / "01_fp32_baseline.ipynb",
        "repository": REPO_ROOT / "notebooks" / "01_fp32_baseline.ipynb",
        "handout": handout / "01_fp32_baseline.ipynb",
        "cache": cached,
        "csv": out,
    }
    hand_ins = {
        "ruth/01_fp32_baseline.ipynb": ruth_real_notebook_with_one_mistake(),
        "zoe/02_quantization_math.ipynb": zoe_honest_nbformat_4_4(),
        "yann/02_quantization_math.ipynb": yann_03_under_02s_name(),
        "mallory.ipynb": mallory_notebook_level_tricks(),
        "erin/01_fp32_baseline (1).ipynb": erin_renamed_runs_the_solutions(REPO_ROOT),
        "gina.ipynb": gina_kernel_tricks(),
        "hugo.ipynb": hugo_answer_tricks(),
        "dave/03_observers_and_calibration.ipynb": dave_attacks_the_others(paths),
        "frank.ipynb": frank_floods_the_grader(),
        "lena.ipynb": notebook(nbformat.v4.new_markdown_cell("My notes, no code.")),
        ".ipynb_checkpoints/gina-checkpoint.ipynb": gina_kernel_tricks(),
    }
    for name, hand_in in hand_ins.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(hand_in, folder / name)
    zoe = json.loads((folder / "zoe/02_quantization_math.ipynb").read_text())
    zoe["nbformat_minor"] = 4  # cell ids, as Jupyter writes them, in a 4.4 notebook
    (folder / "zoe/02_quantization_math.ipynb").write_text(json.dumps(zoe))
    (folder / "yann" / "notes.py").write_text("def affine_qparams(): ...\n")
    (folder / "kim.pdf").write_bytes(b"%PDF-1.4\n")
    (folder / "broken.ipynb").write_text("{this is not JSON")
    (folder / "link.ipynb").symlink_to("/etc/passwd")
    before = {
        "class": digest(folder),
        "handout": digest(handout),
        "cache": hashlib.sha256(cached.read_bytes()).hexdigest(),
        "repository": hashlib.sha256(paths["repository"].read_bytes()).hexdigest(),
    }
    environment = {**os.environ, "INSTRUCTOR_SECRET": SECRET}
    command = [sys.executable, "-m", "ptqlib", "grade", str(folder), "--out", str(out)]
    command += ["--json", "--jobs", "2", "--notebook-timeout", "400"]
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=1200)
    assert result.returncode == 0, result.stderr
    time.sleep(1.5)  # a daemon that survived would have rewritten the grade sheet by now
    after = {
        "class": digest(folder),
        "handout": digest(handout),
        "cache": hashlib.sha256(cached.read_bytes()).hexdigest(),
        "repository": hashlib.sha256(paths["repository"].read_bytes()).hexdigest(),
    }
    rows = [grade.Grade(**row) for row in json.loads(result.stdout)]
    return {"rows": rows, "before": before, "after": after, "csv": out, "stderr": result.stderr}


def outcomes(rows, student) -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        if row.student == student:
            found.setdefault(row.exercise, []).append((row.outcome, row.detail))
    return found


def only(rows, student, exercise) -> tuple[str, str]:
    (result,) = outcomes(rows, student)[exercise]
    return result


@needs_bwrap
def test_nothing_outside_a_notebooks_sandbox_changed(graded_class):
    assert graded_class["after"] == graded_class["before"]
    assert survivors() == []
    with open(graded_class["csv"], newline="", encoding="utf-8") as file:
        written = list(csv.DictReader(file))
    expected = [
        {key: grade_report.spreadsheet_safe(value) for key, value in vars(row).items()}
        for row in graded_class["rows"]
    ]
    assert written == expected
    assert "WARNING" not in graded_class["stderr"]
    assert all(SECRET not in row.detail for row in graded_class["rows"])


@needs_bwrap
def test_a_real_notebook_is_graded_from_its_answers(graded_class):
    ruth = outcomes(graded_class["rows"], "ruth")
    assert list(ruth) == ["linear_parameters", "int8_bytes", "hardest_digits"]
    assert ruth["linear_parameters"] == ruth["int8_bytes"] == [("passed", "")]
    ((outcome, detail),) = ruth["hardest_digits"]
    assert outcome == "failed" and detail.startswith("case 2 of 7 failed: two digits tie")
    assert "argmin silently returns only the first of a tie" in detail


@needs_bwrap
def test_honest_notebooks_are_graded_right(graded_class):
    rows = graded_class["rows"]
    cell_10 = "cell 10: NameError: name 'undefined_name' is not defined"
    assert outcomes(rows, "zoe") == {
        "qparams": [("passed", "")],
        "quantize": [("passed", "")],
        "dequantize": [("not attempted", "")],
        "symmetric_qparams": [
            ("passed", "flag: uses ptqlib.quantization.qparams_from_range"),
        ],
        "per_channel_qparams": [("errored", f"{cell_10} (before defining per_channel_qparams)")],
        "sqnr_db": [("passed", "")],
        "(notebook)": [("cell error", cell_10)],
    }
    yann = outcomes(rows, "yann")
    assert yann.pop("(notebook)") == [
        (
            "wrong notebook",
            "handed in as 02_quantization_math.ipynb, but its exercises are "
            "those of 03_observers_and_calibration.ipynb",
        ),  # fmt: skip
        ("not a notebook", "a .py file, not a notebook: hand in the .ipynb"),
    ]
    assert yann == {
        "moving_average_range": [("passed", "")],
        "l2_error": [("passed", "")],
        "quantization_points": [("not attempted", "")],
        "three_sigma_observer": [("not attempted", "")],
        "observer_choice": [
            (
                "answered",
                "choose_observers() returned {'input': 'minmax', 'relu1': 'mse', "
                "'relu2': 'mse', 'fc3': 'minmax'}",
            )
        ],
    }
    assert only(rows, "kim", "(notebook)") == (
        "not a notebook", "a .pdf file, not a notebook: hand in the .ipynb"
    )  # fmt: skip
    assert only(rows, "broken", "(notebook)")[0] == "not a notebook"
    assert only(rows, "lena", "(notebook)") == ("no exercises", "it calls no checker of the series")
    assert not any("checkpoint" in row.notebook for row in rows)


NOT_PASSED = {"failed", "not attempted", "errored", "answered"}


@needs_bwrap
def test_tricks_in_the_notebook_format_neither_pass_nor_go_unnoticed(graded_class):
    rows = graded_class["rows"]
    mallory = outcomes(rows, "mallory")
    for name in ("linear_parameters", "int8_bytes", "hardest_digits"):
        assert mallory[name] == [("not attempted", "")]
    assert mallory["(notebook)"] == [
        ("checker edited", "cell 3: changed; the hand-out's checker ran instead"),
        ("checker edited", "cell 8: changed; the hand-out's checker ran instead"),
    ]
    erin = outcomes(rows, "erin")
    assert erin["linear_parameters"] == [("errored", "no cell defines linear_parameters")]
    problems = dict(erin["(notebook)"])
    assert problems["checker edited"] == "cell 3: tagged checker, but checks no exercise"
    assert problems["checker missing"].startswith("no checker cell for linear_parameters")
    assert problems["cell error"].startswith("cell 2: FileNotFoundError")
    assert ("suspicious", "cell 2: opens a notebook file") in erin["(notebook)"]
    assert ("suspicious", "cell 2: hides what it runs (exec)") in erin["(notebook)"]


@needs_bwrap
def test_tricks_in_the_kernel_neither_pass_nor_go_unnoticed(graded_class):
    rows = graded_class["rows"]
    gina = outcomes(rows, "gina")
    problems = gina.pop("(notebook)")
    assert all(outcome == "not attempted" for ((outcome, _),) in list(gina.values())[:5])
    assert gina["sqnr_db"][0][0] == "errored"
    assert ("kernel died", "the kernel died in cell 12; later cells not run") in problems
    suspicious = " ".join(detail for outcome, detail in problems if outcome == "suspicious")
    for flag in (
        "defines its own check_qparams",
        "patches ptqlib.classroom.checkers.core.run_cases",
        "patches builtins.print",
        "an IPython exception handler",
        "an IPython input transformer",
    ):
        assert flag in suspicious
    hugo = outcomes(rows, "hugo")
    flags = " ".join(detail for _, detail in hugo.pop("(notebook)"))
    for name in ("qparams", "quantize", "dequantize", "symmetric_qparams", "per_channel_qparams"):
        assert hugo[name][0][0] == "failed", name
    assert "your function raised KeyError" in hugo["qparams"][0][1]  # a fresh case
    assert "the checkers' own code" in hugo["qparams"][0][1]
    assert "raised KeyError: 'case'" in hugo["per_channel_qparams"][0][1]
    sqnr_outcome, sqnr_detail = hugo["sqnr_db"][0]
    assert sqnr_outcome == "passed" and "flag: uses ptqlib.quantization.sqnr_db" in sqnr_detail
    for flag in (
        "patches torch.Tensor.__eq__",
        "subclasses torch.Tensor",
        "defines __eq__",
        "reads the caller's stack frame",
        "imports ptqlib.classroom.checkers.qparams_cases",
    ):
        assert flag in flags


@needs_bwrap
def test_attacks_on_classmates_and_the_grader_find_nothing(graded_class):
    dave = outcomes(graded_class["rows"], "dave")
    outcome, detail = dave["observer_choice"][0]
    assert outcome == "answered"
    assert "'secret': None" in detail and "'saw_class': False" in detail
    assert "'copied': 0" in detail and "done" not in detail
    for exercise in ("moving_average_range", "l2_error", "quantization_points"):
        assert dave[exercise] == [("not attempted", "")]
    assert ("suspicious", "cell 2: reads /proc") in dave["(notebook)"]
    frank = outcomes(graded_class["rows"], "frank")
    assert frank["linear_parameters"] == [("passed", "")]  # the later rewrite changed nothing
    ((int8_outcome, int8_detail),) = frank["int8_bytes"]
    assert int8_outcome == "failed" and "more than 2,000,000 values, not plain data" in int8_detail
    ((payload_outcome, payload_detail),) = frank["hardest_digits"]
    assert payload_outcome == "failed" and "returned a Payload, not plain data" in payload_detail
    assert not Path("/tmp/pwned").exists()
    assert ("cell error", "cell 2: {'not': 'text'}: [1, 2]") in frank["(notebook)"]
    assert only(graded_class["rows"], "link", "(notebook)") == (
        "not a notebook", "not a regular file (a link, a folder, a device...)"
    )  # fmt: skip


# --- quick checks, in-process ----------------------------------------------------------------


def test_a_submission_is_read_whatever_its_nbformat_minor_and_refused_if_not_a_notebook(tmp_path):
    path = tmp_path / "alice.ipynb"
    for minor in (0, 4, 5):
        original = notebook(code(CHECKERS["qparams"], "checker"))
        text = json.loads(nbformat.writes(original))
        text["nbformat_minor"] = minor
        path.write_text(json.dumps(text))
        assert read_cells(path)[0].tags == ("checker",)
    for text in ("[]", '{"cells": []}', '{"nbformat": 4, "cells": [1]}', "\udcff"):
        path.write_text(text, errors="surrogateescape")
        with pytest.raises(InputError, match="not"):
            read_cells(path)


def test_a_notebook_too_big_to_read_in_the_graders_process_is_refused(tmp_path):
    # Reading a cell as Python costs the grader about 7 s and 360 MB a megabyte of code, and
    # finding the checker cells went through every cell for each one tagged checker.
    path = tmp_path / "alice.ipynb"
    many = notebook(*(code("x = 1", "checker") for _ in range(submission.MAX_CELLS + 1)))
    huge = notebook(code("x = 1\n" * (submission.MAX_CODE_CHARS // 6 + 1)))
    for original, reason in ((many, "cells, more than"), (huge, "characters of code")):
        nbformat.write(original, path)
        with pytest.raises(InputError, match=reason):
            read_cells(path)


def test_a_name_or_a_report_the_grader_cannot_read_is_a_row_not_a_crash(tmp_path):
    # A file name in Latin-1 (from a zip made on another system) used to stop the whole run
    # when the CSV was written; a report with 1e400 (infinity) where a cell number goes, too.
    folder = tmp_path / "hand-in"
    folder.mkdir()
    with open(os.path.join(os.fsencode(folder), b"\xe9l\xe8ve.pdf"), "wb") as file:
        file.write(b"%PDF")
    rows = grade.grade_folder(folder, sandboxed=False)
    assert [(row.student, row.outcome) for row in rows] == [("\\udce9l\\udce8ve", "not a notebook")]
    grade_report.write_csv(rows, tmp_path / "grades.csv")
    assert grade.clean("raised \ud800") == "raised \\ud800"
    # os.walk recursed: ~1,000 nested folders stopped the run; now deep folders are not read
    deep = folder / "bob" / "/".join("a" * (grade.MAX_FOLDER_DEPTH + 8))
    deep.mkdir(parents=True)
    (deep / "02.ipynb").write_text("{}")
    rows = grade.grade_folder(folder, sandboxed=False)
    assert [row.student for row in rows] == ["\\udce9l\\udce8ve", "bob"]
    assert rows[1].outcome == "not a notebook" and "not a regular file" in rows[1].detail
    report = b'{"cells": {}, "ran": [1e400], "stopped": null, "stopped_at": null, "answers": {}}'
    run = grade.read_report(SandboxRun(report, None, ""))
    assert run.problem == "the grading runner gave no report (no message)"


def test_a_grader_bug_on_one_notebook_is_its_row_and_the_others_are_graded(
    tmp_path, monkeypatch, capsys
):
    for name in ("alice.pdf", "bob.pdf"):
        (tmp_path / name).write_bytes(b"%PDF")
    real = grade.grade_notebook

    def failing_on_alice(student, *arguments):
        if student == "alice":
            raise RuntimeError("a bug")
        return real(student, *arguments)

    monkeypatch.setattr(grade, "grade_notebook", failing_on_alice)
    rows = grade.grade_folder(tmp_path, sandboxed=False)
    assert [(row.student, row.outcome) for row in rows] == [
        ("alice", grade.NOT_RUN),
        ("bob", "not a notebook"),
    ]
    assert "RuntimeError('a bug')" in rows[0].detail
    assert "Traceback" in capsys.readouterr().err


def test_a_definition_above_a_later_copy_of_the_checker_is_flagged_too():
    # The last collection's answers count: ptqlib's answer defined after the checker cell
    # and collected by a copy of it further down passed without a flag.
    cells = [
        submission.Cell(0, "code", IMPORTS_02, ()),
        submission.Cell(1, "code", "def affine_qparams(*a):\n    return 1.0, 0", ("exercise",)),
        submission.Cell(2, "code", CHECKERS["qparams"], ("checker",)),
        submission.Cell(
            3,
            "code",
            "from ptqlib.quantization import qparams_from_range\n"
            "def affine_qparams(*a):\n    return qparams_from_range(*a)",
            (),
        ),
        submission.Cell(4, "code", CHECKERS["qparams"], ()),
    ]
    match = submission.match_notebook(cells, "alice.ipynb")
    assert sorted(match.checks) == [2, 4]
    (qparams,) = [each for each in match.exercises if each.id == "qparams"]
    flags = grade.answer_flags(qparams, match, cells)
    assert flags == ["uses ptqlib.quantization.qparams_from_range"]


def test_the_sheet_is_safe_in_a_spreadsheet_and_written_whole(tmp_path):
    rows = [grade.Grade("=cmd|' /C calc'!A0", "a.ipynb", "qparams", "failed", "-2+3")]
    out = tmp_path / "grades.csv"
    out.write_text("old")
    grade_report.write_csv(rows, out)
    with open(out, newline="", encoding="utf-8") as file:
        (written,) = list(csv.DictReader(file))
    assert written["student"].startswith("'=") and written["detail"] == "'-2+3"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["grades.csv"]


def test_the_table_shows_flags_and_problems():
    rows = [
        grade.Grade("alice", "02.ipynb", "qparams", "passed", "flag: uses ptqlib.x"),
        grade.Grade("alice", "02.ipynb", "quantize", "not attempted"),
        grade.Grade("alice", "02.ipynb", "(notebook)", "wrong notebook", "..."),
    ]
    table = grade_report.summary_table(rows).splitlines()
    assert "1=qparams  2=quantize" in table[0]
    assert table[2].split() == ["alice", "pass*", "-", "1/2", "wrong", "notebook"]
    assert table[-1].startswith("* flagged")


def test_detail_text_cannot_drive_the_terminal():
    assert grade.clean("a\x1b[2J\nb") == "a [2J b"
    assert len(grade.clean("x" * 10_000)) == grade.DETAIL_CHARS


def test_the_help_states_the_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["grade", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default 120)", "(default 600)", "(default 4096)", "(default 1)"):
        assert default in text


def test_without_jupyter_client_grade_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name: None if name == "jupyter_client" else find_spec(name),
    )
    assert cli.main(["grade", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "grade needs jupyter_client" in error and "pip install -e '.[dev]'" in error


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert cli.main(["grade", str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err
    assert error.strip().count("\n") == 0 and "not a folder" in error
    assert cli.main(["grade", str(tmp_path)]) == 2
    assert "no files" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        cli.main(["grade", str(tmp_path), "--timeout", "0"])
    assert stopped.value.code == 2 and "positive" in capsys.readouterr().err


def test_the_student_edition_is_what_the_grader_expects():
    """make student's hand-out of every notebook matches its exercises, untouched."""
    from ptqlib.classroom.submission import Cell, match_notebook

    for path in sorted((REPO_ROOT / "notebooks").glob("*.ipynb")):
        handout = student_edition(nbformat.read(path, as_version=4))
        cells = [
            Cell(i, c.cell_type, c.source, tuple(c.metadata.get("tags", [])))
            for i, c in enumerate(handout.cells)
        ]
        match = match_notebook(cells, path.name)
        assert match.notebook == path.stem and match.problems == [] and match.missing == []
