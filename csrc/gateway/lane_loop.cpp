// See lane_loop.h and data_plane.h. Sockets are edge-triggered and registered once for reading,
// writing and hang-ups: the loop never changes a registration, so a request costs its reads and
// writes and nothing more. An edge that arrives while a client's request is out is remembered
// (`pending_read`) and served when the answer is written.
#include "lane_loop.h"

#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>

namespace llmaas::gw {
namespace {

constexpr uint32_t kSocketEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
constexpr size_t kReadChunk = 64 * 1024;
constexpr std::string_view kChatPath = "/v1/chat/completions";
constexpr std::string_view kCompletionsPath = "/v1/completions";

double monotonic() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// Reads what the socket holds, up to `limit` buffered bytes; false at end of stream or on an
// error. *more is set when it stopped at the limit with bytes possibly left. A short read means
// the socket is empty: with edge-triggered events, bytes that arrive later raise a new edge, so no
// second call is made just to hear EAGAIN (a syscall per read saved).
bool read_available(int fd, std::string* into, size_t limit, bool* more) {
  char buf[kReadChunk];
  *more = false;
  for (;;) {
    if (into->size() >= limit) {
      *more = true;
      return true;
    }
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      into->append(buf, static_cast<size_t>(n));
      if (static_cast<size_t>(n) < sizeof buf) return true;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }
}

// Writes from *pos on; true when all is written, false when the socket would block.
// *error is set when the peer is gone.
bool write_available(int fd, const std::string& data, size_t* pos, bool* error) {
  while (*pos < data.size()) {
    ssize_t n = send(fd, data.data() + *pos, data.size() - *pos, MSG_NOSIGNAL);
    if (n > 0) {
      *pos += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
    *error = true;
    return false;
  }
  return true;
}

void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

bool retry_status(int status) { return status == 502 || status == 503 || status == 504; }

}  // namespace

Loop::Loop(DataPlane& plane, const PlaneConfig& config, HostTable& hosts, int control_fd)
    : plane_(plane),
      config_(config),
      hosts_(hosts),
      epoll_fd_(epoll_create1(EPOLL_CLOEXEC)),
      listen_(Endpoint::Kind::kListen, config.listen_fd),
      control_(Endpoint::Kind::kControl, control_fd) {
  idle_.resize(hosts.num_hosts());
  watch(&listen_, EPOLLIN);
  watch(&control_, EPOLLIN);
}

Loop::~Loop() {
  for (Endpoint* e : live_) {
    if (!e->dead) kill(e);
  }
  for (Endpoint* e : graveyard_) delete e;
  close(epoll_fd_);
}

void Loop::watch(Endpoint* e, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.ptr = e;
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, e->fd, &ev);
}

void Loop::run() {
  epoll_event events[256];
  double last_sweep = monotonic();
  while (!plane_.stop_requested_.load()) {
    int n = epoll_wait(epoll_fd_, events, 256, 50);
    now_ = monotonic();
    for (int i = 0; i < n; ++i) {
      auto* e = static_cast<Endpoint*>(events[i].data.ptr);
      if (!e->dead) dispatch(e, events[i].events);
    }
    if (now_ - last_sweep >= 0.05) {
      sweep();
      last_sweep = now_;
    }
    if (!graveyard_.empty()) {
      live_.erase(std::remove_if(live_.begin(), live_.end(), [](Endpoint* e) { return e->dead; }), live_.end());
      for (Endpoint* e : graveyard_) delete e;
      graveyard_.clear();
    }
  }
}

void Loop::dispatch(Endpoint* e, uint32_t events) {
  switch (e->kind) {
    case Endpoint::Kind::kListen:
      accept_all();
      break;
    case Endpoint::Kind::kControl: {
      uint64_t value;
      while (read(e->fd, &value, sizeof value) > 0) {
      }
      if (plane_.shutdown_requested_.load() && !shutting_down_) begin_shutdown();
      break;
    }
    case Endpoint::Kind::kClient:
      on_client(static_cast<ClientConn*>(e), events);
      break;
    case Endpoint::Kind::kUpstream:
      on_upstream(static_cast<UpstreamConn*>(e), events);
      break;
  }
}

void Loop::kill(Endpoint* e) {
  if (e->dead) return;
  e->dead = true;
  if (e->fd >= 0) close(e->fd);  // also leaves the epoll set
  e->fd = -1;
  if (e->kind == Endpoint::Kind::kClient) {
    auto* c = static_cast<ClientConn*>(e);
    plane_.open_clients_.fetch_sub(1);
    if (c->upstream != nullptr) {  // only when the lane stops with a request out: its counts end here
      c->upstream->client = nullptr;
      c->upstream = nullptr;
      end_attempt(c);
      plane_.in_flight_.fetch_sub(1);
    }
  } else if (e->kind == Endpoint::Kind::kUpstream) {
    auto* u = static_cast<UpstreamConn*>(e);
    auto& pool = idle_[u->host];
    pool.erase(std::remove(pool.begin(), pool.end(), u), pool.end());
  }
  graveyard_.push_back(e);
}

// ---- clients -----------------------------------------------------------------------------

void Loop::accept_all() {
  for (;;) {
    int fd = accept4(listen_.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of descriptors: the listening socket stays readable, so stop watching it until the
        // next sweep instead of spinning on it; the backlog waits.
        epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_.fd, nullptr);
        accept_paused_ = true;
      }
      return;
    }
    set_nodelay(fd);
    auto* c = new ClientConn(fd);
    c->deadline = now_ + config_.keepalive_timeout_s;
    live_.push_back(c);
    plane_.open_clients_.fetch_add(1);
    watch(c, kSocketEvents);
  }
}

