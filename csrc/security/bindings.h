// The two halves of security._native's bindings (module.cpp puts them together).
#pragma once

#include <pybind11/pybind11.h>

namespace llmaas::security {

void bind_literals(pybind11::module_& m);  // literal_bindings.cpp
void bind_fold(pybind11::module_& m);      // fold_bindings.cpp

}  // namespace llmaas::security
