// The native lane's event loop (see data_plane.h): client connections, upstream connections and
// their pools, timers. One instance lives on the lane's thread for its whole life.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data_plane.h"
#include "http_head.h"
#include "json_fields.h"

namespace llmaas::gw {

struct Endpoint {
  enum class Kind { kListen, kControl, kClient, kUpstream } kind;
  int fd = -1;
  bool dead = false;
  explicit Endpoint(Kind k, int f) : kind(k), fd(f) {}
  virtual ~Endpoint() = default;
};

struct UpstreamConn;

struct ClientConn : Endpoint {
  enum class Phase { kIdle, kHead, kBody, kBusy, kWriting };
  explicit ClientConn(int f) : Endpoint(Kind::kClient, f) {}
  Phase phase = Phase::kIdle;
  std::string in;                 // bytes read; the request being answered starts at 0
  std::string out;
  size_t out_pos = 0;
  double deadline = 0;
  bool reading = true;            // EPOLLIN is asked for
  bool keep_alive = true;         // for the answer being written
  bool gone = false;              // the client hung up while its request was out
  bool pending_read = false;      // bytes may wait in the socket: read them once the answer is out
  // The request being answered.
  RequestHead head;
  size_t request_bytes = 0;
  RequestFields fields;
  std::string path, request_id;
  std::string abort_tag;          // sent with the request: our engines stop it by this name if the client leaves
  std::string client_ip;          // the peer's address, for the audit trail
  // Under the tenant stages: what the request was granted, and its body with the stages' overrides.
  TenantGrant grant;
  bool granted = false;
  int64_t prompt_estimate = 0;
  std::string forward_body;
  int model = -1, host = -1, attempts = 0;
  std::vector<int> tried;
  std::string last_error;         // why the last host tried did not serve it (its 503 names it)
  int64_t cost = 0;
  double started = 0, first_byte = 0;  // first_byte: when an engine's answer came (0: none yet)
  bool fresh_retry = false;       // already retried once on a new connection after a stale one
  UpstreamConn* upstream = nullptr;
};

struct UpstreamConn : Endpoint {
  enum class Phase { kConnecting, kIdle, kBusy };
  UpstreamConn(int f, int h) : Endpoint(Kind::kUpstream, f), host(h) {}
  int host;
  Phase phase = Phase::kConnecting;
  bool reused = false;
  std::string out;
  size_t out_pos = 0;
  std::string in;
  bool head_done = false;
  ResponseHead head;
  ChunkedDecoder chunked;
  std::string body;
  ClientConn* client = nullptr;
  double deadline = 0;
};

class Loop {
 public:
  Loop(DataPlane& plane, const PlaneConfig& config, HostTable& hosts, int control_fd);
  ~Loop();
  void run();

 private:
  // epoll
  void watch(Endpoint* e, uint32_t events);
  void dispatch(Endpoint* e, uint32_t events);
  void kill(Endpoint* e);  // closes its socket; freed at the end of the loop's iteration
  // clients
  void accept_all();
  void on_client(ClientConn* c, uint32_t events);
  void read_client(ClientConn* c);
  void serve_next(ClientConn* c);
  void start_request(ClientConn* c);
  void try_host(ClientConn* c);
  void end_attempt(ClientConn* c);
  void answer_unavailable(ClientConn* c);  // every host tried: proxy.py's 503
  // `headers`: the answer's own header lines, each ending in CRLF, before the tenant stages'.
  void answer(ClientConn* c, int status, const std::string& content_type, std::string_view body,
              const UsageCounts* usage, std::string_view headers = {});
  void record(ClientConn* c, int status, const UsageCounts* usage, double cost_eur);
  void send_client(ClientConn* c, std::string data, bool keep_alive);
  void flush_client(ClientConn* c);
  void answer_done(ClientConn* c);
  void hand_off(ClientConn* c);
  void finish_gone(ClientConn* c, const UsageCounts* usage);
  bool admit_tenant(ClientConn* c);
  // Settles the grant, journals the usage (false: the journal had no room) and returns the cost.
  bool settle_tenant(ClientConn* c, int status, const UsageCounts* usage, double* cost);
  void release_grant(ClientConn* c);  // a request handed to Python after admission: it admits anew
  // upstreams
  UpstreamConn* connect_to(int host, std::string* error);
  void send_upstream(ClientConn* c, bool fresh);
  void on_upstream(UpstreamConn* u, uint32_t events);
  void flush_upstream(UpstreamConn* u);
  void read_upstream(UpstreamConn* u);
  void attempt_failed(ClientConn* c, const std::string& error);
  void upstream_failed(UpstreamConn* u, const std::string& error);
  void upstream_answered(UpstreamConn* u, bool reusable);
  void send_abort(int host, const std::string& tag);
  // A host's outcome, told to Python's breaker each tick; the lane takes a failing host out at once
  // (Python's probe brings it back), so a host failing fast does not draw a tick's worth of requests.
  void host_failed(int host, const std::string& error);
  void host_answered(int host);
  // time and shutdown
  void sweep();
  void begin_shutdown();

  DataPlane& plane_;
  const PlaneConfig& config_;
  HostTable& hosts_;
  int epoll_fd_;
  Endpoint listen_;
  Endpoint control_;
  std::vector<Endpoint*> live_;       // every client and upstream connection
  std::vector<Endpoint*> graveyard_;  // killed this iteration
  std::vector<std::vector<UpstreamConn*>> idle_;  // per host, most recently used last
  bool shutting_down_ = false;
  bool accept_paused_ = false;  // out of descriptors: the listening socket is unwatched until the next sweep
  uint64_t next_id_ = 0;
  std::string tag_prefix_;  // random, from the kernel at start: abort tags nobody else can name
  uint64_t next_tag_ = 0;
  double now_ = 0;
};

}  // namespace llmaas::gw
