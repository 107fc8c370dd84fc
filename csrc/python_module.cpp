// The Python module convformer_fast._C. It binds nothing: importing it only has to load the
// library so that the static TORCH_LIBRARY registrations run (ops are reached through
// torch.ops.convformer_fast, which torch.compile and torch.export understand).
// Built by setup.py only; CMake builds the same ops as a plain C++ library.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
