// The native lane's view of the fleet: engine hosts by model, their load and health, and the
// choice of a host for a request, the same rule as gateway/fleet/balancer.py's pick_host.
//
// Health and the hosts' load reports belong to the Python fleet (its probes and circuit breaker);
// it writes them here. Outstanding tokens are counted on both sides: each side adds the other's,
// so requests on either path see the whole load of the host.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace llmaas::gw {

struct Host {
  std::string name;     // the configured URL, e.g. http://10.0.0.5:8001 (the rendezvous input)
  std::string address;  // host:port, as the Host header
  bool abortable = true;  // one of our engines (kind llmaas): it stops a tagged request on demand
  std::string authorization;  // "Bearer KEY" for an engine that wants a key, else empty
  std::atomic<bool> healthy{true};
  std::atomic<int64_t> reported_tokens{0};     // the host's own load report
  std::atomic<int64_t> python_outstanding{0};  // the Python path's estimate in flight
  std::atomic<int64_t> native_outstanding{0};  // this lane's
  std::atomic<int64_t> native_in_flight{0};
  int64_t picks = 0;  // the lane's thread only
  int failures = 0;   // the lane's thread only: consecutive failures it saw since the last success

  // Where new connections go: Python re-resolves the name now and then (native_lane.py), and a
  // new address takes over from the next connection (pooled ones stay until they close).
  void set_sockaddr(const sockaddr_storage& addr, socklen_t len) {
    std::lock_guard<std::mutex> lock(sockaddr_mutex_);
    sockaddr_ = addr;
    sockaddr_len_ = len;
  }
  socklen_t get_sockaddr(sockaddr_storage* addr) const {
    std::lock_guard<std::mutex> lock(sockaddr_mutex_);
    *addr = sockaddr_;
    return sockaddr_len_;
  }

  int64_t load_tokens() const {
    int64_t ours = python_outstanding.load(std::memory_order_relaxed) + native_outstanding.load(std::memory_order_relaxed);
    int64_t reported = reported_tokens.load(std::memory_order_relaxed);
    return ours > reported ? ours : reported;
  }

 private:
  mutable std::mutex sockaddr_mutex_;
  sockaddr_storage sockaddr_{};
  socklen_t sockaddr_len_ = 0;
};

struct RoutingPolicy {
  double slack_ratio = 1.5;
  int64_t slack_tokens = 0;
};

class HostTable {
 public:
  // Returns the host's index; the same name twice gives the same host.
  int add_host(const std::string& name, const std::string& address, const sockaddr_storage& addr, socklen_t len);
  void add_model(const std::string& model, const std::vector<int>& hosts);
  // -1 when the model is not served by this lane.
  int model_index(std::string_view model) const;
  const std::string& model_name(int model) const { return model_names_[model]; }
  Host& host(int index) { return *hosts_[index]; }
  size_t num_hosts() const { return hosts_.size(); }
  size_t num_models() const { return model_names_.size(); }
  // The healthy host of `model`, not in `tried`, that gets the request; -1 when none.
  int pick(int model, const uint8_t* affinity_key, const std::vector<int>& tried, const RoutingPolicy& policy);

 private:
  std::vector<std::unique_ptr<Host>> hosts_;
  std::vector<std::string> model_names_;
  std::vector<std::vector<int>> model_hosts_;
  std::unordered_map<std::string, int> models_;
};

}  // namespace llmaas::gw
