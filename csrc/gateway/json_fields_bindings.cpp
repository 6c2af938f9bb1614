// Test-only bindings of json_fields.h and blake2b.h, so tests/gateway/test_native_json.py can
// compare them with the Python path: scan_request, scan_usage, blake2b, rendezvous_score.
#include "json_fields_bindings.h"

#include <string_view>

#include "blake2b.h"
#include "json_fields.h"

namespace py = pybind11;

namespace {

std::string_view view_of(const py::bytes& data) {
  char* bytes = nullptr;
  Py_ssize_t size = 0;
  if (PyBytes_AsStringAndSize(data.ptr(), &bytes, &size) != 0) throw py::error_already_set();
  return {bytes, static_cast<size_t>(size)};
}

py::object optional_int(bool has, int64_t value) { return has ? py::object(py::int_(value)) : py::object(py::none()); }

py::object scan_request(const py::bytes& body, int64_t affinity_min_chars) {
  llmaas::gw::RequestFields fields;
  if (!llmaas::gw::scan_request(view_of(body), affinity_min_chars, &fields)) return py::none();
  py::dict out;
  out["model"] = py::str(fields.model);
  out["stream"] = fields.stream;
  out["include_usage"] = fields.include_usage;
  out["max_tokens"] = optional_int(fields.has_max_tokens, fields.max_tokens);
  out["max_completion_tokens"] = optional_int(fields.has_max_completion_tokens, fields.max_completion_tokens);
  out["n"] = optional_int(fields.has_n, fields.n);
  out["prompt_chars"] = fields.prompt_chars;
  out["affinity_key"] = fields.has_affinity
      ? py::object(py::bytes(reinterpret_cast<const char*>(fields.affinity_key), sizeof(fields.affinity_key)))
      : py::object(py::none());
  return out;
}

py::object scan_usage(const py::bytes& body) {
  llmaas::gw::UsageCounts counts;
  if (!llmaas::gw::scan_usage(view_of(body), &counts)) return py::none();
  py::dict out;
  out["prompt_tokens"] = counts.prompt_tokens;
  out["cached_tokens"] = counts.cached_tokens;
  out["completion_tokens"] = counts.completion_tokens;
  out["reasoning_tokens"] = counts.reasoning_tokens;
  return out;
}

py::bytes blake2b(const py::bytes& data, int digest_size) {
  if (digest_size < 1 || digest_size > 64) throw py::value_error("digest_size must be 1..64");
  const std::string_view bytes = view_of(data);
  uint8_t digest[64];
  llmaas::gw::blake2b(bytes.data(), bytes.size(), digest, static_cast<size_t>(digest_size));
  return py::bytes(reinterpret_cast<const char*>(digest), static_cast<size_t>(digest_size));
}

py::bytes rendezvous_score(const py::bytes& key, const py::bytes& host_name) {
  const std::string_view key_bytes = view_of(key);
  if (key_bytes.size() != 16) throw py::value_error("key must be 16 bytes");
  uint8_t score[8];
  llmaas::gw::rendezvous_score(reinterpret_cast<const uint8_t*>(key_bytes.data()), view_of(host_name), score);
  return py::bytes(reinterpret_cast<const char*>(score), sizeof(score));
}

}  // namespace

void bind_json_fields(py::module_& m) {
  m.def("scan_request", &scan_request, py::arg("body"), py::arg("affinity_min_chars"),
        "The routing fields of a request body as a dict (affinity_key: bytes or None), or None when the "
        "native lane leaves the body to the Python path.");
  m.def("scan_usage", &scan_usage, py::arg("body"),
        "The usage counts of an answer body as a dict, or None where the Python path finds no usage.");
  m.def("blake2b", &blake2b, py::arg("data"), py::arg("digest_size"));
  m.def("rendezvous_score", &rendezvous_score, py::arg("key"), py::arg("host_name"));
}