void Loop::on_client(ClientConn* c, uint32_t events) {
  if (events & EPOLLOUT && c->phase == ClientConn::Phase::kWriting) {
    flush_client(c);
    if (c->dead) return;
  }
  bool hangup = events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR);
  bool busy = c->phase == ClientConn::Phase::kBusy || c->phase == ClientConn::Phase::kWriting;
  if (busy) {
    // The answer is on its way; a client that hangs up now is billed what the engine produced.
    if (hangup) c->gone = true;
    else if (events & EPOLLIN) c->pending_read = true;
    return;
  }
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) read_client(c);
}

void Loop::read_client(ClientConn* c) {
  // A request never needs more than this; beyond it the head or the body is too large (handed
  // over), or pipelined requests wait in the socket until the ones read are answered.
  size_t limit = config_.max_header_bytes + config_.max_body_bytes + kReadChunk;
  if (!read_available(c->fd, &c->in, limit, &c->pending_read)) {
    kill(c);  // the client closed, with a partial request at most
    return;
  }
  serve_next(c);
}

void Loop::serve_next(ClientConn* c) {
  if (c->in.empty()) {
    c->phase = ClientConn::Phase::kIdle;
    c->deadline = now_ + config_.keepalive_timeout_s;
    return;
  }
  if (shutting_down_) {
    kill(c);
    return;
  }
  if (c->phase == ClientConn::Phase::kIdle) {
    c->phase = ClientConn::Phase::kHead;
    c->deadline = now_ + config_.header_timeout_s;
  }
  HeadStatus status = parse_request_head(c->in, config_.max_header_bytes, &c->head);
  if (status == HeadStatus::kIncomplete) return;
  if (status == HeadStatus::kUnsupported || c->head.method != "POST" ||
      (c->head.target != kChatPath && c->head.target != kCompletionsPath) ||
      static_cast<uint64_t>(c->head.content_length) > config_.max_body_bytes) {
    hand_off(c);
    return;
  }
  if (c->phase == ClientConn::Phase::kHead) {
    c->phase = ClientConn::Phase::kBody;
    c->deadline = now_ + config_.body_timeout_s;
  }
  size_t request_bytes = c->head.head_bytes + static_cast<size_t>(c->head.content_length);
  if (c->in.size() < request_bytes) return;
  c->request_bytes = request_bytes;
  start_request(c);
}

