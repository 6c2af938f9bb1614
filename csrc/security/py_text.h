// Helpers shared by the bindings: reading a Python str in place (CPython stores 1, 2 or 4 bytes a
// code point, one width for the whole string) and building the small lists the scans return.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

namespace llmaas::security {

// Calls f(const Char* data, size_t length) with the string's own storage.
template <typename F>
auto with_code_units(const pybind11::str& s, F&& f) {
  PyObject* o = s.ptr();
#if PY_VERSION_HEX < 0x030C0000
  if (PyUnicode_READY(o) != 0) throw pybind11::error_already_set();  // a legacy string (3.11)
#endif
  const size_t n = static_cast<size_t>(PyUnicode_GET_LENGTH(o));
  const void* data = PyUnicode_DATA(o);
  switch (PyUnicode_KIND(o)) {
    case PyUnicode_1BYTE_KIND: return f(static_cast<const uint8_t*>(data), n);
    case PyUnicode_2BYTE_KIND: return f(static_cast<const uint16_t*>(data), n);
    default: return f(static_cast<const uint32_t*>(data), n);
  }
}

inline std::u32string code_points(const pybind11::str& s) {
  return with_code_units(s, [](const auto* data, size_t n) { return std::u32string(data, data + n); });
}

// A new list of Python ints (a new reference).
inline PyObject* int_list(const uint32_t* values, size_t n) {
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(n));
  if (list == nullptr) throw pybind11::error_already_set();
  for (size_t i = 0; i < n; ++i) {
    PyObject* value = PyLong_FromUnsignedLong(values[i]);
    if (value == nullptr) {
      Py_DECREF(list);
      throw pybind11::error_already_set();
    }
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), value);
  }
  return list;
}

inline PyObject* int_list(const std::vector<uint32_t>& values) { return int_list(values.data(), values.size()); }

}  // namespace llmaas::security
