// The native lane's client side (lane_loop.h): accepting, reading and parsing requests, choosing
// a host, answering, handing a connection over to the Python server.
#include "lane_loop.h"

#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "lane_io.h"

namespace llmaas::gw {

using namespace lane;

// ---- clients -----------------------------------------------------------------------------

void Loop::accept_all() {
  for (;;) {
    sockaddr_storage peer{};
    socklen_t peer_len = sizeof peer;
    int fd = accept4(listen_.fd, reinterpret_cast<sockaddr*>(&peer), &peer_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
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
    if (plane_.tenancy() != nullptr) c->client_ip = peer_ip(&peer);
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
    // The answer is on its way; a client that hangs up now is billed what the engine produced,
    // which our engines cut short when told (their answer then comes at once).
    if (hangup && !c->gone) {
      c->gone = true;
      if (c->upstream != nullptr && hosts_.host(c->host).abortable) send_abort(c->host, c->abort_tag);
    }
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
  // Bytes that cannot begin a request the lane serves (another method or route, a TLS handshake,
  // garbage) go to the Python server at once: it answers them without waiting for a whole head.
  size_t prefix = std::min(c->in.size(), kServedPrefix.size());
  if (std::string_view(c->in.data(), prefix) != kServedPrefix.substr(0, prefix)) {
    hand_off(c);
    return;
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
  const RequestFields& f = c->fields;
  if ((f.has_max_tokens && f.max_tokens < 1) || (f.has_max_completion_tokens && f.max_completion_tokens < 1) ||
      (f.has_n && f.n < 1)) {
    hand_off(c);  // sizes proxy.py refuses (_check_sizes), with its words
    return;
  }
  // The Python path's estimate (proxy.py _exchange).
  int64_t max_tokens = (f.has_max_completion_tokens && f.max_completion_tokens != 0) ? f.max_completion_tokens
                       : (f.has_max_tokens && f.max_tokens != 0)                    ? f.max_tokens
                       : c->head.target == kCompletionsPath                         ? kCompletionsDefaultMaxTokens
                                                                                    : config_.default_max_tokens;
  int64_t n = (f.has_n && f.n != 0) ? f.n : 1;
  int64_t output = 0;
  if (__builtin_mul_overflow(max_tokens, std::max<int64_t>(n, 1), &output) ||
      __builtin_add_overflow(f.prompt_chars / 4 + 8, output, &c->cost)) {
    hand_off(c);  // sizes no engine accepts; Python's integers do not overflow, its answer stands
    return;
  }
  if (plane_.tenancy() != nullptr && !admit_tenant(c)) {
    hand_off(c);  // Python's tenancy stage decides, answers and audits
    return;
  }
  c->path.assign(c->head.target);
  if (!c->head.request_id.empty()) c->request_id.assign(c->head.request_id);
  else c->request_id = config_.id_prefix + std::to_string(next_id_++);
  c->started = now_;
  c->first_byte = 0;
  c->attempts = 0;
  c->tried.clear();
  c->last_error.assign("no healthy host");
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
    answer_unavailable(c);  // handing it over would have the Python path try every host again
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

void Loop::answer_unavailable(ClientConn* c) {
  // proxy.py's `unavailable(...)`, byte for byte: GatewayError's body, its keys in that order.
  std::string message = "No engine could serve model `";
  message.append(hosts_.model_name(c->model)).append("` (").append(c->last_error).append(").");
  std::string body = "{\"error\":{\"message\":";
  append_json_string(&body, message);
  body.append(",\"type\":\"server_error\",\"param\":null,\"code\":\"engine_unavailable\"}}");
  answer(c, 503, "application/json", body, nullptr, config_.unavailable_headers);
}

void Loop::end_attempt(ClientConn* c) {
  Host& h = hosts_.host(c->host);
  h.native_outstanding.fetch_sub(c->cost);
  h.native_in_flight.fetch_sub(1);
}

void Loop::answer(ClientConn* c, int status, const std::string& content_type, std::string_view body,
                  const UsageCounts* usage, std::string_view headers) {
  double cost = 0;
  if (c->granted && !settle_tenant(c, status, usage, &cost)) {
    hand_off(c);  // no room to journal its usage: Python serves it again, and bills that
    return;
  }
  bool keep_alive = c->head.keep_alive && !shutting_down_;
  auto reason = config_.reasons.find(status);
  std::string out;
  out.reserve(body.size() + 160);
  out.append("HTTP/1.1 ").append(std::to_string(status)).append(" ");
  if (reason != config_.reasons.end()) out.append(reason->second);
  out.append("\r\ncontent-type: ").append(content_type);
  out.append("\r\ncontent-length: ").append(std::to_string(body.size())).append("\r\n");
  if (!keep_alive) out.append("connection: close\r\n");
  out.append(headers);
  if (c->grant.token != nullptr) out.append(c->grant.headers);
  out.append("\r\n").append(body);
  record(c, status, usage, cost);
  send_client(c, std::move(out), keep_alive);
}

void Loop::record(ClientConn* c, int status, const UsageCounts* usage, double cost_eur) {
  plane_.in_flight_.fetch_sub(1);
  Finished f{};
  f.limit_index = c->grant.token != nullptr ? c->grant.token->limit_index : -1;
  f.cost_eur = cost_eur;
  c->grant.token = nullptr;  // settled: the view it pointed into may go
  c->grant.view.reset();
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
  c->deadline = now_ + config_.send_timeout_s;
  flush_client(c);
}

void Loop::flush_client(ClientConn* c) {
  bool error = false;
  size_t before = c->out_pos;
  if (write_available(c->fd, c->out, &c->out_pos, &error)) {
    answer_done(c);
  } else if (error) {
    kill(c);
  } else if (c->out_pos > before) {
    c->deadline = now_ + config_.send_timeout_s;  // the client reads: its time runs from here
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
  release_grant(c);
  plane_.handed_off_.fetch_add(1, std::memory_order_relaxed);
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c->fd, nullptr);
  Handoff handoff{c->fd, std::move(c->in)};
  c->fd = -1;  // the Python server owns the socket now
  kill(c);
  plane_.push_handoff(std::move(handoff));
}

void Loop::finish_gone(ClientConn* c, const UsageCounts* usage) {
  double cost = 0;
  if (c->granted && !settle_tenant(c, 499, usage, &cost)) release_grant(c);
  record(c, 499, usage, cost);
  kill(c);
}

}  // namespace llmaas::gw