void Loop::start_request(ClientConn* c) {
  std::string_view body(c->in.data() + c->head.head_bytes, static_cast<size_t>(c->head.content_length));
  if (!scan_request(body, config_.affinity_min_chars, &c->fields) || c->fields.stream) {
    hand_off(c);
    return;
  }
  c->model = hosts_.model_index(c->fields.model);
  if (c->model < 0) {
    hand_off(c);
    return;
  }
  bool keep_alive = c->head.keep_alive && !shutting_down_;
  if (plane_.in_flight_.load() >= config_.max_concurrency) {
    send_client(c, keep_alive ? config_.overload_response : config_.overload_close_response, keep_alive);
    return;
  }
  // The Python path's estimate (proxy.py _exchange): `or` there skips zeros as well as nulls.
  const RequestFields& f = c->fields;
  int64_t max_tokens = (f.has_max_completion_tokens && f.max_completion_tokens != 0) ? f.max_completion_tokens
                       : (f.has_max_tokens && f.max_tokens != 0)                    ? f.max_tokens
                                                                                    : config_.default_max_tokens;
  int64_t n = (f.has_n && f.n != 0) ? f.n : 1;
  int64_t output = 0;
  if (__builtin_mul_overflow(max_tokens, std::max<int64_t>(n, 1), &output) ||
      __builtin_add_overflow(f.prompt_chars / 4 + 8, output, &c->cost)) {
    hand_off(c);  // sizes no engine accepts; Python's integers do not overflow, its answer stands
    return;
  }
  c->path.assign(c->head.target);
  if (!c->head.request_id.empty()) c->request_id.assign(c->head.request_id);
  else c->request_id = config_.id_prefix + std::to_string(next_id_++);
  c->started = now_;
  c->attempts = 0;
  c->tried.clear();
  c->gone = false;
  c->phase = ClientConn::Phase::kBusy;
  plane_.in_flight_.fetch_add(1);
  try_host(c);
}

void Loop::try_host(ClientConn* c) {
  int host = c->attempts < config_.max_attempts
                 ? hosts_.pick(c->model, c->fields.has_affinity ? c->fields.affinity_key : nullptr, c->tried,
                               config_.policy)
                 : -1;
  if (host < 0) {
    // No host left to try: the Python path takes the request over, tries again and answers
    // (its 503 names the model and the last error).
    hand_off(c);
    return;
  }
  c->tried.push_back(host);
  c->attempts += 1;
  c->host = host;
  c->fresh_retry = false;
  Host& h = hosts_.host(host);
  h.native_outstanding.fetch_add(c->cost);
  h.native_in_flight.fetch_add(1);
  send_upstream(c, false);
}

void Loop::end_attempt(ClientConn* c) {
  Host& h = hosts_.host(c->host);
  h.native_outstanding.fetch_sub(c->cost);
  h.native_in_flight.fetch_sub(1);
}

void Loop::answer(ClientConn* c, int status, const std::string& content_type, std::string_view body,
                  const UsageCounts* usage) {
  bool keep_alive = c->head.keep_alive && !shutting_down_;
  auto reason = config_.reasons.find(status);
  std::string out;
  out.reserve(body.size() + 160);
  out.append("HTTP/1.1 ").append(std::to_string(status)).append(" ");
  if (reason != config_.reasons.end()) out.append(reason->second);
  out.append("\r\ncontent-type: ").append(content_type);
  out.append("\r\ncontent-length: ").append(std::to_string(body.size())).append("\r\n");
  if (!keep_alive) out.append("connection: close\r\n");
  out.append("\r\n").append(body);
  record(c, status, usage);
  send_client(c, std::move(out), keep_alive);
}

