// Test-only Python bindings of the native lane's JSON scanner and BLAKE2b (json_fields_bindings.cpp).
#pragma once

#include <pybind11/pybind11.h>

void bind_json_fields(pybind11::module_& m);
