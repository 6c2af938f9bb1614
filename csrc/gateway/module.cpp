// gateway._native: the gateway's native lane (data_plane.h) for gateway/native_lane.py, and the
// lane's JSON scanner for its tests. A plain pybind11 module: no torch, no OpenMP, so the gateway
// process stays small.
#include <arpa/inet.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <map>
#include <optional>
#include <tuple>
#include <vector>
#include <stdexcept>

#include "data_plane.h"
#include "json_fields_bindings.h"
#include "tenancy_bindings.h"

namespace py = pybind11;
using llmaas::gw::DataPlane;
using llmaas::gw::PlaneConfig;

namespace {

template <typename T>
void read(const py::dict& config, const char* key, T* out) {
  if (config.contains(key)) *out = config[key].cast<T>();
}

std::unique_ptr<DataPlane> make_plane(const py::dict& c) {
  PlaneConfig config;
  read(c, "listen_fd", &config.listen_fd);
  read(c, "max_header_bytes", &config.max_header_bytes);
  read(c, "max_body_bytes", &config.max_body_bytes);
  read(c, "header_timeout_s", &config.header_timeout_s);
  read(c, "body_timeout_s", &config.body_timeout_s);
  read(c, "keepalive_timeout_s", &config.keepalive_timeout_s);
  read(c, "send_timeout_s", &config.send_timeout_s);
  read(c, "max_concurrency", &config.max_concurrency);
  read(c, "connect_timeout_s", &config.connect_timeout_s);
  read(c, "first_byte_timeout_s", &config.first_byte_timeout_s);
  read(c, "max_attempts", &config.max_attempts);
  read(c, "failure_threshold", &config.failure_threshold);
  read(c, "unavailable_headers", &config.unavailable_headers);
  read(c, "default_max_tokens", &config.default_max_tokens);
  read(c, "affinity_min_chars", &config.affinity_min_chars);
  read(c, "slack_ratio", &config.policy.slack_ratio);
  read(c, "slack_tokens", &config.policy.slack_tokens);
  read(c, "max_idle_per_host", &config.max_idle_per_host);
  read(c, "id_prefix", &config.id_prefix);
  read(c, "header_timeout_response", &config.header_timeout_response);
  read(c, "body_timeout_response", &config.body_timeout_response);
  read(c, "overload_response", &config.overload_response);
  read(c, "overload_close_response", &config.overload_close_response);
  read(c, "reasons", &config.reasons);
  if (config.listen_fd < 0) throw std::invalid_argument("listen_fd is required");
  return std::make_unique<DataPlane>(std::move(config));
}

socklen_t socket_address(const std::string& ip, int port, sockaddr_storage* storage) {
  *storage = sockaddr_storage{};
  auto* v4 = reinterpret_cast<sockaddr_in*>(storage);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(storage);
  if (inet_pton(AF_INET, ip.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<uint16_t>(port));
    return sizeof *v4;
  }
  if (inet_pton(AF_INET6, ip.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port));
    return sizeof *v6;
  }
  throw std::invalid_argument("not an IP address: " + ip);
}

int add_host(DataPlane& plane, const std::string& name, const std::string& address, const std::string& ip, int port,
             bool abortable, const std::string& authorization) {
  sockaddr_storage storage{};
  socklen_t len = socket_address(ip, port, &storage);
  int index = plane.hosts().add_host(name, address, storage, len);
  plane.hosts().host(index).abortable = abortable;
  plane.hosts().host(index).authorization = authorization;
  return index;
}

py::list take_handoffs(DataPlane& plane) {
  py::list out;
  for (auto& h : plane.take_handoffs()) out.append(py::make_tuple(h.fd, py::bytes(h.data)));
  return out;
}