void Loop::record(ClientConn* c, int status, const UsageCounts* usage) {
  plane_.in_flight_.fetch_sub(1);
  Finished f{};
  f.model = c->model;
  f.host = c->host;
  f.status = status;
  f.attempts = c->attempts;
  f.ttft_s = now_ - c->started;  // a whole answer's first byte is its end, as in proxy.py
  f.e2e_s = now_ - c->started;
  f.has_usage = usage != nullptr;
  if (usage != nullptr) {
    f.prompt_tokens = usage->prompt_tokens;
    f.cached_tokens = usage->cached_tokens;
    f.completion_tokens = usage->completion_tokens;
    f.reasoning_tokens = usage->reasoning_tokens;
  }
  plane_.push_finished(f);
}

void Loop::send_client(ClientConn* c, std::string data, bool keep_alive) {
  c->out = std::move(data);
  c->out_pos = 0;
  c->keep_alive = keep_alive;
  c->phase = ClientConn::Phase::kWriting;
  flush_client(c);
}

void Loop::flush_client(ClientConn* c) {
  bool error = false;
  if (write_available(c->fd, c->out, &c->out_pos, &error)) {
    answer_done(c);
  } else if (error) {
    kill(c);
  }
}

void Loop::answer_done(ClientConn* c) {
  c->out.clear();
  c->out_pos = 0;
  if (!c->keep_alive || c->gone) {
    kill(c);
    return;
  }
  c->in.erase(0, c->request_bytes);
  c->request_bytes = 0;
  c->phase = ClientConn::Phase::kIdle;
  if (c->pending_read) read_client(c);  // bytes that came while the answer was out
  else serve_next(c);                   // a pipelined request already read
}

void Loop::hand_off(ClientConn* c) {
  if (c->phase == ClientConn::Phase::kBusy) plane_.in_flight_.fetch_sub(1);
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c->fd, nullptr);
  Handoff handoff{c->fd, std::move(c->in)};
  c->fd = -1;  // the Python server owns the socket now
  kill(c);
  plane_.push_handoff(std::move(handoff));
}

void Loop::finish_gone(ClientConn* c, const UsageCounts* usage) {
  record(c, 499, usage);
  kill(c);
}

// ---- upstreams ---------------------------------------------------------------------------

UpstreamConn* Loop::connect_to(int host, std::string* error) {
  const Host& h = hosts_.host(host);
  int fd = socket(h.sockaddr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *error = "cannot connect to " + h.address + ": " + std::strerror(errno);
    return nullptr;
  }
  set_nodelay(fd);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&h.sockaddr), h.sockaddr_len) < 0 && errno != EINPROGRESS) {
    *error = "cannot connect to " + h.address + ": " + std::strerror(errno);
    close(fd);
    return nullptr;
  }
  auto* u = new UpstreamConn(fd, host);
  live_.push_back(u);
  watch(u, kSocketEvents);
  return u;
}

void Loop::send_upstream(ClientConn* c, bool fresh) {
  UpstreamConn* u = nullptr;
  auto& pool = idle_[c->host];
  if (!fresh && !pool.empty()) {
    u = pool.back();
    pool.pop_back();
    u->reused = true;
  } else {
    std::string error;
    u = connect_to(c->host, &error);
    if (u == nullptr) {
      attempt_failed(c, error);
      return;
    }
  }
  const Host& h = hosts_.host(c->host);
  std::string_view body(c->in.data() + c->head.head_bytes, static_cast<size_t>(c->head.content_length));
  // The Python client's exact request (http_client.py, backend.py): same headers, same order.
  u->out.clear();
  u->out.reserve(body.size() + 200);
  u->out.append("POST ").append(c->path).append(" HTTP/1.1\r\nhost: ").append(h.address);
  u->out.append("\r\ncontent-length: ").append(std::to_string(body.size()));
  u->out.append("\r\ncontent-type: application/json\r\nx-request-id: ").append(c->request_id);
  u->out.append("\r\n\r\n").append(body);
  u->out_pos = 0;
  u->in.clear();
  u->body.clear();
  u->head_done = false;
  u->chunked = ChunkedDecoder();
  u->client = c;
  c->upstream = u;
  if (u->phase == UpstreamConn::Phase::kConnecting) {
    u->deadline = now_ + config_.connect_timeout_s;
  } else {
    u->phase = UpstreamConn::Phase::kBusy;
    u->deadline = now_ + config_.first_byte_timeout_s;
    flush_upstream(u);
  }
}

