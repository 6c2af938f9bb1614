// Tensors cross the bindings as integers (`tensor.data_ptr()`); this turns one back into a pointer.
#pragma once

#include <cstdint>

namespace llmaas {

template <typename T>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

}  // namespace llmaas
