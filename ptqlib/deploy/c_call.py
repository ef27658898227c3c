"""The lightest call from Python into an exported model's C (notebook 10).

At batch 1 the C kernel takes about a microsecond, so the call around it matters: ``ctypes``
converts each argument by its declared type and releases and retakes the interpreter lock,
and the checks of ``CModel.run`` (dtypes, shapes, contiguity, two ``data_ptr()`` calls) cost
more than the kernel. Two things make the call light:

- **A small CPython extension** (:data:`CALL_C`, ``METH_FASTCALL``): ``call(function,
  input, output, batch, keep)`` turns three integers into pointers and calls the forward
  function; the interpreter lock is released only for batches large enough to be worth it.
  It is compiled once per Python version into the private compile cache (it needs
  ``Python.h``; without it, :func:`extension_call` returns None and ctypes is used).
- **Pointers checked once** (``CModel.bind``): a call bound to one input and one output
  tensor checks them when bound, then only calls; the tensors are held by the bound call
  (the unused ``keep`` argument), so their memory cannot be freed under it.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import sysconfig
from collections.abc import Callable
from pathlib import Path

MODULE = "ptqlib_c_call"
# Batches from which releasing the interpreter lock (~0.1 us) is worth it.
RELEASE_LOCK_FROM = 16

CALL_C = """\
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef void (*forward_function)(const void *input, void *output, int32_t batch);

/* call(function, input, output, batch[, keep]): the addresses as Python integers; `keep`
 * (the tensors behind the addresses) is only held by the caller, never read. */
static PyObject *call(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs < 4 || nargs > 5) {
        PyErr_SetString(PyExc_TypeError, "call(function, input, output, batch[, keep])");
        return NULL;
    }
    forward_function function = (forward_function)PyLong_AsVoidPtr(args[0]);
    const void *input = PyLong_AsVoidPtr(args[1]);
    void *output = PyLong_AsVoidPtr(args[2]);
    const long batch = PyLong_AsLong(args[3]);
    if (PyErr_Occurred()) return NULL;
    if (batch < 0 || batch > INT32_MAX || !function || (batch && (!input || !output))) {
        PyErr_SetString(PyExc_ValueError, "call: a null pointer or a batch outside int32");
        return NULL;
    }
    if (batch >= RELEASE_LOCK_FROM) {
        Py_BEGIN_ALLOW_THREADS
        function(input, output, (int32_t)batch);
        Py_END_ALLOW_THREADS
    } else {
        function(input, output, (int32_t)batch);
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"call", (PyCFunction)(void (*)(void))call, METH_FASTCALL, "call a forward function"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "MODULE", NULL, -1, methods};

PyMODINIT_FUNC PyInit_MODULE(void) { return PyModule_Create(&module); }
"""


@functools.lru_cache(maxsize=1)
def extension_call() -> Callable | None:
    """The extension's ``call`` (compiled on first use), or None where ``Python.h`` is
    missing (then ``CModel`` calls through ctypes)."""
    from ptqlib.deploy.c_runtime import compile_text

    include = Path(sysconfig.get_paths()["include"])
    if not (include / "Python.h").is_file():
        return None
    text = CALL_C.replace("MODULE", MODULE).replace("RELEASE_LOCK_FROM", str(RELEASE_LOCK_FROM))
    library = compile_text(text, MODULE, ("-O2", "-I", str(include)))
    loader = importlib.machinery.ExtensionFileLoader(MODULE, str(library))
    spec = importlib.util.spec_from_file_location(MODULE, library, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module.call