void Loop::on_upstream(UpstreamConn* u, uint32_t events) {
  if (u->phase == UpstreamConn::Phase::kConnecting) {
    if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(u->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0 || (events & EPOLLHUP)) {
      upstream_failed(u, "cannot connect to " + hosts_.host(u->host).address + ": " +
                             std::strerror(err != 0 ? err : ECONNREFUSED));
      return;
    }
    u->phase = UpstreamConn::Phase::kBusy;
    u->deadline = now_ + config_.first_byte_timeout_s;
  }
  if (events & EPOLLOUT && u->phase == UpstreamConn::Phase::kBusy) {
    flush_upstream(u);
    if (u->dead) return;
  }
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) read_upstream(u);
}

void Loop::flush_upstream(UpstreamConn* u) {
  bool error = false;
  write_available(u->fd, u->out, &u->out_pos, &error);
  if (error) upstream_failed(u, "connection to " + hosts_.host(u->host).address + " lost while sending");
}

void Loop::read_upstream(UpstreamConn* u) {
  if (u->phase == UpstreamConn::Phase::kConnecting) return;
  bool more = false;  // an answer is read whole, however large, as the Python path does
  bool open = read_available(u->fd, &u->in, SIZE_MAX, &more);
  if (u->phase == UpstreamConn::Phase::kIdle || u->client == nullptr) {
    kill(u);  // bytes nobody asked for, or the engine closed an idle connection
    return;
  }
  const std::string& address = hosts_.host(u->host).address;
  if (!u->head_done) {
    HeadStatus status = parse_response_head(u->in, config_.max_header_bytes, &u->head);
    if (status == HeadStatus::kUnsupported) {
      upstream_failed(u, "bad response from " + address);
      return;
    }
    if (status == HeadStatus::kIncomplete) {
      if (!open) upstream_failed(u, "connection to " + address + " lost: closed by the server");
      return;
    }
    u->head_done = true;
  }
  std::string_view raw = std::string_view(u->in).substr(u->head.head_bytes);
  bool complete = false, extra = false;
  switch (u->head.body_kind) {
    case BodyKind::kNone:
      complete = true;
      extra = !raw.empty();
      break;
    case BodyKind::kLength:
      complete = raw.size() >= static_cast<size_t>(u->head.content_length);
      extra = raw.size() > static_cast<size_t>(u->head.content_length);
      if (complete) u->body.assign(raw.substr(0, static_cast<size_t>(u->head.content_length)));
      break;
    case BodyKind::kChunked: {
      ChunkedDecoder::State state = u->chunked.feed(raw, &u->body);
      if (state == ChunkedDecoder::State::kError) {
        upstream_failed(u, "bad chunked body from " + address);
        return;
      }
      complete = state == ChunkedDecoder::State::kDone;
      extra = complete && u->chunked.consumed() < raw.size();
      break;
    }
    case BodyKind::kUntilClose:
      complete = !open;
      if (complete) u->body.assign(raw);
      break;
  }
  if (!complete) {
    if (!open) upstream_failed(u, "connection to " + address + " lost: closed by the server");
    return;
  }
  upstream_answered(u, open && u->head.keep_alive && !extra);
}

