// gateway._native: the gateway's native lane (data_plane.h) for gateway/native_lane.py, and the
// lane's JSON scanner for its tests. A plain pybind11 module: no torch, no OpenMP, so the gateway
// process stays small.
#include <arpa/inet.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <map>
#include <tuple>
#include <vector>
#include <stdexcept>

#include "data_plane.h"
#include "json_fields_bindings.h"

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
  read(c, "max_concurrency", &config.max_concurrency);
  read(c, "connect_timeout_s", &config.connect_timeout_s);
  read(c, "first_byte_timeout_s", &config.first_byte_timeout_s);
  read(c, "max_attempts", &config.max_attempts);
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

int add_host(DataPlane& plane, const std::string& name, const std::string& address, const std::string& ip, int port) {
  sockaddr_storage storage{};
  socklen_t len = 0;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&storage);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&storage);
  if (inet_pton(AF_INET, ip.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<uint16_t>(port));
    len = sizeof *v4;
  } else if (inet_pton(AF_INET6, ip.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port));
    len = sizeof *v6;
  } else {
    throw std::invalid_argument("not an IP address: " + ip);
  }
  return plane.hosts().add_host(name, address, storage, len);
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
    std::vector<double> ttft, e2e;
  };
  std::map<std::tuple<int, int, int>, Group> groups;
  for (const auto& f : plane.take_finished()) {
    Group& g = groups[{f.model, f.host, f.status}];
    g.count += 1;
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
                              packed(g.e2e)));
  }
  return out;
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
      .def("add_host", &add_host, py::arg("name"), py::arg("address"), py::arg("ip"), py::arg("port"))
      .def("add_model", [](DataPlane& p, const std::string& model, const std::vector<int>& hosts) {
        p.hosts().add_model(model, hosts);
      })
      .def("start", &DataPlane::start)
      .def("begin_shutdown", &DataPlane::begin_shutdown)
      .def("stop", &DataPlane::stop, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("wake_fd", &DataPlane::wake_fd)
      .def_property_readonly("open_connections", &DataPlane::open_connections)
      .def_property_readonly("in_flight", &DataPlane::in_flight)
      .def("take_handoffs", &take_handoffs)
      .def("take_finished", &take_finished)
      .def("take_host_events", &take_host_events)
      .def("set_host_health", [](DataPlane& p, int host, bool healthy) { p.hosts().host(host).healthy.store(healthy); })
      .def("set_host_report", [](DataPlane& p, int host, int64_t tokens) {
        p.hosts().host(host).reported_tokens.store(tokens);
      })
      .def("set_python_outstanding", [](DataPlane& p, int host, int64_t tokens) {
        p.hosts().host(host).python_outstanding.store(tokens);
      })
      .def("host_outstanding", [](DataPlane& p, int host) { return p.hosts().host(host).native_outstanding.load(); })
      .def("host_in_flight", [](DataPlane& p, int host) { return p.hosts().host(host).native_in_flight.load(); });
  bind_json_fields(m);
}
