// See tenancy_bindings.cpp.
#pragma once

#include <pybind11/pybind11.h>

void bind_tenancy(pybind11::module_& m);