void Loop::attempt_failed(ClientConn* c, const std::string& error) {
  c->upstream = nullptr;
  plane_.push_host_event(c->host, true, error);
  end_attempt(c);
  if (c->gone) finish_gone(c, nullptr);
  else try_host(c);
}

void Loop::upstream_failed(UpstreamConn* u, const std::string& error) {
  ClientConn* c = u->client;
  bool stale = u->reused && u->in.empty();
  kill(u);
  if (c == nullptr) return;
  c->upstream = nullptr;
  if (stale && !c->fresh_retry && !c->gone) {
    // A pooled connection the engine had closed: it cannot have seen the request (http_client.py).
    c->fresh_retry = true;
    send_upstream(c, true);
    return;
  }
  attempt_failed(c, error);
}

void Loop::upstream_answered(UpstreamConn* u, bool reusable) {
  ClientConn* c = u->client;
  int status = u->head.status;
  std::string content_type = u->head.content_type;
  std::string body = std::move(u->body);
  u->client = nullptr;
  u->phase = UpstreamConn::Phase::kIdle;
  u->in.clear();
  u->out.clear();
  if (reusable && idle_[u->host].size() < config_.max_idle_per_host) idle_[u->host].push_back(u);
  else kill(u);
  if (c == nullptr) return;
  c->upstream = nullptr;
  end_attempt(c);
  if (retry_status(status) && !c->gone) {
    try_host(c);  // overloaded or going down: another host may serve it (no failure counted)
    return;
  }
  plane_.push_host_event(c->host, false, std::string());
  UsageCounts usage;
  bool has_usage = status == 200 && scan_usage(body, &usage);
  if (c->gone) {
    finish_gone(c, has_usage ? &usage : nullptr);
    return;
  }
  answer(c, status, content_type, body, has_usage ? &usage : nullptr);
}

// ---- time and shutdown -------------------------------------------------------------------

void Loop::sweep() {
  if (accept_paused_ && !shutting_down_) {
    accept_paused_ = false;
    watch(&listen_, EPOLLIN);
  }
  for (size_t i = 0; i < live_.size(); ++i) {
    Endpoint* e = live_[i];
    if (e->dead) continue;
    if (e->kind == Endpoint::Kind::kClient) {
      auto* c = static_cast<ClientConn*>(e);
      if (now_ < c->deadline) continue;
      if (c->phase == ClientConn::Phase::kIdle) {
        kill(c);
      } else if (c->phase == ClientConn::Phase::kHead || c->phase == ClientConn::Phase::kBody) {
        bool head = c->phase == ClientConn::Phase::kHead;
        c->request_bytes = 0;
        send_client(c, head ? config_.header_timeout_response : config_.body_timeout_response, false);
      }
    } else {
      auto* u = static_cast<UpstreamConn*>(e);
      if (u->client == nullptr || u->head_done || now_ < u->deadline) continue;
      const std::string& address = hosts_.host(u->host).address;
      char seconds[32];
      if (u->phase == UpstreamConn::Phase::kConnecting) {
        std::snprintf(seconds, sizeof seconds, "%g", config_.connect_timeout_s);
        upstream_failed(u, "cannot connect to " + address + ": timed out after " + seconds + " s");
      } else {
        std::snprintf(seconds, sizeof seconds, "%g", config_.first_byte_timeout_s);
        upstream_failed(u, address + " sent no response within " + seconds + " s");
      }
    }
  }
}

void Loop::begin_shutdown() {
  shutting_down_ = true;
  if (!accept_paused_) epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_.fd, nullptr);
  for (size_t i = 0; i < live_.size(); ++i) {
    Endpoint* e = live_[i];
    if (e->dead || e->kind != Endpoint::Kind::kClient) continue;
    auto* c = static_cast<ClientConn*>(e);
    if (c->phase == ClientConn::Phase::kIdle || c->phase == ClientConn::Phase::kHead ||
        c->phase == ClientConn::Phase::kBody)
      kill(c);
  }
}

}  // namespace llmaas::gw
