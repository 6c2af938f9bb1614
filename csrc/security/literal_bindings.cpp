// Literals(literals, whole_word).find(text, cap) -> (starts, word_starts): for each literal that
// occurs in `text`, its start offsets (a list, or None past `cap` of them); and for each
// whole-word literal with a whole-word occurrence, those offsets likewise. Keys are the very str
// objects the automaton was built from, so a scan creates no strings. See literal_automaton.h.
#include <pybind11/stl.h>

#include "bindings.h"
#include "literal_automaton.h"
#include "py_text.h"

namespace py = pybind11;

namespace llmaas::security {

namespace {

PyObject* offsets(const uint32_t* starts, uint32_t count, uint32_t cap) {
  if (count > cap) Py_RETURN_NONE;
  return int_list(starts, count);
}

void put(const py::dict& into, const py::str& key, PyObject* value) {
  const int failed = PyDict_SetItem(into.ptr(), key.ptr(), value);
  Py_DECREF(value);
  if (failed != 0) throw py::error_already_set();
}

std::vector<std::u32string> all_code_points(const std::vector<py::str>& literals) {
  std::vector<std::u32string> out;
  out.reserve(literals.size());
  for (const auto& s : literals) out.push_back(code_points(s));
  return out;
}

class Literals {
 public:
  Literals(const std::vector<py::str>& literals, const std::vector<bool>& whole_word)
      : keys_(literals), automaton_(all_code_points(literals), whole_word) {}

  py::tuple find(const py::str& text, uint32_t cap) const {
    const Occurrences occ = with_code_units(
        text, [&](const auto* data, size_t n) { return automaton_.find(data, n, cap); });
    py::dict starts;
    py::dict word_starts;
    for (uint32_t id : occ.seen) {
      put(starts, keys_[id], offsets(occ.starts_of(id), occ.count[id], cap));
      if (occ.word_count[id] > 0) put(word_starts, keys_[id], offsets(occ.word_starts_of(id), occ.word_count[id], cap));
    }
    return py::make_tuple(starts, word_starts);
  }

  size_t size() const { return automaton_.size(); }

 private:
  std::vector<py::str> keys_;
  LiteralAutomaton automaton_;
};

}  // namespace

void bind_literals(py::module_& m) {
  py::class_<Literals>(m, "Literals")
      .def(py::init<const std::vector<py::str>&, const std::vector<bool>&>(), py::arg("literals"),
           py::arg("whole_word"))
      .def("find", &Literals::find, py::arg("text"), py::arg("cap"))
      .def("__len__", &Literals::size);
}

}  // namespace llmaas::security
