// The gateway's native lane: an epoll thread that serves the hot path of `llmaas gateway`
// (non-streaming POST /v1/chat/completions and /v1/completions) without the interpreter.
//
// Why: through the Python server every request costs ~75 us of CPU in the gateway (protocol
// callbacks, tasks, futures), ~8x what a bare server spends answering it. This thread accepts on
// the gateway's listening socket, parses each request (http_head.h, json_fields.h), picks a host
// (routing.h), forwards over pooled keep-alive connections, retries on another host before the
// answer as the Python path does, and relays the answer. Anything else -- another route, a
// stream, a body it does not route exactly as Python would, a failure on every host -- hands the
// connection, with the bytes read so far, to the Python server, which then owns it and answers
// (errors included). The lane writes no error of its own, only answers Python renders for it:
// 408 (slow head, slow body) and 503 (over the concurrency limit).
//
// Threads: the lane's loop runs alone on its thread and touches no Python object. The Python side
// (module.cpp) reads the queues below under their mutex and the hosts' atomics.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "lane_journal.h"
#include "lane_ledger.h"
#include "routing.h"
#include "tenants.h"

namespace llmaas::gw {

struct PlaneConfig {
  int listen_fd = -1;  // bound, listening, non-blocking; the lane accepts on it, the caller closes it
  size_t max_header_bytes = 16 * 1024;
  size_t max_body_bytes = 8 * 1024 * 1024;
  double header_timeout_s = 10, body_timeout_s = 30, keepalive_timeout_s = 5;
  // An answer of which the client reads nothing for this long is dropped, its connection closed.
  double send_timeout_s = 30;
  int64_t max_concurrency = 1024;
  double connect_timeout_s = 5, first_byte_timeout_s = 300;
  int max_attempts = 2;
  int failure_threshold = 2;  // consecutive failures that take a host out at once (host.py's breaker)
  int64_t default_max_tokens = 256;
  int64_t affinity_min_chars = 256;
  RoutingPolicy policy;
  size_t max_idle_per_host = 64;
  std::string id_prefix;  // request ids are id_prefix + a counter
  // Whole responses rendered by the Python server, so both paths answer byte for byte alike.
  std::string header_timeout_response, body_timeout_response;  // 408, connection: close
  std::string overload_response, overload_close_response;      // 503, keep-alive or not
  std::string unavailable_headers;  // the no-engine 503's own header lines (proxy.py's Retry-After)
  std::unordered_map<int, std::string> reasons;                // status -> reason phrase
};

// A connection the Python server takes over: its socket and the bytes already read from it.
struct Handoff {
  int fd;
  std::string data;
};

// A request the lane answered (or whose client left: status 499).
struct Finished {
  int model, host, status, attempts;
  int limit_index;  // the (tenant, tier) limits it was admitted under; -1 without the tenant stages
  double cost_eur;
  double ttft_s, e2e_s;  // arrival to the engine's answer head, and to the answer sent
  bool has_usage;
  int64_t prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens;
};

// What the Python circuit breaker must know: a failed exchange with a host, or successes again.
struct HostEvent {
  int host;
  bool failure;
  std::string error;
};

class DataPlane {
 public:
  explicit DataPlane(PlaneConfig config);
  ~DataPlane();
  DataPlane(const DataPlane&) = delete;
  DataPlane& operator=(const DataPlane&) = delete;

  HostTable& hosts() { return hosts_; }
  // Runs the tenant stages (tenants.h) on every request, journaling each one's usage at `journal_path`
  // (lane_journal.h), recorded in the store at `db_path` under the audit chain `chain`
  // (lane_ledger.h); before start. Throws when the journal or the store cannot be had.
  void enable_tenancy(std::shared_ptr<NativeTenancy> tenancy, const std::string& journal_path,
                      const std::string& db_path, const std::string& chain);
  NativeTenancy* tenancy() { return tenancy_.get(); }
  LaneJournal* journal() { return journal_.get(); }
  LaneLedger* ledger() { return ledger_.get(); }
  void start();
  // Stops accepting and closes idle connections; busy ones close after their answer.
  void begin_shutdown();
  // Ends the thread; connections still open are closed.
  void stop();

  int wake_fd() const { return wake_fd_; }  // readable when handoffs are waiting
  std::vector<Handoff> take_handoffs();
  std::vector<Finished> take_finished();
  std::vector<HostEvent> take_host_events();
  int64_t open_connections() const { return open_clients_.load(std::memory_order_relaxed); }
  int64_t in_flight() const { return in_flight_.load(std::memory_order_relaxed); }
  int64_t handed_off() const { return handed_off_.load(std::memory_order_relaxed); }  // connections, ever

 private:
  void run();
  void push_handoff(Handoff handoff);
  void push_finished(const Finished& finished);
  void push_host_event(int host, bool failure, std::string error);

  PlaneConfig config_;
  HostTable hosts_;
  std::shared_ptr<NativeTenancy> tenancy_;
  std::unique_ptr<LaneJournal> journal_;
  std::unique_ptr<LaneLedger> ledger_;  // after the journal: it goes first
  std::thread thread_;
  int wake_fd_ = -1;
  int control_fd_ = -1;
  std::atomic<bool> shutdown_requested_{false};
  std::atomic<bool> stop_requested_{false};
  std::atomic<int64_t> open_clients_{0};
  std::atomic<int64_t> in_flight_{0};
  std::atomic<int64_t> handed_off_{0};
  std::mutex mutex_;  // guards the three queues below
  std::vector<Handoff> handoffs_;
  std::vector<Finished> finished_;
  std::vector<HostEvent> host_events_;
  std::vector<int> last_event_kind_;  // per host since the last take: 0 none, 1 success, 2 failure

  friend class Loop;
};

}  // namespace llmaas::gw
