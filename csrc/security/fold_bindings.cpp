// Folder().teach(code_points, folds, plains) once, then .fold(text) -> (folded, plain, at, ends):
// the fold table of fold_table.h, taught by security/normalize.py.
#include <pybind11/stl.h>

#include "bindings.h"
#include "fold_table.h"
#include "py_text.h"

namespace py = pybind11;

namespace llmaas::security {

namespace {

class Folder {
 public:
  py::tuple fold(const py::str& text) const {
    const Folding f = with_code_units(text, [&](const auto* data, size_t n) { return table_.fold(data, n); });
    PyObject* folded = PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, f.text.data(),
                                                 static_cast<Py_ssize_t>(f.text.size()));
    if (folded == nullptr) throw py::error_already_set();
    return py::make_tuple(py::reinterpret_steal<py::str>(folded), f.plain,
                          py::reinterpret_steal<py::list>(int_list(f.at)),
                          py::reinterpret_steal<py::list>(int_list(f.ends)));
  }

  void teach(const std::vector<uint32_t>& code_points, const std::vector<py::str>& folds,
             const std::vector<bool>& plains) {
    if (folds.size() != code_points.size() || plains.size() != code_points.size()) {
      throw std::invalid_argument("one fold and one flag per code point");
    }
    for (size_t i = 0; i < code_points.size(); ++i) table_.learn(code_points[i], code_points_of(folds[i]), plains[i]);
  }

 private:
  static std::u32string code_points_of(const py::str& s) { return code_points(s); }

  FoldTable table_;
};

}  // namespace

void bind_fold(py::module_& m) {
  py::class_<Folder>(m, "Folder")
      .def(py::init<>())
      .def("fold", &Folder::fold, py::arg("text"))
      .def("teach", &Folder::teach, py::arg("code_points"), py::arg("folds"), py::arg("plains"));
}

}  // namespace llmaas::security
