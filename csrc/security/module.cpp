// security._native: prompt security's one-pass scans for security/literals.py (the literal
// automaton, literal_automaton.h) and security/normalize.py (the fold table, fold_table.h). A
// plain pybind11 module (no torch, no OpenMP): the gateway process imports it with security.
#include "bindings.h"

PYBIND11_MODULE(_native, m) {
  m.doc() = "Prompt security's native scans: literal occurrences and the fold, one pass each.";
  llmaas::security::bind_literals(m);
  llmaas::security::bind_fold(m);
}