// The requests finished since the last take, grouped by (model, host, status): what the stages
// count (sums) and each one's latencies as packed doubles, so that Python does a few operations a
// group and one per latency instead of building an exchange per request.
py::list take_finished(DataPlane& plane) {
  struct Group {
    int64_t count = 0, retries = 0, with_usage = 0, prompt = 0, cached = 0, completion = 0, reasoning = 0;
    double cost_eur = 0;
    std::vector<double> ttft, e2e;
  };
  std::map<std::tuple<int, int, int, int>, Group> groups;
  for (const auto& f : plane.take_finished()) {
    Group& g = groups[{f.model, f.host, f.status, f.limit_index}];
    g.count += 1;
    g.cost_eur += f.cost_eur;
    g.retries += f.attempts > 1 ? f.attempts - 1 : 0;
    if (f.has_usage) {
      g.with_usage += 1;
      g.prompt += f.prompt_tokens;
      g.cached += f.cached_tokens;
      g.completion += f.completion_tokens;
      g.reasoning += f.reasoning_tokens;
    }
    g.ttft.push_back(f.ttft_s);
    g.e2e.push_back(f.e2e_s);
  }
  py::list out;
  for (const auto& [key, g] : groups) {
    auto packed = [](const std::vector<double>& v) {
      return py::bytes(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(double));
    };
    out.append(py::make_tuple(plane.hosts().model_name(std::get<0>(key)), std::get<1>(key), std::get<2>(key), g.count,
                              g.retries, g.with_usage, g.prompt, g.cached, g.completion, g.reasoning, packed(g.ttft),
                              packed(g.e2e), std::get<3>(key), g.cost_eur));
  }
  return out;
}

using TokenTuple = std::tuple<std::string, std::string, py::bytes, int, int, double, double, double, py::bytes,
                              std::string>;

llmaas::gw::TokenEntry token_entry(llmaas::gw::NativeTenancy& tenancy, const TokenTuple& t) {
  llmaas::gw::TokenEntry e;
  std::string hash = std::get<2>(t), models = std::get<8>(t);
  if (hash.size() != e.secret_hash.size()) throw std::invalid_argument("a secret hash is 32 bytes");
  e.id = std::get<0>(t);
  e.tenant = std::get<1>(t);
  std::memcpy(e.secret_hash.data(), hash.data(), hash.size());
  e.tier = std::get<3>(t);
  e.limit_index = std::get<4>(t);
  e.limits = tenancy.limits().state(e.limit_index);
  if (e.limits == nullptr) throw std::invalid_argument("no such limit state");
  e.expires_at = std::get<5>(t);
  e.revoked_at = std::get<6>(t);
  e.rotate_at = std::get<7>(t);
  e.models.assign(models.begin(), models.end());
  e.headers = std::get<9>(t);
  return e;
}

// The tenant stages' view for the lane (tenants.h TenantView), built whole and swapped in.
void set_tenant_view(DataPlane& plane, bool require_auth, const std::vector<TokenTuple>& tokens,
                     const std::optional<TokenTuple>& local, const std::vector<std::tuple<int64_t, int64_t, int64_t>>& tiers,
                     const std::vector<double>& serve_from, const std::vector<double>& serve_until,
                     const std::vector<std::tuple<double, double, double, double>>& prices) {
  llmaas::gw::NativeTenancy* tenancy = plane.tenancy();
  if (tenancy == nullptr) throw std::logic_error("the tenant stages are not enabled on this lane");
  size_t models = plane.hosts().num_models();
  if (serve_from.size() != models || serve_until.size() != models || prices.size() != models * tiers.size())
    throw std::invalid_argument("one serving window per model and one price set per model and tier");
  auto view = std::make_shared<llmaas::gw::TenantView>();
  view->require_auth = require_auth;
  auto checked = [&](llmaas::gw::TokenEntry e) {
    if (e.tier < 0 || static_cast<size_t>(e.tier) >= tiers.size()) throw std::invalid_argument("no such tier");
    if (e.models.size() != models) throw std::invalid_argument("one permission byte per model");
    return e;
  };
  for (const auto& t : tokens) {
    llmaas::gw::TokenEntry e = checked(token_entry(*tenancy, t));
    view->tokens.emplace(e.id, std::move(e));
  }
  if (local) view->local = checked(token_entry(*tenancy, *local));
  for (const auto& [priority, max_tokens, tpm] : tiers) view->tiers.push_back({priority, max_tokens, tpm});
  view->serve_from = serve_from;
  view->serve_until = serve_until;
  for (const auto& [input, cached, output, reasoning] : prices) view->prices.push_back({input, cached, output, reasoning});
  tenancy->set_view(std::move(view));
}

