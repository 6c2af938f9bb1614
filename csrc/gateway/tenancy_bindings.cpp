// gateway._native's tenancy pieces: the shared limit table (rate_limits.h) for
// gateway/tenancy/native_limits.py, and the hashes, for their parity tests.
#include "tenancy_bindings.h"

#include <pybind11/stl.h>

#include <optional>
#include <string>

#include "audit_hash.h"
#include "lane_journal.h"
#include "lane_ledger.h"
#include "rate_limits.h"
#include "sha256.h"

namespace py = pybind11;
using llmaas::gw::HeaderValues;
using llmaas::gw::LimitState;
using llmaas::gw::LimitTable;

namespace {

LimitState& state(LimitTable& table, int index) {
  LimitState* s = table.state(index);
  if (s == nullptr) throw py::index_error("no such limit state");
  return *s;
}

py::tuple values(const HeaderValues& v) { return py::make_tuple(v[0], v[1], v[2], v[3], v[4], v[5]); }

}  // namespace

void bind_tenancy(py::module_& m) {
  py::class_<LimitTable, std::shared_ptr<LimitTable>>(m, "Limits")
      .def(py::init<>())
      .def("add", &LimitTable::add, py::arg("requests_per_minute"), py::arg("tokens_per_minute"),
           py::arg("concurrent"), py::arg("budget_eur"), py::arg("now"), py::arg("month_start"),
           py::arg("month_end"), py::arg("spent_eur"))
      // (verdict, wait_s, spent_eur, header values): verdict 0 admitted, 1 requests, 2 tokens,
      // 3 concurrency, 4 budget, 5 new month.
      .def("admit",
           [](LimitTable& t, int index, double now, int64_t tokens, double cost) {
             auto a = LimitTable::admit(state(t, index), now, tokens, cost);
             return py::make_tuple(static_cast<int>(a.verdict), a.wait_s, a.spent_eur, values(a.headers));
           })
      .def("snapshot", [](LimitTable& t, int index, double now) { return values(LimitTable::snapshot(state(t, index), now)); })
      .def("reconcile",
           [](LimitTable& t, int index, double now, int64_t reserved, int64_t used, double reserved_eur, double cost) {
             LimitTable::reconcile(state(t, index), now, reserved, used, reserved_eur, cost);
           })
      .def("new_month", [](LimitTable& t, int index, double start, double end, double spent) {
        LimitTable::new_month(state(t, index), start, end, spent);
      })
      .def("levels", [](LimitTable& t, int index) {
        LimitState& s = state(t, index);
        std::lock_guard<std::mutex> lock(s.mutex);
        return py::make_tuple(s.requests.level, s.tokens.level, s.inflight, s.reserved_eur, s.spent_eur);
      });
  m.def("reset_duration", &llmaas::gw::reset_duration);
  m.def("hmac_sha256", [](const py::bytes& key, const py::bytes& message) {
    llmaas::gw::HmacSha256 hmac{std::string_view(key)};
    uint8_t out[32];
    hmac.digest(std::string_view(message), out);
    return py::bytes(reinterpret_cast<const char*>(out), sizeof out);
  });
  // sha256.h's two compressions, against hashlib in the tests.
  m.def("sha256", [](const py::bytes& data, bool hardware) {
    llmaas::gw::Sha256 sha(hardware);
    std::string_view view(data);
    sha.update(view.data(), view.size());
    uint8_t out[32];
    sha.final(out);
    return py::bytes(reinterpret_cast<const char*>(out), sizeof out);
  }, py::arg("data"), py::arg("hardware") = true);
  m.def("sha_ni_available", &llmaas::gw::sha_ni_available);
  // lane_journal.h's frame checksum, against zlib.crc32 (journal.py's) in the tests.
  m.def("journal_crc32", [](const py::bytes& data) {
    std::string_view view(data);
    return llmaas::gw::crc32(view.data(), view.size());
  });
  m.def("sqlite_version", &llmaas::gw::sqlite_version);
  // audit_hash.h on one record; None for client is null (the lane writes no empty client).
  m.def("audit_record_hash",
        [](int64_t seq, double time, const std::string& tenant, const std::string& token_id,
           std::optional<std::string> client, const std::string& model, int64_t status, const std::string& reason,
           int64_t input_tokens, int64_t output_tokens, const std::string& request_id, const std::string& prev_hash,
           const std::string& chain) {
          llmaas::gw::AuditFields f;
          f.seq = seq;
          f.time = time;
          f.tenant = tenant;
          f.token_id = token_id;
          if (client) f.client = *client;
          f.model = model;
          f.status = status;
          f.reason = reason;
          f.input_tokens = input_tokens;
          f.output_tokens = output_tokens;
          f.request_id = request_id;
          f.prev_hash = prev_hash;
          f.chain = chain;
          std::string scratch;
          return llmaas::gw::audit_record_hash(f, &scratch);
        });
}