py::list take_host_events(DataPlane& plane) {
  py::list out;
  for (const auto& e : plane.take_host_events()) out.append(py::make_tuple(e.host, e.failure, e.error));
  return out;
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "The gateway's native lane (csrc/gateway) and its JSON scanner.";
  py::class_<DataPlane>(m, "DataPlane")
      .def(py::init(&make_plane), py::arg("config"))
      .def("add_host", &add_host, py::arg("name"), py::arg("address"), py::arg("ip"), py::arg("port"),
           py::arg("abortable") = true, py::arg("authorization") = std::string())
      .def("add_model", [](DataPlane& p, const std::string& model, const std::vector<int>& hosts) {
        p.hosts().add_model(model, hosts);
      })
      .def("start", &DataPlane::start)
      .def("begin_shutdown", &DataPlane::begin_shutdown)
      .def("stop", &DataPlane::stop, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("wake_fd", &DataPlane::wake_fd)
      .def_property_readonly("open_connections", &DataPlane::open_connections)
      .def_property_readonly("in_flight", &DataPlane::in_flight)
      .def_property_readonly("handed_off", &DataPlane::handed_off)
      .def("take_handoffs", &take_handoffs)
      .def("take_finished", &take_finished)
      .def("take_host_events", &take_host_events)
      .def("set_host_ip",
           [](DataPlane& p, int host, const std::string& ip, int port) {
             sockaddr_storage storage{};
             socklen_t len = socket_address(ip, port, &storage);
             p.hosts().host(host).set_sockaddr(storage, len);
           })
      .def("set_host_health", [](DataPlane& p, int host, bool healthy) { p.hosts().host(host).healthy.store(healthy); })
      .def("set_host_report", [](DataPlane& p, int host, int64_t tokens) {
        p.hosts().host(host).reported_tokens.store(tokens);
      })
      .def("set_python_outstanding", [](DataPlane& p, int host, int64_t tokens) {
        p.hosts().host(host).python_outstanding.store(tokens);
      })
      .def("host_outstanding", [](DataPlane& p, int host) { return p.hosts().host(host).native_outstanding.load(); })
      .def("host_in_flight", [](DataPlane& p, int host) { return p.hosts().host(host).native_in_flight.load(); })
      .def("enable_tenancy",
           [](DataPlane& p, std::shared_ptr<llmaas::gw::LimitTable> limits, const py::bytes& pepper,
              const std::string& journal_path, const std::string& db_path, const std::string& chain) {
             try {
               p.enable_tenancy(std::make_shared<llmaas::gw::NativeTenancy>(std::string_view(pepper), std::move(limits)),
                                journal_path, db_path, chain);
             } catch (const std::runtime_error& e) {
               throw py::value_error(e.what());
             }
           })
      .def("set_tenant_view", &set_tenant_view, py::arg("require_auth"), py::arg("tokens"), py::arg("local"),
           py::arg("tiers"), py::arg("serve_from"), py::arg("serve_until"), py::arg("prices"))
      // Records what the lane journaled (lane_ledger.h); how many requests. RuntimeError when the
      // commit failed (the entries are taken again next time).
      .def("ledger_flush",
           [](DataPlane& p) {
             if (p.ledger() == nullptr) throw std::logic_error("the tenant stages are not enabled on this lane");
             py::gil_scoped_release released;
             return p.ledger()->flush();
           });
  bind_json_fields(m);
  bind_tenancy(m);
}
